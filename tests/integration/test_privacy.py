"""Differential privacy on real processes: spend per site, budgets across jobs and restarts, refusals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedsec_runs import RUN_TIMEOUT_SECONDS, committed_rounds, fedsec, summary_of, write_job_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PRIVACY = {"mechanism": "dp-sgd", "targetEpsilon": 2.0, "delta": 1e-5, "clippingNorm": 1.0}


def private_job(root: Path, *, sites: int = 4, rounds: int = 3, budgets: dict[int, float] | None = None,
                name: str = "small", quorum: dict[str, Any] | None = None, privacy: dict[str, Any] | None = None) -> Path:
    write_job_dir(root, sites=sites, rounds=rounds, quorum=quorum or {"minClients": 2}, round_timeout=20,
                  extra_spec={"task": {"localEpochs": 1, "batchSize": 16, "learningRate": 0.5, "standardize": False},
                              "privacy": privacy or PRIVACY})
    docs = list(yaml.safe_load_all((root / "manifests.yaml").read_text()))
    docs[0]["metadata"]["name"] = name
    for i, doc in enumerate(docs[1:]):
        doc["spec"]["privacy"] = {"budget": (budgets or {}).get(i, 10.0)}
    (root / "manifests.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return root


def ledger(ledger_dir: Path, site: str) -> dict[str, Any]:
    return json.loads((ledger_dir / f"{site}.json").read_text())


def test_spend_per_site_within_target_and_over_budget_site_refused(tmp_path: Path) -> None:
    manifests = private_job(tmp_path / "m", budgets={3: 0.5})
    led = tmp_path / "ledger"
    proc = fedsec("run", str(manifests), "--run-dir", str(tmp_path / "run"), "--ledger-dir", str(led), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary_of(proc)
    assert s["status"] == "Succeeded" and committed_rounds(s) == [1, 2, 3]
    p = s["privacy"]
    assert set(s["clients"]) == {"site-0", "site-1", "site-2"}  # site-3 never ran
    assert "budget of 0.5 has only 0.5 left" in p["refused"]["site-3"]
    for name in ("site-0", "site-1", "site-2"):
        row = p["sites"][name]
        assert row["rounds_released"] == 3
        assert 0.95 * 2.0 <= row["epsilon_this_job"] <= 2.0
        assert row["remaining"] == pytest.approx(10.0 - row["epsilon_this_job"])
    # the refused site's own record says why, too
    entry = next(iter(ledger(led, "site-3")["jobs"].values()))
    assert entry["status"] == "Refused" and "budget" in entry["reason"] and entry["releases"] == []
    assert "fedsec_privacy_epsilon_spent" in (tmp_path / "run" / "privacy.prom").read_text()


def test_second_job_sees_the_first_and_an_overspend_is_refused_before_training(tmp_path: Path) -> None:
    manifests = private_job(tmp_path / "m", budgets={0: 3.0, 1: 3.0, 2: 3.0, 3: 3.0})
    led = tmp_path / "ledger"
    first = fedsec("run", str(manifests), "--run-dir", str(tmp_path / "a"), "--ledger-dir", str(led), "--quiet")
    assert first.returncode == 0, first.stderr[-3000:]
    spent = {n: r["epsilon_this_job"] for n, r in summary_of(first)["privacy"]["sites"].items()}
    # the same manifests again: a new job (new uid) on the same data; 2.0 more would exceed 3.0
    second = fedsec("run", str(manifests), "--run-dir", str(tmp_path / "b"), "--ledger-dir", str(led), "--quiet")
    assert second.returncode == 3  # REFUSED: valid manifests, the sites' ledgers refuse the job
    assert "the job plans to spend epsilon 2 here but the site's budget of 3 has only" in second.stderr
    assert f"the sites' privacy ledgers in {led.resolve()} already hold epsilon spent by earlier jobs" in second.stderr
    assert "--ledger-dir NEW_DIR" in second.stderr
    assert not (tmp_path / "b").exists()  # refused before any process, key or training
    for n, eps in spent.items():
        doc = ledger(led, n)
        assert len(doc["jobs"]) == 1  # nothing recorded for the refused job's training
        assert next(iter(doc["jobs"].values()))["epsilon"] == pytest.approx(eps)


def _run_until_round(args: list[str], round_number: int) -> int:
    """Start a run, wait until ``round_number`` is committed, then interrupt it as Ctrl-C would."""
    proc = subprocess.Popen([sys.executable, "-m", "fedsec", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    for line in proc.stderr:
        if line.lstrip().startswith(f"round {round_number:>3}/"):
            proc.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline
    proc.communicate(timeout=60)
    return proc.returncode


def test_a_run_killed_and_restarted_spends_what_an_uninterrupted_run_spends(tmp_path: Path) -> None:
    manifests = private_job(tmp_path / "m", rounds=4, quorum={"minClients": 4})
    whole = fedsec("run", str(manifests), "--run-dir", str(tmp_path / "whole"), "--ledger-dir", str(tmp_path / "l1"), "--quiet")
    assert whole.returncode == 0, whole.stderr[-3000:]
    args = ["run", str(manifests), "--run-dir", str(tmp_path / "cut"), "--ledger-dir", str(tmp_path / "l2")]
    assert _run_until_round(args, 2) == 130
    resumed = fedsec(*args, "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = summary_of(whole)["privacy"]["sites"], summary_of(resumed)["privacy"]["sites"]
    assert committed_rounds(summary_of(resumed)) == [1, 2, 3, 4]
    for name in a:
        assert b[name]["rounds_released"] == a[name]["rounds_released"] == 4
        assert b[name]["epsilon_this_job"] == pytest.approx(a[name]["epsilon_this_job"], rel=1e-9)
        assert b[name]["epsilon_this_job"] <= 2.0


def test_aggregator_and_client_crashes_do_not_double_count(tmp_path: Path) -> None:
    from fedsec_runs import write_scenario

    manifests = private_job(tmp_path / "m", rounds=3, quorum={"minClients": 3})
    scenario = write_scenario(tmp_path / "crash.yaml", manifests, [
        {"kind": "aggregator-crash", "round": 2, "afterUpdates": 6},   # after some sites trained for round 2
        {"kind": "crash", "client": "site-1", "round": 3, "phase": "train"},
    ])
    proc = fedsec("simulate", str(scenario), "--run-dir", str(tmp_path / "run"), "--ledger-dir", str(tmp_path / "l"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary_of(proc)
    assert s["status"] == "Succeeded"
    for name, row in s["privacy"]["sites"].items():
        rounds = [r["round"] for r in next(iter(ledger(tmp_path / "l", name)["jobs"].values()))["releases"]]
        assert len(rounds) == len(set(rounds)), f"{name} paid twice for a round: {rounds}"
        assert row["epsilon_this_job"] <= 2.0


def test_distributed_gaussian_noise_is_accounted_per_site(tmp_path: Path) -> None:
    privacy = {"mechanism": "distributed-gaussian", "targetEpsilon": 6.0, "delta": 1e-5, "clippingNorm": 0.5}
    manifests = private_job(tmp_path / "m", rounds=3, quorum={"minClients": 3}, privacy=privacy)
    proc = fedsec("run", str(manifests), "--run-dir", str(tmp_path / "run"), "--ledger-dir", str(tmp_path / "l"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary_of(proc)
    assert s["status"] == "Succeeded" and s["privacy"]["level"].startswith("user")
    for row in s["privacy"]["sites"].values():
        assert row["rounds_released"] == 3 and row["sample_rate"] == 1.0
        assert 0.95 * 6.0 <= row["epsilon_this_job"] <= 6.0


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_dp_example_reaches_its_auc_within_budget_and_the_budget_example_refuses_hospital_12(tmp_path: Path) -> None:
    led = str(tmp_path / "ledger")
    proc = fedsec("run", str(EXAMPLES / "breast-cancer-dp"), "--run-dir", str(tmp_path / "dp"), "--ledger-dir", led, "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary_of(proc)
    assert s["final_metrics"]["auc"] >= 0.96
    assert s["secure_aggregation"]["mode"] == "secagg" and s["quorum"] == 10
    for row in s["privacy"]["sites"].values():
        assert 0.95 * 1.2 <= row["epsilon_this_job"] <= 1.2 and row["budget"] == 4.0
    proc = fedsec("run", str(EXAMPLES / "breast-cancer-dp-budget"), "--run-dir", str(tmp_path / "budget"), "--ledger-dir", led, "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary_of(proc)
    assert s["status"] == "Succeeded" and "hospital-12" not in s["clients"] and len(s["clients"]) == 11
    assert "the site's budget of 0.5 has only 0 left" in s["privacy"]["refused"]["hospital-12"]


def test_a_site_that_runs_out_mid_job_stops_and_the_job_goes_on(tmp_path: Path) -> None:
    from fedsec.privacy.ledger import JobRef, Release, SiteLedger, Terms, ledger_path

    manifests = private_job(tmp_path / "m", rounds=3, budgets={3: 2.5}, quorum={"minClients": 3})
    led = tmp_path / "ledger"
    proc = subprocess.Popen([sys.executable, "-m", "fedsec", "run", str(manifests), "--run-dir", str(tmp_path / "run"),
                             "--ledger-dir", str(led)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.lstrip().startswith("round   1/"):
            # another job spends 1.0 on site-3 meanwhile: this job's full 2.0 no longer fits in its 2.5
            other = JobRef("other-uid", "other")
            site3 = SiteLedger(ledger_path(led, "site-3"), "site-3")
            site3.charge(other, Release(1, 1, "x", 4.0, 1.0, 1), Terms("dp-sgd", 5.0, 5, 1e-5), b"other",
                         delta=1e-5, accountant="rdp")
            site3.finish(other, "done")
            break
    out, err = proc.communicate(timeout=RUN_TIMEOUT_SECONDS)
    assert proc.returncode == 0, err[-3000:]
    s = json.loads(Path(out.strip().splitlines()[-1].removeprefix("summary: ")).read_text())
    assert s["status"] == "Succeeded" and committed_rounds(s) == [1, 2, 3]
    row = s["privacy"]["sites"]["site-3"]
    assert row["status"] == "BudgetExhausted" and "above its budget 2.5" in row["reason"]
    assert row["spent_total"] <= 2.5 and row["rounds_released"] < 3
    assert all(s["privacy"]["sites"][f"site-{i}"]["rounds_released"] == 3 for i in range(3))


def _trainings(log_path: Path) -> tuple[int, list[str]]:
    """From the site's own log: how many times it trained, and the update hashes (12 hex digits)
    of the trainings it charged and sent. A training cut short by a kill before its charge
    released nothing, and is in the first count only."""
    lines = log_path.read_text().splitlines()
    charged = [line.split("charged release ")[1][:12] for line in lines if "charged release " in line]
    return sum("training a new release" in line for line in lines), charged


def _check_ledger_matches_trainings(run_dir: Path, led: Path, site: str) -> dict[str, Any]:
    from fedsec.privacy.accountant import epsilon

    entry = next(iter(ledger(led, site)["jobs"].values()))
    releases = entry["releases"]
    trained, charged = _trainings(run_dir / "logs" / f"{site}.log")
    assert [r["update_sha256"][:12] for r in releases] == charged, f"{site}: charged {charged}, recorded {releases}"
    assert len(releases) <= trained
    assert len({r["update_sha256"] for r in releases}) == len(releases)  # every release distinct bytes
    history = [(r["noise_multiplier"], r["sample_rate"], r["steps"]) for r in releases]
    assert entry["epsilon"] == epsilon(history, entry["delta"], entry["accountant"])  # exactly, not approximately
    return entry


def test_rounds_asked_again_after_an_aggregator_crash_are_charged_as_trained(tmp_path: Path) -> None:
    """An aggregator that dies mid-round re-asks the round from the same model: a site re-sends the
    kept bytes for free, or trains again and pays; either way the ledger holds one release per
    training and its epsilon is the accountant's over exactly those."""
    from fedsec_runs import write_scenario

    manifests = private_job(tmp_path / "m", rounds=3, quorum={"minClients": 3})
    scenario = write_scenario(tmp_path / "crash.yaml", manifests, [
        {"kind": "aggregator-crash", "round": 2, "afterUpdates": 2},  # after some sites answered round 2
    ])
    led, run = tmp_path / "l", tmp_path / "run"
    proc = fedsec("simulate", str(scenario), "--run-dir", str(run), "--ledger-dir", str(led), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = summary_of(proc)
    assert s["status"] == "Succeeded" and committed_rounds(s) == [1, 2, 3]
    assert s["aggregator"]["restarts"] == 1
    resent = sum("re-sending the update already paid for" in (run / "logs" / f"{n}.log").read_text() for n in s["clients"])
    assert resent > 0  # the restarted aggregator did ask round 2 again
    for name in s["clients"]:
        entry = _check_ledger_matches_trainings(run, led, name)
        assert len(entry["releases"]) <= 3 and entry["epsilon"] <= 2.0  # never past what the site admitted
        assert entry["status"] == "Finished"
        assert s["privacy"]["sites"][name]["epsilon_this_job"] == entry["epsilon"]


def test_a_resumed_run_charges_what_its_sites_trained_and_the_summary_shows_the_ledgers(tmp_path: Path) -> None:
    """The same job run again from its run directory: every round the resumed aggregator asks again
    is re-sent from kept bytes or trained and paid. The epsilon per site in summary.json is the
    site ledger's (the accountant's over its releases), which the aggregator never reported: it
    keeps no per-site epsilon in its summary."""
    manifests = private_job(tmp_path / "m", rounds=4, quorum={"minClients": 4})
    led, run = tmp_path / "l", tmp_path / "run"
    args = ["run", str(manifests), "--run-dir", str(run), "--ledger-dir", str(led)]
    assert _run_until_round(args, 2) == 130
    resumed = fedsec(*args, "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    s = summary_of(resumed)
    assert committed_rounds(s) == [1, 2, 3, 4]
    assert not any("epsilon" in h["site_metrics"] for h in s["history"])  # nothing the aggregator was told
    for name, row in s["privacy"]["sites"].items():
        entry = _check_ledger_matches_trainings(run, led, name)
        assert row["epsilon_this_job"] == entry["epsilon"] and row["rounds_released"] == len(entry["releases"])
        assert 4 <= len(entry["releases"]) and entry["epsilon"] <= 2.0
        assert row["remaining"] == pytest.approx(10.0 - entry["epsilon"])  # finished: nothing reserved any more
