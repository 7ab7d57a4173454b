"""Server side of one secure-aggregation round: a state machine that only ever holds masked data.

Phases and survivor sets (U1 ⊇ U2 ⊇ U3 ⊇ U4, indices into the round's participants):

advertise     every participant sends a signed key advert; U1 = those who did, less any client
              whose closed neighbourhood in U1 is smaller than the local threshold (its secrets
              could never be rebuilt, so it is left out before anything depends on it)
share         each client in U1 gets its neighbours' adverts and returns one sealed pair of shares
              per neighbour; U2 = those who answered, pruned the same way
masked-input  each client in U2 gets the sealed shares addressed to it and returns its masked
              vector, which is added to a running sum at once and never kept; U3 = those who
              answered. Fewer than max(min_survivors, threshold) aborts here, before any share is
              revealed.
unmask        each client in U3 is told which neighbours survived (reveal seed shares) and which
              dropped after sharing (reveal mask-key shares); U4 = those who answered. The server
              rebuilds each survivor's seed and each dropped client's mask key from the local
              threshold of shares, checks them against the adverts, strips the masks and divides
              the weighted sum by the summed weight.

What the server stores: adverts (public keys), sealed shares in transit, the running masked sum and
the revealed shares. It never holds an individual update in the clear, and an individual masked
vector only for the moment it is added to the sum.
"""

from __future__ import annotations

import hmac

import numpy as np

from fedsec.aggregation.base import (
    Aborted,
    Aggregate,
    Finished,
    NextPhase,
    PhaseOutcome,
    ProtocolRejection,
    RoundContext,
    ServerProtocol,
)
from fedsec.aggregation.secagg import phases as ph
from fedsec.aggregation.secagg.config import RoundParams, SecAggConfig
from fedsec.aggregation.secagg.graph import graph_seed, neighbour_graph
from fedsec.crypto.secagg import aead, keys, shamir
from fedsec.crypto.secagg.prg import Expander
from fedsec.wire.proto import secagg_pb2 as pb

_DONE = "done"
_SIGNATURE_BYTES = 64
_MAX_CERT_BYTES = 16 * 1024
_SEALED_BYTES = aead.OVERHEAD + ph.SHARE_PLAINTEXT_BYTES


class SecAggServer(ServerProtocol):
    """The aggregator's part in one round; see the module docstring for the phases."""

    def __init__(self, config: SecAggConfig, ctx: RoundContext, weight_bound: float | None = None) -> None:
        n = len(ctx.participants)
        dim = sum(spec.size for spec in ctx.tensor_specs)
        self._ctx = ctx
        self._outcome: PhaseOutcome | None = None
        try:
            self._params = RoundParams.derive(config, n, dim, weight_bound)
        except ValueError as exc:
            # A round the config cannot serve (too few participants, a count threshold that is not a
            # majority of this round) ends at once with the reason, rather than failing the engine;
            # check_consistency catches these before a job starts.
            self._params = RoundParams.derive(SecAggConfig(threshold=1.0), max(n, 2), dim, 1.0)
            self._outcome = Aborted(f"secure aggregation: {exc}")
        self._required = max(ctx.min_survivors, self._params.threshold)
        self._binding = keys.RoundBinding(ctx.job_uid, ctx.round_id)
        self._graph = neighbour_graph(n, self._params.degree, graph_seed(self._binding, ctx.seed))
        self._closed = tuple(nb | {i} for i, nb in enumerate(self._graph))
        self._index = {cid: i for i, cid in enumerate(ctx.participants)}
        self._phase = ph.ADVERTISE
        self._active: set[int] = set(range(n))
        self._answered: set[int] = set()
        self._requests: dict[int, bytes] = {}
        self._adverts: dict[int, pb.SecAggKeyAdvert] = {}
        self._advert_blobs: dict[int, bytes] = {}  # serialized SecAggPeerAdvert, relayed k times
        self._u1: set[int] = set()
        self._u2: set[int] = set()
        self._u3: set[int] = set()
        self._gone: set[int] = set()  # U2 - U3: shared, then sent no masked input
        self._expected: frozenset[str] | None = None  # cached: the engine asks on every poll
        self._sealed: dict[int, dict[int, bytes]] = {}  # recipient -> sender -> SecAggSealedShares
        self._sum = np.zeros(dim + 1, dtype=self._params.fixed.dtype)
        self._seed_points: dict[int, list[tuple[int, int]]] = {}
        self._key_points: dict[int, list[tuple[int, int]]] = {}
        if self._outcome is not None:
            self._phase = _DONE

    @property
    def params(self) -> RoundParams:
        return self._params

    @property
    def phase(self) -> str:
        return self._phase

    def neighbours(self, index: int) -> frozenset[int]:
        return self._graph[index]

    def expected(self) -> frozenset[str]:
        if self._outcome is not None:
            return frozenset()
        if self._expected is None:
            self._expected = frozenset(self._ctx.participants[i] for i in self._active - self._answered)
        return self._expected

    def survivors(self) -> int:
        if isinstance(self._outcome, Finished):
            return len(self._outcome.aggregate.contributors)
        if self._outcome is not None:
            return 0
        # In unmask the contributors are fixed; a client missing there only costs its shares.
        return len(self._u3) if self._phase == ph.UNMASK else len(self._active)

    # --- requests -------------------------------------------------------------------------------

    def request_for(self, client_id: str) -> bytes | None:
        i = self._index.get(client_id)
        if self._outcome is not None or i is None or i not in self._active:
            return None
        cached = self._requests.get(i)
        if cached is None:
            cached = self._requests[i] = self._build_request(i)
        return cached

    def _build_request(self, i: int) -> bytes:
        if self._phase == ph.ADVERTISE:
            p, f = self._params, self._params.fixed
            return pb.SecAggAdvertiseRequest(
                params=pb.SecAggParams(
                    participants=p.participants, degree=p.degree, threshold=p.threshold,
                    local_threshold=p.local_threshold, ring_bits=f.ring_bits, frac_bits=f.frac_bits,
                    clip_range=f.clip_range, weight_bound=p.weight_bound, dimension=p.dimension,
                )
            ).SerializeToString()
        if self._phase == ph.SHARE:  # SecAggShareRequest.peers
            peers = sorted(self._graph[i] & self._u1)
            for v in peers:
                if v not in self._advert_blobs:
                    self._advert_blobs[v] = pb.SecAggPeerAdvert(index=v, advert=self._adverts[v]).SerializeToString()
            return ph.repeated(1, [self._advert_blobs[v] for v in peers])
        if self._phase == ph.MASKED_INPUT:  # SecAggMaskedInputRequest.shares
            inbox = self._sealed.get(i, {})
            return ph.repeated(1, [inbox[v] for v in sorted(inbox) if v in self._u2])
        nb = self._graph[i]
        return pb.SecAggUnmaskRequest(
            survivors=sorted(nb & self._u3), dropped=sorted(nb & self._gone)
        ).SerializeToString()

    # --- answers --------------------------------------------------------------------------------

    def receive(self, client_id: str, body: bytes) -> None:
        i = self._index.get(client_id)
        if i is None:
            raise ProtocolRejection("unknown_client", f"{client_id!r} is not a participant of this round")
        if self._outcome is not None or i not in self._active or i in self._answered:
            raise ProtocolRejection("not_expected", f"no answer from {client_id!r} is expected in {self._phase!r}")
        # Each handler checks everything before it changes any state: a rejected answer leaves no trace.
        {
            ph.ADVERTISE: self._take_advert,
            ph.SHARE: self._take_shares,
            ph.MASKED_INPUT: self._take_masked,
            ph.UNMASK: self._take_unmask,
        }[self._phase](i, body)
        self._answered.add(i)
        self._expected = None

    def _take_advert(self, i: int, body: bytes) -> None:
        a = ph.parse(pb.SecAggKeyAdvert, body, "key advert")
        if len(a.cipher_public_key) != keys.KEY_BYTES or len(a.mask_public_key) != keys.KEY_BYTES:
            raise ProtocolRejection("wrong_size", f"advert public keys must be {keys.KEY_BYTES} bytes")
        if len(a.seed_commitment) != keys.COMMITMENT_BYTES:
            raise ProtocolRejection("wrong_size", f"seed commitment must be {keys.COMMITMENT_BYTES} bytes")
        if len(a.signature) != _SIGNATURE_BYTES:
            raise ProtocolRejection("wrong_size", f"advert signature must be {_SIGNATURE_BYTES} bytes")
        if not 0 < len(a.cert) <= _MAX_CERT_BYTES:
            raise ProtocolRejection("wrong_size", f"advert certificate must be 1..{_MAX_CERT_BYTES} bytes")
        # Signatures are for the peers to check: they trust the job CA, not this server.
        self._adverts[i] = a

    def _take_shares(self, i: int, body: bytes) -> None:
        res = ph.parse(pb.SecAggShareResponse, body, "share response")
        recipients = ph.distinct([s.peer for s in res.shares], "share response")
        want = self._graph[i] & self._u1
        if recipients != want:
            raise ProtocolRejection(
                "unexpected_recipients",
                f"shares must go to exactly the {len(want)} advertised neighbours; "
                f"unexpected {sorted(recipients - want)}, missing {sorted(want - recipients)}",
            )
        for s in res.shares:
            if len(s.ciphertext) != _SEALED_BYTES:
                raise ProtocolRejection(
                    "wrong_size", f"sealed shares for #{s.peer} are {len(s.ciphertext)} bytes, expected {_SEALED_BYTES}"
                )
        for s in res.shares:
            self._sealed.setdefault(s.peer, {})[i] = ph.sealed(i, s.ciphertext)

    def _take_masked(self, i: int, body: bytes) -> None:
        res = ph.parse(pb.SecAggMaskedInputResponse, body, "masked input")
        words = ph.ring_words(res.masked, self._params.fixed.dtype, self._params.dimension + 1)
        if words is None:
            raise ProtocolRejection(
                "wrong_size",
                f"masked input is {len(res.masked)} bytes, expected {self._params.dimension + 1} words of "
                f"{self._params.fixed.ring_bits} bits",
            )
        self._sum += words  # modular: numpy unsigned arithmetic wraps

    def _take_unmask(self, i: int, body: bytes) -> None:
        res = ph.parse(pb.SecAggUnmaskResponse, body, "unmask response")
        seed_owners = ph.distinct([s.owner for s in res.seed_shares], "unmask response (seed shares)")
        key_owners = ph.distinct([s.owner for s in res.mask_key_shares], "unmask response (mask-key shares)")
        nb = self._graph[i]
        want_seed, want_key = (nb & self._u3) | {i}, nb & self._gone
        if seed_owners != want_seed or key_owners != want_key:
            raise ProtocolRejection(
                "unexpected_owners", "revealed shares do not match the survivors and dropped neighbours asked for"
            )
        try:
            seeds = [(s.owner, shamir.decode_share(s.share)) for s in res.seed_shares]
            mask_keys = [(s.owner, shamir.decode_share(s.share)) for s in res.mask_key_shares]
        except ValueError as exc:
            raise ProtocolRejection("wrong_size", f"revealed share: {exc}") from None
        x = i + 1
        for owner, y in seeds:
            self._seed_points.setdefault(owner, []).append((x, y))
        for owner, y in mask_keys:
            self._key_points.setdefault(owner, []).append((x, y))

    # --- phase ends -----------------------------------------------------------------------------

    def close_phase(self) -> PhaseOutcome:
        if self._outcome is not None:
            return self._outcome
        answered = self._answered & self._active
        phase = self._phase
        if phase == ph.ADVERTISE:
            self._u1 = self._enough(answered, "advertised keys")
            return self._advance(ph.SHARE, self._u1) if self._u1 else self._outcome_or_abort()
        if phase == ph.SHARE:
            self._u2 = self._enough(answered, "shared their secrets")
            return self._advance(ph.MASKED_INPUT, self._u2) if self._u2 else self._outcome_or_abort()
        if phase == ph.MASKED_INPUT:
            self._sealed, self._advert_blobs = {}, {}
            self._u3 = set(answered)
            self._gone = self._u2 - self._u3
            if len(self._u3) < self._required:
                return self._abort(
                    f"only {len(self._u3)} masked inputs arrived, fewer than the {self._required} "
                    "required; nothing was unmasked"
                )
            short = [o for o in self._owners_to_rebuild() if len(self._holders(o)) < self._params.local_threshold]
            if short:
                return self._abort(
                    f"{len(short)} clients (first {self._ctx.participants[short[0]]!r}) have fewer than "
                    f"{self._params.local_threshold} surviving share holders; nothing was unmasked"
                )
            return self._advance(ph.UNMASK, self._u3)
        return self._finish()

    def _enough(self, answered: set[int], what: str) -> set[int]:
        """``answered`` less clients whose secrets could not be rebuilt; empty (and aborted) if too few."""
        if len(answered) < self._required:
            self._abort(f"only {len(answered)} of {len(self._ctx.participants)} participants {what}, "
                        f"fewer than the {self._required} required")
            return set()
        alive = set(answered)
        t = self._params.local_threshold
        changed = True
        while changed:  # excluding one client can push a neighbour below the local threshold
            thin = {u for u in alive if len(self._closed[u] & alive) < t}
            alive -= thin
            changed = bool(thin)
        if len(alive) < self._required:
            self._abort(
                f"only {len(alive)} participants {what} with at least {t} live neighbours each, "
                f"fewer than the {self._required} required"
            )
            return set()
        return alive

    def _owners_to_rebuild(self) -> list[int]:
        dropped = [v for v in sorted(self._gone) if self._graph[v] & self._u3]
        return sorted(self._u3) + dropped

    def _holders(self, owner: int) -> set[int]:
        holders = self._closed[owner] & self._u3
        return holders if owner in self._u3 else holders - {owner}

    def _advance(self, phase: str, active: set[int]) -> NextPhase:
        self._phase = phase
        self._active = set(active)
        self._answered = set()
        self._expected = None
        self._requests = {}
        return NextPhase(phase)

    def _abort(self, reason: str) -> Aborted:
        self._outcome = Aborted(f"secure aggregation: {reason}")
        self._phase = _DONE
        self._sum = np.zeros(0, dtype=self._sum.dtype)
        self._sealed, self._seed_points, self._key_points = {}, {}, {}
        return self._outcome

    def _outcome_or_abort(self) -> PhaseOutcome:
        assert self._outcome is not None
        return self._outcome

    def _finish(self) -> PhaseOutcome:
        p, fixed, t = self._params, self._params.fixed, self._params.local_threshold
        count = p.dimension + 1
        dropped = [v for v in self._owners_to_rebuild() if v not in self._u3]
        rebuilt: dict[int, bytes] = {}
        for owner in sorted(self._u3):
            pts = self._seed_points.get(owner, [])
            if len(pts) < t:
                return self._abort(
                    f"only {len(pts)} of {t} seed shares of {self._ctx.participants[owner]!r} arrived"
                )
            seed = self._combine(sorted(pts)[:t])  # same x sets share cached Lagrange coefficients
            if seed is None or not keys.commitment_matches(
                self._adverts[owner].seed_commitment, self._binding, owner, seed
            ):
                return self._abort(f"seed shares of {self._ctx.participants[owner]!r} are corrupted")
            rebuilt[owner] = seed
        lost: dict[int, keys.KeyPair] = {}
        for owner in dropped:
            pts = self._key_points.get(owner, [])
            if len(pts) < t:
                return self._abort(
                    f"only {len(pts)} of {t} mask-key shares of {self._ctx.participants[owner]!r} arrived"
                )
            raw = self._combine(sorted(pts)[:t])
            pair = keys.KeyPair.from_private_bytes(raw) if raw is not None else None
            if pair is None or not hmac.compare_digest(pair.public, self._adverts[owner].mask_public_key):
                return self._abort(f"mask-key shares of {self._ctx.participants[owner]!r} are corrupted")
            lost[owner] = pair
        total = self._sum
        mask = Expander(count, fixed.dtype)
        for seed in rebuilt.values():
            total -= mask(seed)
        for v, pair in lost.items():
            for w in sorted(self._graph[v] & self._u3):
                seed = pair.agree(
                    self._adverts[w].mask_public_key, keys.pair_info(ph.MASK_SEED, self._binding, v, w)
                )
                # w added this mask if it had the lower index, subtracted it otherwise: undo that.
                if w < v:
                    total -= mask(seed)
                else:
                    total += mask(seed)
        weight_units = int(fixed.to_signed(total[p.dimension:])[0])
        if weight_units <= 0:
            return self._abort("the survivors' total weight is zero")
        mean = fixed.decode_values(total[: p.dimension]) * (fixed.unit / weight_units)
        tensors: dict[str, np.ndarray] = {}
        offset = 0
        for spec in self._ctx.tensor_specs:
            tensors[spec.name] = mean[offset : offset + spec.size].astype(np.float32).reshape(spec.shape)
            offset += spec.size
        aggregate = Aggregate(
            mean_delta=tensors,
            total_weight=weight_units / fixed.unit * p.weight_bound,
            contributors=tuple(self._ctx.participants[i] for i in sorted(self._u3)),
        )
        self._outcome = Finished(aggregate)
        self._phase = _DONE
        self._sum = np.zeros(0, dtype=self._sum.dtype)
        self._seed_points, self._key_points = {}, {}
        return self._outcome

    @staticmethod
    def _combine(points: list[tuple[int, int]]) -> bytes | None:
        try:
            return shamir.combine(points)
        except ValueError:
            return None

    def __repr__(self) -> str:
        return f"SecAggServer(round={self._ctx.round_id}, phase={self._phase!r})"
