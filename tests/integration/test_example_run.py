"""The README's main job, end to end: twelve hospitals, real processes, real TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsec_runs import fedsec, summary_of
from fedsec.telemetry.audit import verify

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "breast-cancer"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_breast_cancer_example_reaches_the_target_auc(tmp_path: Path) -> None:
    proc = fedsec("run", str(EXAMPLE), "--run-dir", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary_of(proc)
    assert s["status"] == "Succeeded" and s["rounds_completed"] == 20
    assert s["final_metrics"]["auc"] >= 0.95 and s["final_metrics_source"] == "holdout"
    assert [h["round"] for h in s["history"] if h["kind"] == "train"] == list(range(1, 21))
    assert all(len(h["contributors"]) >= 10 for h in s["history"])  # the 80% quorum held every round
    assert set(s["clients"]) == {f"hospital-{i:02d}" for i in range(1, 13)}
    assert s["secure_aggregation"]["mode"] == "none"
    for key in ("job", "status", "reason", "rounds_completed", "round_attempts", "final_metrics", "history",
                "clients", "rejected_messages", "secure_aggregation", "artifacts"):
        assert key in s
    audit = Path(s["artifacts"]["audit_log"])
    result = verify(audit)
    assert result.ok and result.entries > 20 * 12  # every round and every accepted update is in it
    assert Path(s["artifacts"]["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(s["artifacts"]["model"]).is_file()
    assert fedsec("audit", "verify", str(audit)).returncode == 0
