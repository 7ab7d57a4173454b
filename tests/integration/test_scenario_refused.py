"""`fedsec simulate` (a real process) refuses a scenario with a fault that can never fire, with exit
code 2 and every such fault named, before it writes a run directory or starts any process: a run
whose fault silently never happens would test nothing and still report success."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsec_runs import fedsec, write_job_dir, write_scenario
from fedsec.runtime import exitcodes

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # one `fedsec` process: its imports take seconds


def test_simulate_refuses_faults_that_can_never_fire_before_anything_starts(tmp_path: Path) -> None:
    manifests = write_job_dir(tmp_path / "m", sites=3, rounds=3, quorum={"minClients": 2})
    scenario = write_scenario(tmp_path / "bad.yaml", manifests, [
        # the docs once showed this: 'update' is plaintext's phase, never reached under secure aggregation
        {"kind": "drop", "client": "site-1", "round": 2, "phase": "update"},
        {"kind": "crash", "client": "site-7", "round": 1},
        {"kind": "aggregator-crash", "round": 4},
        {"kind": "drop", "client": "site-2", "round": 1},
        {"kind": "crash", "client": "site-2", "round": 2},
    ])
    run, ledger = tmp_path / "run", tmp_path / "ledger"
    proc = fedsec("simulate", str(scenario), "--run-dir", str(run), "--ledger-dir", str(ledger), "--quiet", timeout=120)
    assert proc.returncode == exitcodes.CONFIG_ERROR, proc.stderr[-3000:]
    problems = [line.strip().removeprefix("- ") for line in proc.stderr.splitlines() if line.strip().startswith("- ")]
    where = f"{scenario}: Scenario/bad: "
    assert [p.split(": ", 3)[2] for p in problems] == [
        "spec.faults[0].phase", "spec.faults[1].client", "spec.faults[2].round", "spec.faults[4].round"]
    assert all(p.startswith(where) for p in problems), problems
    assert "'update' is not a phase of FederatedJob/small" in problems[0]
    assert "'site-7' is not a site FederatedJob/small admits; allowed: an admitted site (site-0, site-1, site-2)" in problems[1]
    assert "round 4 never happens" in problems[2]
    assert "can never fire: spec.faults[3] drops site-2 for good in round 1" in problems[3]
    assert "Traceback" not in proc.stderr
    # refused before prepare: no run directory (keys, logs, configs) and no ledger entry was written
    assert not run.exists() and not ledger.exists()
