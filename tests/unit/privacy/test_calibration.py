"""The calibrated noise gives an epsilon within 5% of the target after the planned steps, never above."""

from __future__ import annotations

import pytest

from fedsec.privacy.accountant import compact, epsilon
from fedsec.privacy.calibration import (
    CalibrationError,
    distributed_schedule,
    dp_sgd_schedule,
    site_sampling,
)


@pytest.mark.parametrize(
    ("target", "n", "batch", "epochs", "rounds", "accountant"),
    [
        (1.2, 32, 16, 1, 10, "rdp"),
        (1.2, 78, 16, 2, 20, "rdp"),
        (1.2, 6, 16, 1, 10, "rdp"),      # a tiny site: full batch, no amplification
        (8.0, 400, 32, 1, 5, "rdp"),
        (1.2, 47, 16, 1, 10, "prv"),
        (3.0, 200, 20, 1, 8, "prv"),
    ],
)
def test_epsilon_after_planned_steps_is_within_5_percent_below_target(
    target: float, n: int, batch: int, epochs: int, rounds: int, accountant: str
) -> None:
    s = dp_sgd_schedule(target_epsilon=target, delta=1e-5, accountant=accountant, rounds=rounds, n_train=n,
                        batch_size=batch, local_epochs=epochs)
    q, steps = site_sampling(n, batch, epochs)
    assert (s.sample_rate, s.steps_per_round, s.planned_steps) == (q, steps, steps * rounds)
    # an independent accountant, fed step by step the way rounds happen
    eps = epsilon([s.step()] * rounds, 1e-5, accountant)
    assert eps <= target
    assert eps >= 0.95 * target
    assert eps == pytest.approx(s.planned_epsilon(), rel=1e-6)


def test_sampling_matches_opacus_poisson_loader() -> None:
    assert site_sampling(32, 16, 1) == (0.5, 2)
    assert site_sampling(33, 16, 2) == (pytest.approx(1 / 3), 6)
    assert site_sampling(5, 16, 1) == (1.0, 1)
    with pytest.raises(CalibrationError):
        site_sampling(0, 16, 1)


def test_distributed_schedule_is_one_unsampled_release_per_round() -> None:
    s = distributed_schedule(target_epsilon=2.0, delta=1e-5, accountant="rdp", rounds=20)
    assert (s.sample_rate, s.steps_per_round) == (1.0, 1)
    assert 0.95 * 2.0 <= s.planned_epsilon() <= 2.0


def test_fewer_rounds_spend_less_and_history_compacts() -> None:
    s = dp_sgd_schedule(target_epsilon=1.2, delta=1e-5, accountant="rdp", rounds=10, n_train=40, batch_size=16,
                        local_epochs=1)
    assert epsilon([s.step()] * 4, 1e-5) < epsilon([s.step()] * 5, 1e-5) < 1.2
    assert compact([s.step()] * 4) == [(s.noise_multiplier, s.sample_rate, 4 * s.steps_per_round)]
    assert epsilon([], 1e-5) == 0.0
