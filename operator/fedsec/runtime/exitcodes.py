"""Process exit codes shared by the CLI, the aggregator, the clients and the launcher that supervises them.

The CLI's codes (docs/running-locally.md, "Exit codes") follow sysexits(3) where a meaning exists there:
a script can tell a job that failed from manifests that are wrong, from sites that refused the job,
from a mistyped command line, from a bug in fedsec.
"""

OK = 0
JOB_FAILED = 1  # the job ran and failed (quorum, retries): a result, not a crash
CONFIG_ERROR = 2  # invalid manifests or configuration: fix them; restarting will not help
REFUSED = 3  # the manifests are valid but the sites' own terms or ledgers refuse the job: it cannot run
USAGE = 64  # EX_USAGE: the command line is wrong (unknown flag, missing argument)
INTERNAL_ERROR = 70  # EX_SOFTWARE, a bug: state on disk is consistent, restarting resumes from it
INJECTED_CRASH = 75  # a Scenario fault: restart me
INJECTED_DROP = 76  # a Scenario fault: I left for good, do not restart me
TERMINATED = 143  # stopped by SIGTERM before the job ended: state on disk is consistent, resume from it
