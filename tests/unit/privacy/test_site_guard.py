"""The site's guard: spend before release, the kept update re-sent for free, BudgetExhausted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsec.privacy.distributed import clip_and_noise
from fedsec.privacy.ledger import EXHAUSTED, JobRef, Release, SiteLedger, ledger_path
from fedsec.privacy.site import BudgetExhausted, SitePrivacyGuard
from privacy_manifests import job, site


def test_rounds_are_paid_once_per_model_and_survive_a_new_guard(tmp_path: Path) -> None:
    j, s = job(rounds=5), site("h", budget=4.0)
    g = SitePrivacyGuard(j, "uid", s, tmp_path, n_train=40)
    p = g.prepare(1, "m1")
    assert p.reused is None
    eps1 = g.record(1, 11, "m1", b"update-1")
    g2 = SitePrivacyGuard(j, "uid", s, tmp_path, n_train=40)  # a restarted client
    again = g2.prepare(1, "m1")
    assert again.reused == b"update-1" and again.epsilon_after == pytest.approx(eps1)
    assert g2.prepare(2, "m2").reused is None
    for r in range(2, 6):
        g2.record(r, 10 + r, f"m{r}", b"u")
    assert g2.spent() <= 1.2 and g2.spent() >= 0.95 * 1.2


def test_budget_exhausted_mid_job_is_recorded(tmp_path: Path) -> None:
    j, s = job(rounds=5), site("h", budget=2.0)
    other = SiteLedger(ledger_path(tmp_path, "h"), "h")
    other.record_release(JobRef("other", "other"), Release(1, 1, "x", 4.0, 1.0, 1), delta=1e-5, accountant="rdp")
    assert other.spent() > 0.8  # admitted while the other job had spent less; now it has spent more
    g = SitePrivacyGuard(j, "uid", s, tmp_path, n_train=40)
    done = 0
    with pytest.raises(BudgetExhausted, match="above its budget 2"):
        for r in range(1, 6):
            g.prepare(r, f"m{r}")
            g.record(r, r, f"m{r}", b"u")
            done += 1
    assert 0 < done < 5
    assert other.spent() <= 2.0
    assert other.entry("uid")["status"] == EXHAUSTED


def test_distributed_noise_share_clips_parameters_and_leaves_buffers() -> None:
    delta = {"w": np.full(100, 3.0, np.float32), "input_norm.mean": np.zeros(3, np.float32)}
    out = clip_and_noise(delta, {"w"}, clipping_norm=1.0, noise_multiplier=0.0, min_survivors=4)
    assert np.linalg.norm(out["w"]) == pytest.approx(1.0, rel=1e-5)
    assert not out["input_norm.mean"].any()
    rng = np.random.default_rng(1)
    shares = [clip_and_noise({"w": np.zeros(20000, np.float32)}, {"w"}, clipping_norm=2.0, noise_multiplier=1.5,
                             min_survivors=4, rng=rng)["w"] for _ in range(4)]
    assert np.std(sum(shares)) == pytest.approx(1.5 * 2.0, rel=0.03)  # t shares sum to the calibrated noise
