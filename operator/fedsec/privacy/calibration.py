"""The noise a job needs: from its target epsilon, delta, planned rounds, local steps and sampling rate.

DP-SGD (``privacy.mechanism: dp-sgd``) is record-level DP at each site: every local step is a
Poisson-subsampled Gaussian mechanism on the site's training rows. A site with ``n`` rows and batch
size ``b`` runs ``ceil(n / b)`` steps per local epoch at sampling rate ``1 / ceil(n / b)`` (what
Opacus' ``DPDataLoader`` does), so each site gets its own noise multiplier, the smallest for which
its epsilon after every planned step of every planned round is at most the target.

Distributed Gaussian noise (``distributed-gaussian``) is user-level DP over the sites: each round is
one Gaussian release of the sum of clipped updates (sensitivity ``clippingNorm``), without sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from opacus.accountants.utils import get_noise_multiplier

from fedsec.privacy.accountant import Accountant, epsilon

# Opacus' binary search stops within this much below the target; 5% of the smallest sensible target.
EPSILON_TOLERANCE = 0.005


class CalibrationError(ValueError):
    """No noise level meets the target (the budget is too small for the planned work)."""


@dataclass(frozen=True)
class Schedule:
    """The Gaussian releases of one round: ``steps`` steps at ``sample_rate`` each."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    planned_rounds: int
    delta: float
    accountant: Accountant
    target_epsilon: float

    @property
    def planned_steps(self) -> int:
        return self.steps_per_round * self.planned_rounds

    def step(self) -> tuple[float, float, int]:
        return (self.noise_multiplier, self.sample_rate, self.steps_per_round)

    def planned_epsilon(self) -> float:
        return epsilon([(self.noise_multiplier, self.sample_rate, self.planned_steps)], self.delta, self.accountant)


def site_sampling(n_train: int, batch_size: int, local_epochs: int) -> tuple[float, int]:
    """(sampling rate, steps per round) of DP-SGD at a site with ``n_train`` rows."""
    if n_train < 1:
        raise CalibrationError("a site without training rows cannot run DP-SGD")
    batches = max(1, math.ceil(n_train / batch_size))
    return 1.0 / batches, batches * local_epochs


@lru_cache(maxsize=256)
def noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: Accountant) -> float:
    """The smallest noise multiplier (to Opacus' search precision) whose epsilon after ``steps`` is
    at most ``target_epsilon``: never above it, and within ``EPSILON_TOLERANCE`` below."""
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps,
                accountant=accountant, epsilon_tolerance=EPSILON_TOLERANCE,
            )
        )
    except ValueError as exc:
        raise CalibrationError(
            f"no noise level gives epsilon {target_epsilon} at delta {delta} over {steps} steps at sampling "
            f"rate {sample_rate:.3g}: {exc}"
        ) from None


def dp_sgd_schedule(
    *, target_epsilon: float, delta: float, accountant: Accountant, rounds: int, n_train: int,
    batch_size: int, local_epochs: int,
) -> Schedule:
    q, steps = site_sampling(n_train, batch_size, local_epochs)
    sigma = noise_multiplier(target_epsilon, delta, q, steps * rounds, accountant)
    return Schedule(sigma, q, steps, rounds, delta, accountant, target_epsilon)


def distributed_schedule(*, target_epsilon: float, delta: float, accountant: Accountant, rounds: int) -> Schedule:
    """One unsampled Gaussian release of the clipped sum per round (user-level, a site is a user)."""
    sigma = noise_multiplier(target_epsilon, delta, 1.0, rounds, accountant)
    return Schedule(sigma, 1.0, 1, rounds, delta, accountant, target_epsilon)
