"""What a job declares about secure aggregation, and what follows from it for one round.

``SecAggConfig`` mirrors ``spec.secureAggregation`` (mode ``secagg``). ``threshold_count`` and
``check_consistency`` hold the one rule that ties the threshold to the quorum; ``RoundParams.derive``
turns the config and a round's size into the numbers both sides use (graph degree, local threshold,
fixed-point precision). Client and server derive them independently and the client refuses a round
whose advertised parameters differ from its own.

The threshold and the quorum
----------------------------
``threshold`` is the least number of a round's participants whose updates must be in the aggregate
for the server to be allowed to unmask it; it is also the number of Shamir shares that rebuild a
client's secret. Two conditions make it meaningful:

* **majority** — ``threshold_count(config, n) > n / 2`` for every round of n participants. With
  fewer, a server that lies about who dropped can tell one group of clients "u survived" (collecting
  shares of u's self-mask seed) and a disjoint group "u dropped" (collecting shares of u's mask key),
  reach the threshold with both and unmask u's input alone. Two disjoint groups cannot both hold a
  strict majority, and an honest client never reveals both kinds of share for one peer, so the attack
  fails. This is the honest-but-curious bound of Bonawitz et al. strengthened against a server that
  lies about dropouts but does not control clients; against a server that also controls ``c``
  clients the same argument needs ``threshold > (n + c) / 2`` (Bonawitz et al. take n/3 corrupt
  clients and a threshold above 2n/3): pick the threshold fraction accordingly.
  A fraction must therefore lie in (0.5, 1]; a count must exceed half of the largest round.
* **quorum** — a round commits only with at least ``max(quorum, threshold_count(n))`` surviving
  contributors (``SecAggMode.required_survivors``). A threshold below the quorum changes nothing
  for commits (the quorum already asks for more) but still sets the Shamir threshold. A count
  threshold above the smallest round the quorum allows would make such rounds impossible, so it must
  be at most ``quorum``. ``check_consistency`` checks both before the job starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from fedsec.crypto.secagg.quantize import MAX_FRAC_BITS, FixedPoint

DEFAULT_THRESHOLD = 2.0 / 3.0
MIN_PARTICIPANTS = 2
"""Secure aggregation of one update is that update: a round needs at least two contributors."""


@dataclass(frozen=True)
class SecAggConfig:
    """``spec.secureAggregation`` for mode ``secagg``.

    threshold: a fraction in (0.5, 1] of the round's participants (a float, default 2/3) or a count
        (an int) of them; see the module docstring for the rule that binds it to the quorum.
    clip_range: each coordinate of a client's delta is clipped to [-clip_range, clip_range] before it
        is scaled by the client's weight and quantized (default 1.0). Clipped coordinates are counted
        on the client (``SecAggClient.clipped``) so the runtime can report them.
    ring_bits: masking ring Z_(2**ring_bits), 32 (default: a masked coordinate costs what a float32
        costs on the wire) or 64.
    quantization_bits: fractional bits, i.e. a clipped value is represented in steps of
        clip_range / 2**quantization_bits. None (default) takes the most the ring allows while
        leaving headroom for the sum of the round's participants: floor(log2((2**(ring_bits-1) - 1)
        / n)) (24 bits at n = 100 with a 32-bit ring), capped at 40.
    neighbours: the SecAgg+ graph. "auto" (default): the complete graph up to
        ``complete_graph_max`` participants, otherwise a random Harary graph of even degree
        2 * ceil(log2 n). "complete": always the complete graph (plain Bonawitz et al.). An even
        int k >= 2: that degree (complete when k >= n - 1).
    complete_graph_max: largest round for which "auto" uses the complete graph (default 32).
        In a sparse graph a client's secrets are shared among its k + 1 closed neighbourhood only,
        and the local threshold is the round's threshold fraction of that neighbourhood, never
        less than a strict majority of it (:meth:`RoundParams.derive`): the job's threshold holds
        in every neighbourhood, whatever the graph. The complete graph uses ``threshold`` itself.
    weight_bound: clients divide their weight (sample count) by this public bound and cap the
        result at 1 before masking it, so weights of any size fit the ring's headroom; a weight
        above the bound counts as the bound. It comes from the job's plan (``spec.secureAggregation
        .weightBound``), the same for every client and every round, and each client checks the
        server publishes exactly it: a bound the server chose per client could round everyone but
        a victim to zero, and one site declaring a huge size would wipe out the others' precision.
        Precision is relative to the bound: the error bound in docs/secure-aggregation.md grows as
        the weights sit below it.
    """

    threshold: float | int = DEFAULT_THRESHOLD
    clip_range: float = 1.0
    ring_bits: int = 32
    quantization_bits: int | None = None
    neighbours: int | Literal["auto", "complete"] = "auto"
    complete_graph_max: int = 32
    weight_bound: float = float(2**16)

    def validate(self) -> None:
        """Raise ValueError naming the first field that is wrong."""
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise ValueError(f"threshold: must be a fraction or a count, got {t!r}")
        if isinstance(t, float):
            if not (math.isfinite(t) and 0.5 < t <= 1.0):
                raise ValueError(
                    f"threshold: a fraction must be above 0.5 and at most 1 (a strict majority of the "
                    f"round's participants), got {t}"
                )
        elif t < MIN_PARTICIPANTS:
            raise ValueError(f"threshold: a count must be at least {MIN_PARTICIPANTS}, got {t}")
        if not (isinstance(self.clip_range, (int, float)) and math.isfinite(self.clip_range)
                and self.clip_range > 0):
            raise ValueError(f"clip_range: must be a positive finite number, got {self.clip_range!r}")
        if self.ring_bits not in (32, 64):
            raise ValueError(f"ring_bits: must be 32 or 64, got {self.ring_bits!r}")
        q = self.quantization_bits
        if q is not None:
            top = min(self.ring_bits - 2, MAX_FRAC_BITS)
            if isinstance(q, bool) or not isinstance(q, int) or not 1 <= q <= top:
                raise ValueError(f"quantization_bits: must be between 1 and {top} or unset, got {q!r}")
        k = self.neighbours
        if k not in ("auto", "complete"):
            if isinstance(k, bool) or not isinstance(k, int) or k < 2 or k % 2:
                raise ValueError(
                    f"neighbours: must be 'auto', 'complete' or an even degree >= 2, got {k!r}"
                )
        if isinstance(self.complete_graph_max, bool) or not isinstance(self.complete_graph_max, int) \
                or self.complete_graph_max < 1:
            raise ValueError(
                f"complete_graph_max: must be a positive integer, got {self.complete_graph_max!r}"
            )
        if not (isinstance(self.weight_bound, (int, float)) and math.isfinite(self.weight_bound)
                and self.weight_bound > 0):
            raise ValueError(f"weight_bound: must be a positive finite number, got {self.weight_bound!r}")


def _majority_fraction(config: SecAggConfig, n: int) -> float:
    t = config.threshold
    return float(t) if isinstance(t, float) else t / n


def threshold_count(config: SecAggConfig, n_participants: int) -> int:
    """Least survivors a round of ``n_participants`` needs before the server may unmask anything.

    A fraction f gives ceil(f * n); a count is taken as is. Raises ValueError (naming ``threshold``)
    when the result is not a strict majority of the round or exceeds it: a round commits only with
    max(quorum, threshold_count) survivors, see the module docstring.
    """
    n = n_participants
    if n < MIN_PARTICIPANTS:
        raise ValueError(
            f"secure aggregation needs at least {MIN_PARTICIPANTS} participants per round, got {n}"
        )
    t = config.threshold
    count = math.ceil(t * n - 1e-9) if isinstance(t, float) else int(t)
    if count > n:
        raise ValueError(f"threshold: {count} survivors required but the round has only {n} participants")
    if 2 * count <= n:
        raise ValueError(
            f"threshold: {count} of {n} participants is not a strict majority; a server lying about "
            f"dropouts could unmask one client's update"
        )
    return count


def check_consistency(config: SecAggConfig, *, quorum: int, max_participants: int) -> None:
    """Check, before a job starts, that every round size the quorum allows works under ``config``.

    Rounds have between ``quorum`` and ``max_participants`` participants. Raises ValueError naming
    the field: ``threshold`` (a count above the quorum, or not a majority of the largest round),
    ``quorum`` (below two), ``quantization_bits`` (no headroom for the largest round).
    """
    config.validate()
    if quorum < MIN_PARTICIPANTS:
        raise ValueError(f"quorum: secure aggregation needs at least {MIN_PARTICIPANTS} clients, got {quorum}")
    if max_participants < quorum:
        raise ValueError(f"quorum: {quorum} is more than the {max_participants} clients that may join")
    t = config.threshold
    if not isinstance(t, float):
        if t > quorum:
            raise ValueError(
                f"threshold: {t} is above the quorum of {quorum}; a round that starts with the quorum "
                f"could never be unmasked (lower the threshold or raise the quorum)"
            )
    for n in {quorum, max_participants}:  # the count rule is monotone in n: the ends suffice
        threshold_count(config, n)
    fixed_point(config, max_participants)


def fixed_point(config: SecAggConfig, n_participants: int) -> FixedPoint:
    """The encoding for a round of ``n_participants``: the sum of all of them must not wrap."""
    room = (2 ** (config.ring_bits - 1) - 1) // max(n_participants, 1)
    auto = min(room.bit_length() - 1, MAX_FRAC_BITS, config.ring_bits - 2)
    bits = auto if config.quantization_bits is None else config.quantization_bits
    if bits > auto or bits < 1:
        raise ValueError(
            f"quantization_bits: {bits} leaves no headroom in a {config.ring_bits}-bit ring for the sum "
            f"of {n_participants} participants (at most {auto})"
        )
    return FixedPoint(config.ring_bits, bits, float(config.clip_range))


def auto_degree(n: int) -> int:
    """SecAgg+ degree for a round of n: even, about 2 log2 n (Bell et al.: O(log n) neighbours)."""
    return 2 * math.ceil(math.log2(n))


def degree(config: SecAggConfig, n: int) -> int:
    """Neighbours per client in a round of n; n - 1 means the complete graph."""
    k = config.neighbours
    if k == "complete" or (k == "auto" and n <= config.complete_graph_max):
        return n - 1
    d = auto_degree(n) if k == "auto" else int(k)
    return n - 1 if d >= n - 1 else d


@dataclass(frozen=True)
class RoundParams:
    """Everything both sides must agree on in one round, derived from the config and the round."""

    participants: int
    degree: int
    threshold: int
    local_threshold: int
    fixed: FixedPoint
    dimension: int
    weight_bound: float = field(default=float(2**16))

    @property
    def complete(self) -> bool:
        return self.degree == self.participants - 1

    @classmethod
    def derive(cls, config: SecAggConfig, n: int, dimension: int) -> RoundParams:
        """The one derivation both sides run; a client refuses a server whose numbers differ."""
        config.validate()
        t = threshold_count(config, n)
        k = degree(config, n)
        if k == n - 1:
            local = t
        else:
            m = k + 1  # a closed neighbourhood: the client and its k neighbours hold its shares
            local = min(m, max(m // 2 + 1, math.ceil(_majority_fraction(config, n) * m - 1e-9)))
        return cls(n, k, t, local, fixed_point(config, n), dimension, float(config.weight_bound))
