"""Faults on real processes: crashes, drops, slow sites, quorum misses, rollback and resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsec_runs import committed_rounds, fedsec, summary_of, write_scenario
from fedsec.telemetry.audit import verify

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def audit_events(summary: dict) -> list[dict]:
    import json

    return [json.loads(line) for line in Path(summary["artifacts"]["audit_log"]).read_text().splitlines()]


def test_aggregator_crash_mid_round_loses_no_committed_round(tmp_path: Path, job_dir) -> None:
    manifests = job_dir(sites=4, rounds=4, quorum={"minClients": 3})
    scenario = write_scenario(tmp_path / "crash.yaml", manifests, [{"kind": "aggregator-crash", "round": 2, "afterUpdates": 2}])
    proc = fedsec("simulate", str(scenario), "--run-dir", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary_of(proc)
    assert s["status"] == "Succeeded"
    assert committed_rounds(s) == [1, 2, 3, 4]  # round 2 was redone once, never committed twice
    assert s["aggregator"]["exit_codes"] == [75, 0]
    events = audit_events(s)
    starts = [e for e in events if e["event"] == "aggregator-started"]
    assert [e["data"]["incarnation"] for e in starts] == [0, 1]
    assert starts[1]["data"]["next_round"] == 2  # resumed after round 1, the last commit
    ids = [e["data"]["round_id"] for e in events if e["event"] == "round-started"]
    assert ids == sorted(set(ids))  # round ids never reused across the restart
    assert verify(Path(s["artifacts"]["audit_log"])).ok


def test_client_crash_restarts_and_dropped_client_is_left_out(tmp_path: Path, job_dir) -> None:
    manifests = job_dir(sites=4, rounds=3, quorum={"minClients": 3}, round_timeout=8)
    scenario = write_scenario(tmp_path / "faults.yaml", manifests, [
        {"kind": "crash", "client": "site-1", "round": 2, "phase": "train"},
        {"kind": "drop", "client": "site-3", "round": 2, "phase": "train"},
    ])
    proc = fedsec("simulate", str(scenario), "--run-dir", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary_of(proc)
    assert s["status"] == "Succeeded" and committed_rounds(s) == [1, 2, 3]
    assert s["clients"]["site-1"]["restarts"] == 1 and s["clients"]["site-1"]["rounds_joined"] >= 2
    assert s["clients"]["site-3"]["exit_codes"] == [76] and s["clients"]["site-3"]["rounds_joined"] == 1
    assert s["clients"]["site-3"]["status"] == "dropped"


def test_quorum_miss_retries_then_fails_with_its_reason(tmp_path: Path, job_dir) -> None:
    manifests = job_dir(sites=3, rounds=3, quorum={"minClients": 3}, round_timeout=4, max_retries=1)
    scenario = write_scenario(tmp_path / "miss.yaml", manifests, [{"kind": "drop", "client": "site-2", "round": 2, "phase": "train"}])
    proc = fedsec("simulate", str(scenario), "--run-dir", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == 1
    s = summary_of(proc)
    assert s["status"] == "Failed"
    assert "round 2 missed its quorum in 2 attempts (maxRetries is 1)" in s["reason"]
    assert committed_rounds(s) == [1]
    discarded = [e for e in audit_events(s) if e["event"] == "round-discarded"]
    assert len(discarded) == 2 and len({e["data"]["round_id"] for e in discarded}) == 2


def test_slow_site_misses_the_deadline_and_its_late_answer_is_stale(tmp_path: Path, job_dir) -> None:
    manifests = job_dir(sites=3, rounds=2, quorum={"minClients": 2}, round_timeout=3)
    # site-0 answers round 1 at ~4.5s, past its 3s deadline; site-1 leaving in round 2 keeps round 2
    # open until 6s, so the late answer meets a newer round rather than a finished job.
    scenario = write_scenario(tmp_path / "slow.yaml", manifests, [
        {"kind": "slow", "client": "site-0", "round": 1, "delaySeconds": 4.5},
        {"kind": "drop", "client": "site-1", "round": 2, "phase": "train"},
    ])
    proc = fedsec("simulate", str(scenario), "--run-dir", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary_of(proc)
    first = next(h for h in s["history"] if h["kind"] == "train" and h["round"] == 1)
    assert "site-0" not in first["contributors"] and len(first["contributors"]) == 2
    assert s["rejected_messages"].get("stale-round", 0) >= 1
    second = [h for h in s["history"] if h["kind"] == "train" and h["round"] == 2]
    assert second and second[-1]["contributors"] == ["site-0", "site-2"]  # back after its stale answer


def test_rollback_then_resume_retrains_and_keeps_lineage(tmp_path: Path, job_dir) -> None:
    manifests = job_dir(sites=3, rounds=3, quorum={"minClients": 3})
    run = tmp_path / "run"
    first = fedsec("run", str(manifests), "--run-dir", str(run), "--quiet")
    assert first.returncode == 0, first.stderr[-3000:]
    assert fedsec("rollback", str(run), "--to-round", "1").returncode == 0
    again = fedsec("run", str(manifests), "--run-dir", str(run), "--quiet")
    assert again.returncode == 0, again.stderr[-3000:]
    s = summary_of(again)
    kinds = [(h["kind"], h["round"]) for h in s["history"]]
    assert kinds == [("stats", 0), ("train", 1), ("train", 2), ("train", 3), ("rollback", 1), ("train", 2), ("train", 3)]
    versions = [h["version"] for h in s["history"]]
    assert versions == sorted(versions) and s["status"] == "Succeeded"
    assert verify(run / "audit.jsonl").ok
