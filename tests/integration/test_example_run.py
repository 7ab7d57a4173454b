"""The README's main job end to end, twelve hospitals on real processes with real TLS: under secure
aggregation (the default), in plaintext for comparison, and with sites dropping mid-round."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedsec.telemetry.audit import verify
from fedsec_runs import fedsec, summary_of
from standardization_check import check_standardization

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "breast-cancer"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def secagg_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    proc = fedsec("run", str(EXAMPLE), "--run-dir", str(tmp_path_factory.mktemp("secagg") / "run"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return summary_of(proc)


def test_breast_cancer_example_reaches_the_target_auc(secagg_run: dict[str, Any]) -> None:
    s = secagg_run
    assert s["status"] == "Succeeded" and s["rounds_completed"] == 20
    assert s["final_metrics"]["auc"] >= 0.95 and s["final_metrics_source"] == "holdout"
    assert [h["round"] for h in s["history"] if h["kind"] == "train"] == list(range(1, 21))
    assert all(len(h["contributors"]) >= 10 for h in s["history"])  # the 80% quorum held every round
    assert set(s["clients"]) == {f"hospital-{i:02d}" for i in range(1, 13)}
    assert s["secure_aggregation"] == {"mode": "secagg", "server_sees_individual_updates": False}
    for key in ("job", "status", "reason", "rounds_completed", "round_attempts", "final_metrics", "history",
                "clients", "rejected_messages", "secure_aggregation", "artifacts"):
        assert key in s
    audit = Path(s["artifacts"]["audit_log"])
    result = verify(audit)
    assert result.ok and result.entries > 20 * 12  # every round and every accepted answer is in it
    assert Path(s["artifacts"]["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(s["artifacts"]["model"]).is_file()
    assert fedsec("audit", "verify", str(audit)).returncode == 0


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    plain_dir = tmp_path_factory.mktemp("plain") / "example"
    shutil.copytree(EXAMPLE, plain_dir)
    job = yaml.safe_load((plain_dir / "job.yaml").read_text())
    job["spec"]["secureAggregation"] = {"mode": "none"}
    (plain_dir / "job.yaml").write_text(yaml.safe_dump(job))
    proc = fedsec("run", str(plain_dir), "--run-dir", str(plain_dir.parent / "run"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return summary_of(proc)


def test_secure_aggregation_costs_no_accuracy(secagg_run: dict[str, Any], plain_run: dict[str, Any]) -> None:
    assert plain_run["secure_aggregation"]["mode"] == "none"
    assert abs(plain_run["final_metrics"]["auc"] - secagg_run["final_metrics"]["auc"]) <= 0.01


@pytest.mark.parametrize("run", ["secagg_run", "plain_run"])
def test_the_example_standardises_with_the_exact_pooled_statistics(run: str, request: pytest.FixtureRequest) -> None:
    s = request.getfixturevalue(run)
    check_standardization(Path(s["artifacts"]["audit_log"]).parent, EXAMPLE)


def test_sites_dropping_mid_round_under_secagg(secagg_run: dict[str, Any], tmp_path: Path) -> None:
    proc = fedsec("simulate", str(ROOT / "examples" / "scenarios" / "dropouts.yaml"), "--run-dir", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary_of(proc)
    assert s["status"] == "Succeeded" and s["rounds_completed"] == 20
    assert abs(s["final_metrics"]["auc"] - secagg_run["final_metrics"]["auc"]) <= 0.01
    by_round = {h["round"]: h for h in s["history"] if h["kind"] == "train"}
    assert "hospital-03" not in by_round[5]["contributors"]  # left before its masked input
    assert "hospital-07" in by_round[8]["contributors"]  # left after it: its input is in the sum
    assert "hospital-07" not in by_round[9]["participants"]
    assert s["clients"]["hospital-11"]["restarts"] == 1
    assert all(len(h["contributors"]) >= 10 for h in s["history"])
