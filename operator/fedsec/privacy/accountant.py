"""Epsilon of a history of (sub)sampled Gaussian releases, through Opacus' own accountants.

A history is a list of ``(noise_multiplier, sample_rate, steps)``, exactly what Opacus keeps in
``accountant.history``. The ledger stores it; epsilon is always recomputed from it, never carried
in memory, so a restarted process reaches the same number.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from opacus.accountants import create_accountant

Accountant = Literal["rdp", "prv"]
Step = tuple[float, float, int]


def compact(history: Iterable[Step]) -> list[Step]:
    """Merge runs of identical (noise, rate): the accountants compose them the same way, faster."""
    out: list[Step] = []
    for sigma, q, steps in history:
        if steps <= 0:
            continue
        if out and out[-1][0] == sigma and out[-1][1] == q:
            out[-1] = (sigma, q, out[-1][2] + int(steps))
        else:
            out.append((float(sigma), float(q), int(steps)))
    return out


def epsilon(history: Iterable[Step], delta: float, accountant: Accountant = "rdp") -> float:
    """Epsilon at ``delta`` after every release in ``history`` (0 for an empty history)."""
    steps = compact(history)
    if not steps:
        return 0.0
    acc = create_accountant(mechanism=accountant)
    acc.history = steps
    return float(acc.get_epsilon(delta=delta))
