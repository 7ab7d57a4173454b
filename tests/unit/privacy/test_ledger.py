"""The ledger: every release whose bytes differ is charged, the same bytes re-sent are free, and one
atomic charge enforces the job's admitted target and rounds, the site's cap and its budget (with
the running jobs' reservations), also against concurrent processes."""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
from pathlib import Path

import pytest

from fedsec.privacy.accountant import epsilon
from fedsec.privacy.budget import remaining
from fedsec.privacy.ledger import (
    ADMITTED, EXHAUSTED, FINISHED, REFUSED, TRAINING, BudgetExhausted, JobRef, Release, SiteLedger, Terms,
    ledger_path,
)

A, B = JobRef("uid-a", "job-a"), JobRef("uid-b", "job-b")
STEP = (5.0, 0.5, 2)  # the Gaussian steps of one release in these tests


def rel(rnd: int, sha: str = "m", sigma: float = STEP[0]) -> Release:
    return Release(rnd, 100 + rnd, sha, sigma, STEP[1], STEP[2])


def terms(*, target: float = 50.0, rounds: int = 100, budget: float | None = None, cap: float | None = None,
          mechanism: str = "dp-sgd") -> Terms:
    return Terms(mechanism=mechanism, target_epsilon=target, planned_rounds=rounds, delta=1e-5, accountant="rdp",
                 budget=budget, cap=cap)


@functools.lru_cache(maxsize=None)
def eps_of(n: int) -> float:
    """The accountant's epsilon after ``n`` releases of STEP."""
    return epsilon([STEP] * n, 1e-5, "rdp")


def ledger(tmp_path: Path) -> SiteLedger:
    return SiteLedger(ledger_path(tmp_path, "h1"), "h1")


def charge(led: SiteLedger, job: JobRef, rnd: int, update: bytes, t: Terms | None = None, sha: str = "m") -> float:
    return led.charge(job, rel(rnd, sha), t or terms(), update, delta=1e-5, accountant="rdp")


def test_epsilon_is_recomputed_from_releases_in_a_new_process(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    for r in range(1, 4):
        eps = charge(led, A, r, f"update-{r}".encode())
    again = ledger(tmp_path)  # another process, nothing in memory
    assert again.entry("uid-a")["epsilon"] == pytest.approx(eps)
    assert eps == pytest.approx(eps_of(3))


def test_training_again_for_the_same_round_and_model_is_a_new_charged_release(tmp_path: Path) -> None:
    # The former rule kept one release per (round, model): a re-ask after the kept update was
    # overwritten (two rounds alternating, a rollback) trained again for free. Fresh noise, new bytes:
    # a new release.
    led = ledger(tmp_path)
    e1 = charge(led, A, 1, b"round-1-first")
    e2 = charge(led, A, 2, b"round-2")
    e3 = charge(led, A, 1, b"round-1-retrained")  # the same (round 1, model m), new bytes
    assert (e1, e2, e3) == (pytest.approx(eps_of(1)), pytest.approx(eps_of(2)), pytest.approx(eps_of(3)))
    releases = led.entry("uid-a")["releases"]
    assert [r["round"] for r in releases] == [1, 2, 1]
    assert len({r["update_sha256"] for r in releases}) == 3


def test_the_same_bytes_re_sent_are_free_and_found_again(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    e1 = charge(led, A, 1, b"update-1")
    charge(led, A, 2, b"update-2")
    e2 = led.entry("uid-a")["epsilon"]
    assert charge(led, A, 1, b"update-1") == pytest.approx(e2)  # exactly a paid release's bytes: free
    assert len(led.entry("uid-a")["releases"]) == 2 and e1 < e2
    # a new process finds each paid (round, model)'s bytes, not only the last one's
    kept = ledger(tmp_path).kept_update("uid-a", 1, "m")
    assert kept is not None and kept[0] == b"update-1" and kept[1] == pytest.approx(e2)
    assert ledger(tmp_path).kept_update("uid-a", 1, "another-model") is None
    assert ledger(tmp_path).kept_update("uid-a", 3, "m") is None


def test_kept_bytes_that_no_longer_match_their_release_are_not_re_sent(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    charge(led, A, 1, b"update-1")
    sha = hashlib.sha256(b"update-1").hexdigest()
    (led.updates_dir("uid-a") / f"{sha}.safetensors").write_bytes(b"tampered")
    assert led.kept_update("uid-a", 1, "m") is None  # so the client trains again, and that is charged
    assert charge(led, A, 1, b"update-1-again") == pytest.approx(eps_of(2))


def test_distributed_noise_charges_every_release_even_the_same_bytes(tmp_path: Path) -> None:
    led, t = ledger(tmp_path), terms(mechanism="distributed-gaussian")
    charge(led, A, 1, b"share", t)
    assert charge(led, A, 1, b"share", t) == pytest.approx(eps_of(2))
    assert led.kept_update("uid-a", 1, "m") is None  # never re-sent: a second sum would isolate the share
    assert not led.updates_dir("uid-a").exists()


def test_a_charge_past_the_planned_rounds_is_refused_and_recorded(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    t = terms(rounds=2)
    charge(led, A, 1, b"u1", t)
    charge(led, A, 2, b"u2", t)
    with pytest.raises(BudgetExhausted, match=r"release 3 of this job here, above the 2 planned rounds"):
        charge(led, A, 2, b"u2-retrained", t)  # a rollback or a retry trained again: a third release
    e = led.entry("uid-a")
    assert len(e["releases"]) == 2 and e["status"] == EXHAUSTED and "planned rounds" in e["reason"]
    assert e["epsilon"] == pytest.approx(eps_of(2))


def test_a_charge_past_the_target_epsilon_is_refused(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    target = (eps_of(2) + eps_of(3)) / 2  # room for two releases, not three
    t = terms(target=target)
    charge(led, A, 1, b"u1", t)
    charge(led, A, 2, b"u2", t)
    with pytest.raises(BudgetExhausted, match=rf"to {eps_of(3):.4f}, above the targetEpsilon {target:g}"):
        charge(led, A, 3, b"u3", t)
    assert len(led.entry("uid-a")["releases"]) == 2


def test_the_admitted_terms_bound_the_job_even_if_its_spec_grows(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    led.admit(A, terms(target=50.0, rounds=2))
    assert led.entry("uid-a")["status"] == ADMITTED
    led.admit(A, terms(target=99.0, rounds=9))  # a spec edit: the site admitted 2 rounds, not 9
    assert led.entry("uid-a")["admitted"]["rounds"] == 2
    grown = terms(target=99.0, rounds=9)
    charge(led, A, 1, b"u1", grown)
    charge(led, A, 2, b"u2", grown)
    with pytest.raises(BudgetExhausted, match="above the 2 planned rounds"):
        charge(led, A, 3, b"u3", grown)


def test_a_charge_past_the_per_job_cap_is_refused(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    cap = (eps_of(1) + eps_of(2)) / 2
    charge(led, A, 1, b"u1", terms(cap=cap))
    with pytest.raises(BudgetExhausted, match=rf"above the site's cap {cap:g} \(policy.maxEpsilonPerJob\)"):
        charge(led, A, 2, b"u2", terms(cap=cap))


def test_a_running_job_reserves_its_target_and_finishing_releases_the_rest(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    budget = 3.0 + eps_of(1) / 2  # B's 3.0, then less than one release of A
    led.admit(B, terms(target=3.0))  # job B runs here and may spend 3.0 in all
    charge(led, B, 1, b"b1", terms(target=3.0))
    with pytest.raises(BudgetExhausted, match="reserved by other jobs still running"):
        charge(led, A, 1, b"a1", terms(target=3.0, budget=budget))
    s = led.standing(excluding="uid-a")
    assert s.spent == pytest.approx(eps_of(1)) and s.reserved == pytest.approx(3.0 - eps_of(1))
    led.finish(B, "job Succeeded")
    assert led.entry("uid-b")["status"] == FINISHED and led.standing(excluding="uid-a").reserved == 0.0
    assert charge(led, A, 1, b"a1", terms(target=3.0, budget=budget)) == pytest.approx(eps_of(1))
    assert led.entry("uid-a")["status"] == TRAINING


def test_a_charge_past_the_budget_counts_what_other_jobs_spent(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    charge(led, B, 1, b"b1")
    led.finish(B, "done")
    with pytest.raises(BudgetExhausted, match=r"above its budget 1 \(\d\.\d{4} spent by other jobs, 0\.0000 reserved"):
        charge(led, A, 1, b"a1", terms(budget=1.0))
    assert eps_of(1) < 1.0 < 2 * eps_of(1)  # (the numbers make the case: either job alone fits)


def test_a_refused_job_is_never_charged(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    led.set_status(A, REFUSED, "budget")
    with pytest.raises(BudgetExhausted, match="the site refused this job: budget"):
        charge(led, A, 1, b"u1")
    assert led.entry("uid-a")["releases"] == []


def test_jobs_are_kept_apart_and_summed_for_the_site(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    ea = charge(led, A, 1, b"a1")
    eb = charge(led, B, 1, b"b1")
    assert led.spent() == pytest.approx(ea + eb)
    assert led.spent(excluding="uid-a") == pytest.approx(eb)
    assert led.entry("uid-b")["job"] == "job-b"


def test_status_and_refusal_reason_are_recorded(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    led.set_status(A, REFUSED, "budget")
    led.set_status(B, EXHAUSTED, "no more")
    doc = ledger(tmp_path).read()
    assert doc["jobs"]["uid-a"] == {**doc["jobs"]["uid-a"], "status": REFUSED, "reason": "budget"}
    assert doc["jobs"]["uid-b"]["status"] == EXHAUSTED
    assert led.spent() == 0.0


def test_remaining_is_the_budget_less_spend_and_reservations() -> None:
    assert remaining(None, 5.0, 5.0) is None
    assert remaining(4.0, 1.0, 0.5) == pytest.approx(2.5)
    assert remaining(4.0, 3.0, 2.0) == 0.0  # never negative


def test_file_is_whole_json_after_every_write(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    for r in range(5):
        charge(led, A, r, f"u{r}".encode())
        assert len(ledger(tmp_path).read()["jobs"]["uid-a"]["releases"]) == r + 1
    assert not [p for p in tmp_path.glob(".h1.json.*") if not p.name.endswith(".lock")]  # no temporary files left


def _charge_until_refused(ledger_dir: str, uid: str, budget: float, start: multiprocessing.synchronize.Event,
                          out: multiprocessing.Queue) -> None:
    led = SiteLedger(ledger_path(Path(ledger_dir), "h1"), "h1")
    start.wait()  # both processes charge at once, each as fast as it can
    charged = 0
    for r in range(1, 1000):
        try:
            led.charge(JobRef(uid, uid), rel(r), terms(budget=budget), f"{uid}-{r}".encode(), delta=1e-5, accountant="rdp")
        except BudgetExhausted:
            break
        charged += 1
    out.put(charged)


@pytest.mark.slow  # two fresh interpreters import torch and opacus
def test_concurrent_charges_from_two_processes_never_overspend(tmp_path: Path) -> None:
    budget = 2 * eps_of(3) + 0.01  # room for three releases per job, if they split it evenly
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: nothing shared but the file lock
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_charge_until_refused, args=(str(tmp_path), uid, budget, start, out))
             for uid in ("uid-a", "uid-b")]
    for p in procs:
        p.start()
    start.set()
    counts = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    doc = ledger(tmp_path).read()["jobs"]
    recorded = {uid: len(e["releases"]) for uid, e in doc.items()}
    assert sorted(recorded.values()) == sorted(counts)  # every charge that returned is on disk, and only those
    spent = sum(epsilon([STEP] * n, 1e-5, "rdp") for n in recorded.values())
    assert spent <= budget + 1e-12
    # and the budget was used: one more release for either job would not have fitted
    assert all(spent - eps_of(n) + eps_of(n + 1) > budget for n in recorded.values())
