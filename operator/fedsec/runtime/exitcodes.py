"""Process exit codes shared by the aggregator, the clients and the launcher that supervises them."""

OK = 0
JOB_FAILED = 1  # the job ran and failed (quorum, retries): a result, not a crash
CONFIG_ERROR = 2  # bad manifests or configuration: restarting will not help
INTERNAL_ERROR = 70  # a bug: state on disk is consistent, restarting resumes from it
INJECTED_CRASH = 75  # a Scenario fault: restart me
INJECTED_DROP = 76  # a Scenario fault: I left for good, do not restart me
TERMINATED = 143  # stopped by SIGTERM before the job ended: state on disk is consistent, resume from it
