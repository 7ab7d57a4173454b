"""Plaintext FedAvg: one phase, ``update``, in which each client sends its delta in the clear.

The server folds each update into running weighted sums as it arrives (streaming aggregation), so
its memory is one model's worth whatever the number of clients. It sees every individual update:
use it when the aggregator is trusted, or for baselines. ``secagg`` is the default.
"""

from __future__ import annotations

import math

import numpy as np

from fedsec.aggregation.base import (
    Aborted,
    Aggregate,
    AggregationMode,
    ClientProtocol,
    ClientUpdate,
    Finished,
    ModeInfo,
    PeerIdentity,
    PhaseOutcome,
    ProtocolRejection,
    RoundContext,
    ServerProtocol,
)
from fedsec.wire import tensors as wire_tensors
from fedsec.wire.proto import round_pb2 as pb

PHASE = "update"
MAX_WEIGHT = 1e12  # a sample count; anything larger is a corrupt or hostile claim


class PlaintextServer(ServerProtocol):
    def __init__(self, ctx: RoundContext) -> None:
        self.ctx = ctx
        self._waiting = set(ctx.participants)
        self._sums = {s.name: np.zeros(s.shape, dtype=np.float64) for s in ctx.tensor_specs}
        self._total_weight = 0.0
        self._contributors: list[str] = []
        self._closed = False

    @property
    def phase(self) -> str:
        return PHASE

    def expected(self) -> frozenset[str]:
        return frozenset(self._waiting)

    def request_for(self, client_id: str) -> bytes | None:
        return b"" if client_id in self._waiting else None

    def receive(self, client_id: str, body: bytes) -> None:
        msg = pb.PlainUpdate()
        try:
            msg.ParseFromString(body)
        except Exception:  # protobuf raises DecodeError and, on some inputs, RuntimeWarning-free ValueErrors
            raise ProtocolRejection("invalid-update", "update does not parse as PlainUpdate") from None
        if not (math.isfinite(msg.weight) and 0 < msg.weight <= MAX_WEIGHT):
            raise ProtocolRejection("invalid-update", f"weight must be in (0, {MAX_WEIGHT:g}], got {msg.weight}")
        try:
            delta = wire_tensors.decode(msg.delta, self.ctx.tensor_specs)
        except wire_tensors.TensorPayloadError as exc:
            raise ProtocolRejection("invalid-update", str(exc)) from None
        for name, arr in delta.items():
            self._sums[name] += arr.astype(np.float64) * msg.weight
        self._total_weight += msg.weight
        self._contributors.append(client_id)
        self._waiting.discard(client_id)

    def max_answer_bytes(self) -> int:
        # A PlainUpdate is the delta's safetensors (its size is exact for these specs) and a weight;
        # the slack covers the protobuf framing many times over.
        return wire_tensors.encoded_size(self.ctx.tensor_specs) + 64 * 1024

    def close_phase(self) -> PhaseOutcome:
        self._closed = True
        self._waiting.clear()
        if len(self._contributors) < self.ctx.min_survivors:
            return Aborted(
                f"{len(self._contributors)} of {len(self.ctx.participants)} participants sent an update; "
                f"at least {self.ctx.min_survivors} are needed"
            )
        mean = {k: (v / self._total_weight).astype(np.float32) for k, v in self._sums.items()}
        return Finished(Aggregate(mean, self._total_weight, tuple(sorted(self._contributors))))

    def survivors(self) -> int:
        return len(self._contributors) + len(self._waiting)


class PlaintextClient(ClientProtocol):
    def __init__(self, update: ClientUpdate) -> None:
        self.update = update

    def respond(self, phase: str, request: bytes) -> bytes:
        if phase != PHASE:
            raise ProtocolRejection("wrong-phase", f"plaintext mode has no phase {phase!r}")
        return pb.PlainUpdate(
            delta=wire_tensors.encode(self.update.delta), weight=float(self.update.weight)
        ).SerializeToString()


class PlaintextMode(AggregationMode):
    info = ModeInfo(name="none", server_sees_individual_updates=True, phases=(PHASE,))

    def server(self, ctx: RoundContext) -> ServerProtocol:
        return PlaintextServer(ctx)

    def client(self, ctx: RoundContext, identity: PeerIdentity, update: ClientUpdate) -> ClientProtocol:
        return PlaintextClient(update)
