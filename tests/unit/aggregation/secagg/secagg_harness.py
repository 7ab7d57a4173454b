"""Drive a SecAgg round in memory: identities from a real job CA, dropouts at chosen phases."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedsec.aggregation.base import (
    ClientUpdate,
    NextPhase,
    PeerIdentity,
    PhaseOutcome,
    ProtocolRejection,
    RoundContext,
    TensorSpec,
)
from fedsec.aggregation.secagg import PHASES, SecAggClient, SecAggMode, SecAggServer
from fedsec.crypto.pki import issue_signing, new_ca
from fedsec.crypto.signing import Signer, Verifier

MAX_CLIENTS = 24


@functools.lru_cache(maxsize=1)
def identities() -> dict[str, PeerIdentity]:
    """Real Ed25519 identities certified by one job CA (made once: certificates cost milliseconds)."""
    ca = new_ca("secagg-tests")
    verifier = Verifier(ca.cert_pem)
    out = {}
    for i in range(MAX_CLIENTS):
        name = f"site-{i:02d}"
        mat = issue_signing(ca, name, epoch=1)
        signer = Signer(mat.key_pem, mat.cert_pem)
        out[name] = PeerIdentity(name, signer.cert_der, signer.sign, verifier.verify_peer)
    return out


def names(n: int) -> tuple[str, ...]:
    return tuple(sorted(identities())[:n])


def context(n: int, specs: tuple[TensorSpec, ...], *, round_id: int = 7, seed: bytes = b"s",
            min_survivors: int = 1) -> RoundContext:
    return RoundContext("job-uid", round_id, names(n), min_survivors, specs, seed)


def random_updates(ctx: RoundContext, rng: np.random.Generator, scale: float = 0.5,
                   weights: list[float] | None = None) -> dict[str, ClientUpdate]:
    out = {}
    for i, c in enumerate(ctx.participants):
        delta = {s.name: (rng.standard_normal(s.shape) * scale).astype(np.float32) for s in ctx.tensor_specs}
        w = weights[i] if weights is not None else float(rng.integers(1, 5000))
        out[c] = ClientUpdate(delta, w)
    return out


@dataclass
class Run:
    outcome: PhaseOutcome
    server: SecAggServer
    clients: dict[str, SecAggClient]
    sent: dict[str, list[bytes]]  # client -> answers, in phase order


def run_round(
    mode: SecAggMode,
    ctx: RoundContext,
    updates: Mapping[str, ClientUpdate],
    drop_at: Mapping[str, str] | None = None,
    weight_bound: float | None = None,
) -> Run:
    """Run every phase; a client in ``drop_at`` never answers from that phase on. ``weight_bound``
    replaces the config's public weight bound (both sides derive it from the config)."""
    drop_at = drop_at or {}
    ident = identities()
    if weight_bound is not None:
        mode = SecAggMode(dataclasses.replace(mode.config, weight_bound=weight_bound), mode.verify_advert)
    server = mode.server(ctx)
    clients = {c: mode.client(ctx, ident[c], updates[c]) for c in ctx.participants}
    sent: dict[str, list[bytes]] = {c: [] for c in ctx.participants}
    while True:
        phase = server.phase
        for c in sorted(server.expected()):
            stop = drop_at.get(c)
            if stop is not None and PHASES.index(phase) >= PHASES.index(stop):
                continue
            request = server.request_for(c)
            assert request is not None
            body = clients[c].respond(phase, request)
            sent[c].append(body)
            server.receive(c, body)
        outcome = server.close_phase()
        if not isinstance(outcome, NextPhase):
            return Run(outcome, server, clients, sent)
        assert outcome.phase == server.phase


__all__ = ["ProtocolRejection", "Run", "context", "identities", "names", "random_updates", "run_round"]


def start(mode: SecAggMode, ctx: RoundContext, updates: Mapping[str, ClientUpdate],
          weight_bound: float | None = None) -> tuple[SecAggServer, dict[str, SecAggClient]]:
    ident = identities()
    if weight_bound is not None:
        mode = SecAggMode(dataclasses.replace(mode.config, weight_bound=weight_bound), mode.verify_advert)
    server = mode.server(ctx)
    return server, {c: mode.client(ctx, ident[c], updates[c]) for c in ctx.participants}


def step(server: SecAggServer, clients: Mapping[str, SecAggClient], skip: set[str] = frozenset()) -> PhaseOutcome:
    """Play the current phase honestly for every expected client not in ``skip``, then close it."""
    phase = server.phase
    for c in sorted(server.expected() - set(skip)):
        request = server.request_for(c)
        assert request is not None
        server.receive(c, clients[c].respond(phase, request))
    return server.close_phase()
