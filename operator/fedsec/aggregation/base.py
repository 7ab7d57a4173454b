"""The contract every aggregation protocol implements: plaintext FedAvg, secure aggregation, HE.

One round of federated training has two halves. The round engine (``fedsec.protocol.engine``)
owns *who* takes part, deadlines, quorum and retries. An aggregation protocol owns *how* the
participants' updates become one aggregate: in plaintext a single phase where each client sends its
update; under secure aggregation several phases (advertise keys, share secrets, masked input,
unmasking) in which no single update is ever visible to the server.

Both halves are pure: no sockets, no clocks, no files. The engine asks the server side what each
client should be told in the current phase, feeds it the clients' answers, and closes the phase
when every expected client answered or the phase deadline passed. The transport only moves bytes.
That is what lets a test drive a dropout at every phase in milliseconds, and lets the same code run
under ``fedsec run`` and in pods.

Duplicate answers, stale round ids, wrong phases and bad signatures are rejected by the engine and
the envelope layer before a protocol sees a message; a protocol only judges the *content* of an
answer from an expected client.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

Tensors = dict[str, np.ndarray]
"""A model's parameters or an update: name -> float32 array, in the model's state_dict order."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one tensor, so a protocol can size vectors before any update arrives."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass(frozen=True)
class PeerIdentity:
    """What a client needs to authenticate another client's protocol messages (secagg key adverts).

    ``sign`` signs with this client's own identity key. ``verify`` checks that ``signature`` over
    ``data`` was made by the identity certified in ``peer_cert`` (DER, issued by the job CA) and that
    the certificate names ``peer_id``; it returns False on any failure and never raises for bad input.
    ``cert`` is this client's own certificate (DER), to send along with what it signs.
    """

    client_id: str
    cert: bytes
    sign: Callable[[bytes], bytes]
    verify: Callable[[str, bytes, bytes, bytes], bool]


@dataclass(frozen=True)
class RoundContext:
    """Everything both sides agree on for one round before the first phase.

    ``participants`` are the client ids selected for this round, sorted. ``min_survivors`` is the
    least number of clients whose updates must be in the aggregate (the quorum, or the secure
    aggregation threshold when that is higher); a protocol that cannot reach it aborts.
    ``seed`` is the round's public randomness (e.g. for the SecAgg+ neighbour graph): always
    :func:`fedsec.protocol.terms.round_seed` of (job uid, round id), which a client re-derives
    instead of taking the server's word for it. ``binding`` (may be empty) is a digest of public
    inputs every participant must share for the round to mean anything (the feature-statistics
    centre, :func:`fedsec.protocol.stats.centre_binding`): secure aggregation binds its keys and
    signatures to it, so participants handed different inputs cannot complete the round together.
    """

    job_uid: str
    round_id: int
    participants: tuple[str, ...]
    min_survivors: int
    tensor_specs: tuple[TensorSpec, ...]
    seed: bytes = b""
    binding: bytes = b""

    def __post_init__(self) -> None:
        if list(self.participants) != sorted(set(self.participants)):
            raise ValueError("participants must be sorted and unique")
        if not 1 <= self.min_survivors <= max(1, len(self.participants)):
            raise ValueError(
                f"min_survivors={self.min_survivors} must be between 1 and the "
                f"{len(self.participants)} participants"
            )


@dataclass(frozen=True)
class ClientUpdate:
    """A client's contribution: the change to the global model and the weight it carries.

    ``delta`` is local model minus the global model it started from (float32). ``weight`` is the
    client's FedAvg weight, its number of training samples.
    """

    delta: Tensors
    weight: float


@dataclass(frozen=True)
class Aggregate:
    """The outcome of a successful round: the weighted mean of the survivors' deltas.

    ``contributors`` are the clients whose updates are in the mean; ``total_weight`` is the sum of
    their weights. Under secure aggregation this is all the server ever learns.
    """

    mean_delta: Tensors
    total_weight: float
    contributors: tuple[str, ...]


@dataclass(frozen=True)
class NextPhase:
    phase: str


@dataclass(frozen=True)
class Finished:
    aggregate: Aggregate


@dataclass(frozen=True)
class Aborted:
    """The round cannot produce an aggregate; ``reason`` is shown to users and written to the audit log."""

    reason: str


PhaseOutcome = NextPhase | Finished | Aborted


class ProtocolRejection(Exception):
    """A client's answer is malformed or breaks the protocol. ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ServerProtocol(abc.ABC):
    """Server side of one round. Created by the engine when the round starts, dropped when it ends."""

    @property
    @abc.abstractmethod
    def phase(self) -> str:
        """Name of the current phase (e.g. ``update``; ``advertise``, ``share``, ...)."""

    @abc.abstractmethod
    def expected(self) -> frozenset[str]:
        """Clients whose answer the current phase still waits for."""

    @abc.abstractmethod
    def request_for(self, client_id: str) -> bytes | None:
        """What ``client_id`` must be sent in the current phase, or None if it has no part in it."""

    @abc.abstractmethod
    def receive(self, client_id: str, body: bytes) -> None:
        """Take one expected client's answer for the current phase; raise ProtocolRejection if bad."""

    @abc.abstractmethod
    def close_phase(self) -> PhaseOutcome:
        """End the current phase: all expected answered, or the deadline passed (the rest dropped)."""

    def max_answer_bytes(self) -> int:
        """The largest answer (a Contribution's ``response``) an honest client can send in the
        current phase: anything longer is refused before it is parsed, so a site cannot make the
        server hold more than the round needs. The default is generous and needs only the round's
        tensor specs, from the :class:`RoundContext` the protocol keeps as ``ctx``: 8 bytes per
        coordinate (a float64 or the widest ring word) plus 64 KiB. A protocol whose answers are
        smaller (key adverts, shares) or that keeps its context elsewhere overrides it."""
        ctx = getattr(self, "ctx", None)
        coordinates = sum(s.size for s in ctx.tensor_specs) if isinstance(ctx, RoundContext) else 0
        return coordinates * 8 + 64 * 1024

    def survivors(self) -> int:
        """Clients still able to contribute; the engine aborts early when this falls below quorum."""
        return len(self.expected())

    def blamed(self) -> Mapping[str, str]:
        """Participants this round's protocol found at fault (client id -> why), once it ended: the
        engine leaves them out of the round's retries. Only what the server could verify, or a
        dispute between two clients (both are named), belongs here."""
        return {}


class ClientProtocol(abc.ABC):
    """Client side of one round, holding the client's secrets for that round only."""

    @abc.abstractmethod
    def respond(self, phase: str, request: bytes) -> bytes:
        """Answer the server's request for ``phase``; raise ProtocolRejection if the request is bad."""

    @property
    def blamed(self) -> Mapping[int, str]:
        """Peers (by index among the round's participants) this client left out of its round, and
        why; empty for protocols without peers."""
        return {}


@dataclass(frozen=True)
class ModeInfo:
    """How a mode describes itself in summaries and status."""

    name: str
    server_sees_individual_updates: bool
    phases: tuple[str, ...] = field(default_factory=tuple)


class AggregationMode(abc.ABC):
    """A factory for both sides of one protocol, chosen by ``spec.secureAggregation.mode``."""

    info: ModeInfo

    @abc.abstractmethod
    def server(self, ctx: RoundContext) -> ServerProtocol: ...

    @abc.abstractmethod
    def client(
        self, ctx: RoundContext, identity: PeerIdentity, update: ClientUpdate
    ) -> ClientProtocol: ...

    def required_survivors(self, participants: int, quorum: int) -> int:
        """Least contributors a round may commit with; secure aggregation raises it to its threshold."""
        return quorum


def weighted_mean(pairs: Mapping[str, ClientUpdate]) -> Aggregate:
    """Reference weighted mean of plaintext updates (tests and the plaintext mode agree on it)."""
    if not pairs:
        raise ValueError("no updates to average")
    total = float(sum(u.weight for u in pairs.values()))
    first = next(iter(pairs.values())).delta
    mean = {k: np.zeros_like(v, dtype=np.float64) for k, v in first.items()}
    for u in pairs.values():
        for k, v in u.delta.items():
            mean[k] += v.astype(np.float64) * (u.weight / total)
    return Aggregate(
        mean_delta={k: v.astype(np.float32) for k, v in mean.items()},
        total_weight=total,
        contributors=tuple(sorted(pairs)),
    )
