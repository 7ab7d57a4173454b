"""The ledger: spend survives new processes, is recorded once per (round, model), and is per job."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsec.privacy.accountant import epsilon
from fedsec.privacy.ledger import EXHAUSTED, REFUSED, JobRef, Release, SiteLedger, ledger_path

A, B = JobRef("uid-a", "job-a"), JobRef("uid-b", "job-b")


def rel(rnd: int, sha: str = "m", sigma: float = 5.0) -> Release:
    return Release(rnd, 100 + rnd, sha, sigma, 0.5, 2)


def ledger(tmp_path: Path) -> SiteLedger:
    return SiteLedger(ledger_path(tmp_path, "h1"), "h1")


def test_epsilon_is_recomputed_from_releases_in_a_new_process(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    for r in range(1, 4):
        eps = led.record_release(A, rel(r), delta=1e-5, accountant="rdp")
    again = ledger(tmp_path)  # another process, nothing in memory
    assert again.entry("uid-a")["epsilon"] == pytest.approx(eps)
    assert eps == pytest.approx(epsilon([(5.0, 0.5, 2)] * 3, 1e-5))


def test_the_same_round_from_the_same_model_is_one_release(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    e1 = led.record_release(A, rel(1), delta=1e-5, accountant="rdp")
    e2 = led.record_release(A, rel(1), delta=1e-5, accountant="rdp")
    assert e1 == e2 and len(led.entry("uid-a")["releases"]) == 1
    e3 = led.record_release(A, rel(1, sha="other"), delta=1e-5, accountant="rdp")  # a new model: a new release
    assert e3 > e2


def test_jobs_are_kept_apart_and_summed_for_the_site(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    ea = led.record_release(A, rel(1), delta=1e-5, accountant="rdp")
    eb = led.record_release(B, rel(1), delta=1e-5, accountant="rdp")
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


def test_kept_update_round_trips_and_is_checked(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    sha = led.save_update("uid-a", b"payload")
    assert led.load_update("uid-a", sha) == b"payload"
    assert led.load_update("uid-a", "0" * 64) is None
    assert led.load_update("uid-b", sha) is None


def test_file_is_whole_json_after_every_write(tmp_path: Path) -> None:
    led = ledger(tmp_path)
    for r in range(5):
        led.record_release(A, rel(r), delta=1e-5, accountant="rdp")
        assert len(ledger(tmp_path).read()["jobs"]["uid-a"]["releases"]) == r + 1
    assert not list(tmp_path.glob(".h1.json.*[!k]"))  # no temporary files left behind
