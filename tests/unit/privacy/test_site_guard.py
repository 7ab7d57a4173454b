"""The site's guard: spend before release, the kept update re-sent for free, BudgetExhausted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsec.privacy.distributed import clip_and_noise
from fedsec.privacy.ledger import EXHAUSTED, JobRef, Release, SiteLedger, Terms, ledger_path
from fedsec.privacy.site import BudgetExhausted, SitePrivacyGuard
from privacy_manifests import job, site


def test_an_update_is_charged_once_and_its_bytes_re_sent_by_a_new_guard(tmp_path: Path) -> None:
    j, s = job(rounds=5), site("h", budget=4.0)
    g = SitePrivacyGuard(j, "uid", s, tmp_path, n_train=40)
    assert g.kept(1, "m1") is None  # nothing paid yet: train
    eps1 = g.charge(1, 11, "m1", b"update-1")
    g2 = SitePrivacyGuard(j, "uid", s, tmp_path, n_train=40)  # a restarted client
    again = g2.kept(1, "m1")
    assert again is not None and again.payload == b"update-1" and again.epsilon == pytest.approx(eps1)
    assert g2.kept(2, "m2") is None
    for r in range(2, 6):
        g2.charge(r, 10 + r, f"m{r}", f"u{r}".encode())
    assert 0.95 * 1.2 <= g2.spent() <= 1.2
    # the five planned rounds are paid: a sixth release (an extra round, a rollback) is refused
    with pytest.raises(BudgetExhausted, match="above the 5 planned rounds"):
        g2.charge(3, 99, "m3", b"u3-retrained")
    assert g2.spent() <= 1.2


def test_budget_exhausted_mid_job_is_recorded(tmp_path: Path) -> None:
    j, s = job(rounds=5), site("h", budget=2.0)
    other = SiteLedger(ledger_path(tmp_path, "h"), "h")
    # another job (not admitted through this site's plan) spends meanwhile
    other.charge(JobRef("other", "other"), Release(1, 1, "x", 4.0, 1.0, 1),
                 Terms("dp-sgd", 5.0, 5, 1e-5), b"x", delta=1e-5, accountant="rdp")
    other.finish(JobRef("other", "other"), "done")
    assert other.spent() > 0.8  # admitted while the other job had spent less; now it has spent more
    g = SitePrivacyGuard(j, "uid", s, tmp_path, n_train=40)
    done = 0
    with pytest.raises(BudgetExhausted, match="above its budget 2"):
        for r in range(1, 6):
            g.charge(r, r, f"m{r}", f"u{r}".encode())
            done += 1
    assert 0 < done < 5
    assert other.spent() <= 2.0
    assert other.entry("uid")["status"] == EXHAUSTED


def test_a_running_guard_reserves_its_target_against_a_second_job(tmp_path: Path) -> None:
    s = site("h", budget=1.5)  # one round of this schedule costs about 0.55
    first = SitePrivacyGuard(job(rounds=5), "first", s, tmp_path, n_train=40)
    first.charge(1, 1, "m1", b"u1")
    second = SitePrivacyGuard(job(rounds=5), "second", s, tmp_path, n_train=40)
    with pytest.raises(BudgetExhausted, match="reserved by other jobs still running"):
        second.charge(1, 1, "m1", b"v1")  # the first reserves 1.2 of 1.5 while it runs
    first.finished("job Succeeded")
    assert second.charge(1, 1, "m1", b"v1") > 0  # only the first job's actual spend counts now


def test_distributed_noise_share_clips_parameters_and_leaves_buffers() -> None:
    delta = {"w": np.full(100, 3.0, np.float32), "input_norm.mean": np.zeros(3, np.float32)}
    out = clip_and_noise(delta, {"w"}, clipping_norm=1.0, noise_multiplier=0.0, min_survivors=4)
    assert np.linalg.norm(out["w"]) == pytest.approx(1.0, rel=1e-5)
    assert not out["input_norm.mean"].any()
    rng = np.random.default_rng(1)
    shares = [clip_and_noise({"w": np.zeros(20000, np.float32)}, {"w"}, clipping_norm=2.0, noise_multiplier=1.5,
                             min_survivors=4, rng=rng)["w"] for _ in range(4)]
    assert np.std(sum(shares)) == pytest.approx(1.5 * 2.0, rel=0.03)  # t shares sum to the calibrated noise
