"""An aggregator that dies in every attempt of a round: real processes, the launcher restarting it as
a Deployment would. The round's retry counter is on disk, so the job ends Failed after the round's
maxRetries attempts instead of crash-looping for ever."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsec_runs import committed_rounds, fedsec, summary_of, write_scenario
from fedsec.runtime import exitcodes
from fedsec.telemetry.audit import verify

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_crash_in_every_attempt_fails_the_job_after_max_retries(tmp_path: Path, job_dir) -> None:
    manifests = job_dir(sites=3, rounds=3, quorum={"minClients": 2}, max_retries=1,
                        extra_spec={"secureAggregation": {"mode": "none"}})
    scenario = write_scenario(tmp_path / "loop.yaml", manifests, [
        {"kind": "aggregator-crash", "round": 2, "afterUpdates": 1, "everyIncarnation": True},
    ])
    proc = fedsec("simulate", str(scenario), "--run-dir", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == exitcodes.JOB_FAILED, proc.stderr[-3000:]
    s = summary_of(proc)
    assert s["status"] == "Failed"
    assert "round 2 was attempted 2 times without committing (maxRetries is 1)" in s["reason"], s["reason"]
    assert committed_rounds(s) == [1]
    # Two attempts, each crashing; the third incarnation finds them used up and fails the job itself
    # (the launcher's own restart limit, 3, is never what stops it).
    assert s["aggregator"]["exit_codes"] == [exitcodes.INJECTED_CRASH, exitcodes.INJECTED_CRASH, exitcodes.JOB_FAILED]
    events = [json.loads(line) for line in Path(s["artifacts"]["audit_log"]).read_text().splitlines()]
    starts = [e["data"] for e in events if e["event"] == "round-started" and e["data"]["round"] == 2]
    assert [e["attempt"] for e in starts] == [1, 2]  # the counter went on across the restart
    assert [e["data"]["incarnation"] for e in events if e["event"] == "aggregator-started"] == [0, 1, 2]
    finished = [e["data"] for e in events if e["event"] == "job-finished"]
    assert finished and finished[-1]["status"] == "Failed"
    engine = json.loads((tmp_path / "run" / "engine.json").read_text())
    assert (engine["attempt"], engine["attempt_round"], engine["status"]) == (2, 2, "Failed")
    assert verify(Path(s["artifacts"]["audit_log"])).ok


def test_a_fault_for_every_incarnation_must_be_an_aggregator_crash(tmp_path: Path, job_dir) -> None:
    scenario = write_scenario(tmp_path / "bad.yaml", job_dir(sites=3), [
        {"kind": "crash", "client": "site-1", "round": 1, "everyIncarnation": True},
    ])
    proc = fedsec("simulate", str(scenario), "--run-dir", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == exitcodes.CONFIG_ERROR
    assert "'everyIncarnation' applies to 'aggregator-crash' faults only" in proc.stderr + proc.stdout
