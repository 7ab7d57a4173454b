"""`fedsec rollback` on a live run directory would fork its audit chain: it is refused while
`fedsec run` holds the directory, and allowed once the run stopped. Real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsec_runs import fedsec
from fedsec.runtime import exitcodes, runlock

pytestmark = [pytest.mark.integration]
START_BOUND_SECONDS = 120


def test_rollback_is_refused_while_the_run_is_live(tmp_path: Path, job_dir) -> None:
    manifests = job_dir(sites=2, rounds=200, quorum={"minClients": 2})
    run_dir = tmp_path / "run"
    run = subprocess.Popen([sys.executable, "-m", "fedsec", "run", str(manifests), "--run-dir", str(run_dir), "--quiet"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = run_dir / runlock.LOCK_FILE
        deadline = time.monotonic() + START_BOUND_SECONDS
        # the launcher holds the lock and the aggregator has written its first version
        while not ((run_dir / "checkpoints" / "v000001").is_dir() and lock.exists() and lock.read_text().strip()):
            assert run.poll() is None, f"the run exited with {run.returncode}"
            assert time.monotonic() < deadline, "the run did not start within the bound"
            time.sleep(0.1)
        audit_before = (run_dir / "audit.jsonl").read_bytes()
        proc = fedsec("rollback", str(run_dir), "--to-round", "0")
        assert proc.returncode == exitcodes.CONFIG_ERROR, proc.stdout + proc.stderr
        assert f"run directory {run_dir} is in use by a running job (pid {run.pid}); stop it first" in proc.stderr
        assert (run_dir / "audit.jsonl").read_bytes().startswith(audit_before)  # nothing of a rollback written
        assert "rollback" not in (run_dir / "audit.jsonl").read_text()
    finally:
        run.send_signal(signal.SIGINT)  # the launcher stops its processes in order and exits
        run.wait(timeout=60)
    with runlock.hold(run_dir):  # released with the run
        pass
