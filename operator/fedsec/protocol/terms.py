"""The terms of one round, derived from the admitted plan by both sides, and the site's check. Pure.

The aggregator is the party secure aggregation and differential privacy protect a site from, so a
site takes nothing about a round on the aggregator's word that it can derive itself. Each number
here is one function the engine (to build the round) and the client (to check the Task) both
call; a Task that departs from any of them is refused at the site with one of
:data:`SITE_REFUSALS`, counted and audited there, and the site withdraws from that round.

- **participants**: a subset of the admitted roster that includes this site, never the
  aggregator or the operator (their names are reserved, so they are never in a roster), and never
  fewer than the round can commit with (``required``): a round of "aggregator + victim" or of two
  sites where the quorum is ten would reveal or nearly reveal one site's update.
- **required survivors**: ``required(n)`` for n participants, the larger of the quorum and the
  aggregation mode's threshold (:meth:`AggregationMode.required_survivors`). The distributed
  noise a site adds is sized by it, so an aggregator that inflates it would weaken the noise.
- **round seed**: :func:`round_seed` of (job uid, round id). It places every client on the SecAgg+
  graph; a seed the server picked could surround a victim with colluders.
- **round number and kind**: the two feature-statistics steps (``stats-scale``, then ``stats``;
  :mod:`fedsec.protocol.stats`) only as round 0 of a job that standardises; training rounds
  1..rounds. A round beyond the plan is spend the site did not admit. Either step may be asked
  again (a retry, or in any order): what a site releases in both is a function of its per-feature
  first two moments and row count, so a repeat releases nothing a pooled-moments round would not.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence

from fedsec.aggregation.base import AggregationMode
from fedsec.api.admitted import AdmittedPlan

SCALE = "stats-scale"  # round 0, step 1: the public centre and scale of the features
STATS = "stats"  # round 0, step 2: the moments around them, which standardise the inputs
TRAIN = "train"
STATS_KINDS = frozenset({SCALE, STATS})

SITE_REFUSALS = (
    "not-in-roster",  # a participant the site did not admit, or the site itself is not named
    "below-quorum",  # fewer participants than a round may commit with
    "bad-survivors",  # a survivor count that is not the plan's derivation
    "bad-seed",  # a round seed that is not round_seed(job uid, round id)
    "beyond-plan",  # a round number or kind the plan does not have
    "protocol",  # the aggregation protocol refused the aggregator's request (parameters, peers, shares)
)

_SEED_DOMAIN = b"fedsec/round-seed/v1\x00"


def round_seed(job_uid: str, round_id: int) -> bytes:
    """The public randomness of round ``round_id``: fixed by the job and the id, chosen by no one.

    Round ids are issued by the aggregator, but each id is used once and only grows, so a server
    that wants a particular graph has to grind ids, each of which is a visible round attempt.
    """
    uid = job_uid.encode()
    return hashlib.sha256(_SEED_DOMAIN + struct.pack(">I", len(uid)) + uid + struct.pack(">Q", round_id)).digest()


def required_survivors(mode: AggregationMode, participants: int, quorum: int) -> int:
    """Least contributors a round of ``participants`` commits with: the quorum, raised by the mode's
    threshold. May exceed ``participants`` (the round cannot commit and ends at once)."""
    return max(mode.required_survivors(participants, quorum), quorum)


class TaskRefused(Exception):
    """A Task departs from what the site admitted. ``reason`` is one of :data:`SITE_REFUSALS`."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in SITE_REFUSALS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_task(
    plan: AdmittedPlan,
    *,
    site: str,
    rounds: int,
    standardize: bool,
    required: Callable[[int], int],
    round_id: int,
    round_number: int,
    kind: str,
    participants: Sequence[str],
    min_survivors: int,
    seed: bytes,
) -> None:
    """Raise :class:`TaskRefused` unless the Task's round terms are the plan's own derivation.

    ``required(n)`` is the least contributors a round of n participants commits with under this
    job's aggregation mode and the plan's quorum.
    """
    names = list(participants)
    if names != sorted(set(names)):
        raise TaskRefused("not-in-roster", "the participant list is not sorted and unique")
    strangers = sorted(set(names) - set(plan.roster))
    if strangers:
        shown = ", ".join(repr(s) for s in strangers[:5])
        raise TaskRefused("not-in-roster", f"participants {shown} are not among the {len(plan.roster)} admitted sites")
    if site not in names:
        raise TaskRefused("not-in-roster", f"the task does not name this site ({site!r}) among its participants")
    n = len(names)
    need = required(n)
    if n < need:
        raise TaskRefused("below-quorum", f"{n} participants, but a round of this job commits only with {need}")
    if min_survivors != need:
        raise TaskRefused("bad-survivors", f"the task asks for {min_survivors} survivors; the plan gives {need} for {n} participants")
    if seed != round_seed(plan.job_uid, round_id):
        raise TaskRefused("bad-seed", f"round id {round_id}'s seed is not the one derived from the job uid and round id")
    if kind in STATS_KINDS:
        if not (standardize and round_number == 0):
            raise TaskRefused("beyond-plan", f"a feature-statistics round ({kind}) numbered {round_number}; the plan "
                              "has " + ("them as round 0 only" if standardize else "none"))
    elif kind == TRAIN:
        if not 1 <= round_number <= rounds:
            raise TaskRefused("beyond-plan", f"training round {round_number}; the plan has rounds 1 to {rounds}")
    else:
        raise TaskRefused("beyond-plan", f"a round of kind {kind!r}")
