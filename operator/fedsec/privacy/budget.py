"""What a site has left of its privacy budget: the one rule, used by admission, by the site's
ledger at every charge, by the run summary and by the FederatedClient status.

A site's budget is shared by every job on its data (basic composition: their epsilons add). Two
things take from it:

- what jobs have **spent**: the epsilon of their recorded releases, whatever state they are in;
- what jobs still **running** may yet spend: a job admitted at a site reserves its admitted
  ``targetEpsilon`` until it finishes, so two jobs admitted one after the other can never both
  count on the same remaining budget. The reservation is the part of the target not yet spent;
  once the job finishes (or stops training here) only its actual spend counts.

Pure: no I/O, no fedsec imports beyond this package.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# Opacus' epsilons are floats recomputed from the same history; a charge that lands exactly on a
# limit must not be refused for the last bits of a rounding difference.
TOLERANCE = 1e-12


@dataclass(frozen=True)
class Standing:
    """Epsilon other jobs have spent at a site, and what the running ones among them still reserve."""

    spent: float = 0.0
    reserved: float = 0.0

    def __add__(self, other: Standing) -> Standing:
        return Standing(self.spent + other.spent, self.reserved + other.reserved)


def job_standing(epsilon: float, reserved_target: float | None, running: bool) -> Standing:
    """One job's weight on a site: its spend, plus (while it runs) the rest of its admitted target.
    A job without a known target reserves nothing beyond what it spent; an unbounded target
    (a job without DP) reserves everything."""
    if not running or reserved_target is None:
        return Standing(max(0.0, epsilon), 0.0)
    return Standing(max(0.0, epsilon), max(0.0, reserved_target - epsilon))


def total(standings: Iterable[Standing]) -> Standing:
    out = Standing()
    for s in standings:
        out = out + s
    return out


def remaining(budget: float | None, spent_by_others: float, reserved_by_running: float = 0.0) -> float | None:
    """What a site with ``budget`` has left for a job, given what other jobs spent and what the
    running ones still reserve; None when the site has no budget (no limit). Never negative."""
    if budget is None:
        return None
    left = budget - spent_by_others - reserved_by_running
    return 0.0 if math.isnan(left) else max(0.0, left)


def fits(amount: float, room: float | None) -> bool:
    """Whether spending ``amount`` stays within ``room`` (None: no limit)."""
    return room is None or amount <= room + TOLERANCE
