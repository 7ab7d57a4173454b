"""How much one site may make the aggregator hold: bytes per message and calls in flight.

``spec.maxMessageBytes`` (64 MiB by default) says nothing about the model: a site allowed 64 MiB per
message and any number of concurrent calls could push the aggregator past its memory limit. So a
message is bounded by what its kind can need for this model (a Join or Poll is a few hundred bytes;
an answer is bounded by its phase: the model's safetensors size in plaintext, the participant count
or the masked vector's length under secure aggregation), and a site gets at most
:data:`MAX_CALLS_PER_SITE` calls in flight. The bounds are generous (several times what an honest
site sends, measured in tests/unit/runtime/test_limits.py) so that they only ever stop a liar.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from fedsec.aggregation.base import TensorSpec
from fedsec.wire import tensors as wire_tensors

KiB = 1024
CONTROL_MESSAGE_BYTES = 8 * KiB
"""A whole Join or Poll envelope: header, signature, an identity certificate (~600 B) and two integers."""

ENVELOPE_OVERHEAD_BYTES = 4 * KiB
"""Around an answer: the envelope's header, signature and certificate, the Contribution's metrics."""

PHASE_SLACK_BYTES = 4 * KiB
PLAINTEXT_SLACK_BYTES = 64 * KiB

# Secure aggregation's phases (fedsec.aggregation.secagg.phases; "consistency" is being added there).
ADVERTISE, SHARE, MASKED_INPUT, UNMASK, CONSISTENCY = "advertise", "share", "masked-input", "unmask", "consistency"
SECAGG_PHASES = (ADVERTISE, SHARE, MASKED_INPUT, UNMASK, CONSISTENCY)
PLAINTEXT_UPDATE = "update"

MAX_CALLS_PER_SITE = 2
"""Calls one TLS peer may have in flight: an honest client has one at a time (a long poll, or an
answer); one more absorbs a retry racing its abandoned predecessor."""

FREE_WORKERS = 2
"""Workers the in-flight bound keeps free, so that a call over a bound is refused at once instead of
queueing behind long polls that hold every worker for up to their 10 s."""


def rpc_workers(sites: int) -> int:
    """The gRPC server's thread pool: one long poll per site, and room for answers and the operator."""
    return sites + 8


def max_in_flight(sites: int) -> int:
    """Exchange calls the aggregator handles at once, over all sites; more are refused as busy."""
    return rpc_workers(sites) - FREE_WORKERS


def max_concurrent_rpcs(sites: int) -> int:
    """gRPC's own bound on RPCs admitted (running or queued for a worker), beyond which it answers
    RESOURCE_EXHAUSTED before reading the message: with the receive limit, this bounds the memory
    all sites together can make the aggregator hold."""
    return 2 * rpc_workers(sites)


def _dim(specs: Sequence[TensorSpec]) -> int:
    return sum(s.size for s in specs)


def answer_cap(
    mode_name: str,
    phase: str,
    model_specs: Sequence[TensorSpec],
    participants: int,
    max_message_bytes: int,
    stats_specs: Sequence[TensorSpec] = (),
) -> int:
    """Largest Contribution envelope a site may send in ``phase`` of a round of this job.

    ``model_specs`` and ``stats_specs`` are the tensors of a training and a feature-statistics round
    (a round's kind is not in the header, so the larger of the two counts); ``participants`` is the
    most a round can have (the admitted sites). Under ``secagg`` the answer of each phase:
    advertise ≤ 8 kB, share ≤ participants × 200 B + 4 kB, masked-input ≤ (dim + 1) × 8 B + 4 kB,
    unmask ≤ participants × 120 B + 4 kB, consistency ≤ participants × 80 B + 4 kB; in plaintext
    (``none``) an update ≤ the model's safetensors size + 64 kB. Each gets
    :data:`ENVELOPE_OVERHEAD_BYTES` for the envelope around it, and none exceeds
    ``max_message_bytes``. A phase the mode does not have gets the mode's largest cap (the engine
    refuses it as wrong-phase after); a mode this module does not know gets ``max_message_bytes``.
    """
    if mode_name == "secagg":
        dim = max(_dim(model_specs), _dim(stats_specs))
        caps = {
            ADVERTISE: 8 * KiB,
            SHARE: participants * 200 + PHASE_SLACK_BYTES,
            MASKED_INPUT: (dim + 1) * 8 + PHASE_SLACK_BYTES,
            UNMASK: participants * 120 + PHASE_SLACK_BYTES,
            CONSISTENCY: participants * 80 + PHASE_SLACK_BYTES,
        }
    elif mode_name == "none":
        size = max(wire_tensors.encoded_size(model_specs), wire_tensors.encoded_size(stats_specs) if stats_specs else 0)
        caps = {PLAINTEXT_UPDATE: size + PLAINTEXT_SLACK_BYTES}
    else:
        return max_message_bytes
    answer = caps.get(phase, max(caps.values()))
    return min(answer + ENVELOPE_OVERHEAD_BYTES, max_message_bytes)


def largest_message(
    mode_name: str,
    model_specs: Sequence[TensorSpec],
    participants: int,
    max_message_bytes: int,
    stats_specs: Sequence[TensorSpec] = (),
) -> int:
    """The largest message of any kind a site may send this job: what the server must accept at all."""
    answer = answer_cap(mode_name, "", model_specs, participants, max_message_bytes, stats_specs)
    return max(answer, min(CONTROL_MESSAGE_BYTES, max_message_bytes))


class CallLimiter:
    """Calls in flight, per TLS peer and in all; :meth:`enter` refuses beyond either bound at once.

    Keyed by the TLS peer (authenticated by the handshake, known before any parsing), not by the
    envelope's signer: a site cannot spend another's allowance, and refusing costs no signature check.
    """

    def __init__(self, per_peer: int, total: int) -> None:
        self.per_peer = per_peer
        self.total = total
        self._lock = threading.Lock()
        self._by_peer: dict[str, int] = {}
        self._in_flight = 0

    def enter(self, peer: str) -> str:
        """Count a call from ``peer`` in: '' when admitted (then call :meth:`leave`), else why not."""
        with self._lock:
            held = self._by_peer.get(peer, 0)
            if held >= self.per_peer:
                return f"{peer or '(no TLS name)'} already has {held} calls in flight (at most {self.per_peer} per site)"
            if self._in_flight >= self.total:
                return f"the aggregator is handling {self._in_flight} calls (at most {self.total}); retry shortly"
            self._by_peer[peer] = held + 1
            self._in_flight += 1
            return ""

    def leave(self, peer: str) -> None:
        with self._lock:
            held = self._by_peer.get(peer, 0) - 1
            if held > 0:
                self._by_peer[peer] = held
            else:
                self._by_peer.pop(peer, None)
            self._in_flight -= 1

    def in_flight(self, peer: str | None = None) -> int:
        with self._lock:
            return self._in_flight if peer is None else self._by_peer.get(peer, 0)
