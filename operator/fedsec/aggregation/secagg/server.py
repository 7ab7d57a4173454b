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
consistency   each client in U3 is shown U3 and returns a MAC of it for each surviving neighbour
              (Bonawitz et al.'s consistency check, keyed by the pairs' agreed keys); Uc = those
              who answered. The server relays the MACs; it cannot make them.
unmask        each client in Uc is told which neighbours survived (reveal seed shares) and which
              dropped after sharing (reveal mask-key shares), with its neighbours' MACs; U4 = those
              who answered. The server rebuilds each survivor's seed and each dropped client's mask
              key from the local threshold of shares, checks them against the adverts, strips the
              masks and divides the weighted sum by the summed weight.

Faults. What anyone can check on a public message — key sizes, low-order keys, an advert's
signature (when the mode was given the job CA's verifier) — the server checks itself: the culprit's
answer is refused, it leaves the round, and it is blamed (``blamed()``), so the engine leaves it out
of the round's retries. What only a client can see — shares that do not open — a client reports;
the server leaves that pair out (the pairwise masks still cancel: they need no shares) and, since it
cannot tell who lies, blames a client accused by two or more others alone and both ends of a lone
accusation. A client that accuses an advert the server verified
is the one blamed. Every error in the last step aborts the round with a reason; nothing escapes.

What the server stores: adverts (public keys), sealed shares in transit, the running masked sum and
the revealed shares. It never holds an individual update in the clear, and an individual masked
vector only for the moment it is added to the sum.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence

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


AdvertVerifier = Callable[[str, bytes, bytes, bytes], bool]
"""(client id, DER certificate, signed bytes, signature) -> whether the job CA's identity signed it."""


class SecAggServer(ServerProtocol):
    """The aggregator's part in one round; see the module docstring for the phases."""

    def __init__(self, config: SecAggConfig, ctx: RoundContext, verify_advert: AdvertVerifier | None = None) -> None:
        n = len(ctx.participants)
        dim = sum(spec.size for spec in ctx.tensor_specs)
        self._ctx = ctx
        self._verify = verify_advert
        self._outcome: PhaseOutcome | None = None
        try:
            self._params = RoundParams.derive(config, n, dim)
        except ValueError as exc:
            # A round the config cannot serve (too few participants, a count threshold that is not a
            # majority of this round) ends at once with the reason, rather than failing the engine;
            # check_consistency catches these before a job starts.
            self._params = RoundParams.derive(SecAggConfig(threshold=1.0), max(n, 2), dim)
            self._outcome = Aborted(f"secure aggregation: {exc}")
        self._required = max(ctx.min_survivors, self._params.threshold)
        self._binding = keys.RoundBinding(ctx.job_uid, ctx.round_id, ctx.binding)
        self._graph = neighbour_graph(n, self._params.degree, graph_seed(self._binding, ctx.seed))
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
        self._uc: set[int] = set()  # confirmed U3 in "consistency": the clients asked to unmask
        self._gone: set[int] = set()  # U2 - U3: shared, then sent no masked input
        self._expected: frozenset[str] | None = None  # cached: the engine asks on every poll
        self._sealed: dict[int, dict[int, bytes]] = {}  # recipient -> sender -> SecAggSealedShares
        self._confirms: dict[int, dict[int, bytes]] = {}  # recipient -> sender -> SecAggConfirmation
        self._removed: dict[int, set[int]] = {}  # pairs a client left out: client -> peers
        self._not_held: set[tuple[int, int]] = set()  # (holder, owner): holder could not open owner's shares
        self._blamed: dict[int, str] = {}  # faults the server verified itself
        self._accusations: dict[int, dict[int, str]] = {}  # accused -> accuser -> why (shares that did not open)
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
        """Open neighbourhood of ``index`` in this round: the graph, less the pairs left out."""
        nb = self._graph[index]
        cut = self._removed.get(index)
        return nb - cut if cut else nb

    def _closed(self, index: int) -> frozenset[int]:
        return self.neighbours(index) | {index}

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
        # From consistency on the contributors are fixed; a client missing there only costs its shares.
        return len(self._u3) if self._phase in (ph.CONSISTENCY, ph.UNMASK) else len(self._active)

    def blamed(self) -> dict[str, str]:
        """Verified faults, and disputes: a client accused by two or more others is blamed alone;
        one accusation the server cannot check blames both ends (a liar pays with its own place
        for each site it pushes out, and it takes two colluders to push out an honest site)."""
        out = dict(self._blamed)
        names = self._ctx.participants
        for accused, by in self._accusations.items():
            what = ", ".join(sorted(set(by.values())))
            out.setdefault(accused, f"{what} reported by {', '.join(repr(names[a]) for a in sorted(by))}")
            if len(by) == 1:
                (accuser,) = by
                out.setdefault(accuser, f"reported {what} of {names[accused]!r}, alone")
        return {names[i]: why for i, why in sorted(out.items())}

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
            nb = self.neighbours(i)
            return ph.repeated(1, [inbox[v] for v in sorted(inbox) if v in self._u2 and v in nb])
        if self._phase == ph.CONSISTENCY:  # the same survivor set for everyone
            return pb.SecAggConsistencyRequest(survivors=sorted(self._u3)).SerializeToString()
        nb = self.neighbours(i)
        inbox = self._confirms.get(i, {})
        head = pb.SecAggUnmaskRequest(survivors=sorted(nb & self._u3), dropped=sorted(nb & self._gone))
        return head.SerializeToString() + ph.repeated(3, [inbox[w] for w in sorted(inbox) if w in self._uc])

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
            ph.CONSISTENCY: self._take_consistency,
            ph.UNMASK: self._take_unmask,
        }[self._phase](i, body)
        self._answered.add(i)
        self._expected = None

    def _fault(self, i: int, reason: str, detail: str) -> ProtocolRejection:
        """A fault anyone can verify on ``i``'s own message: it leaves the round, blamed."""
        self._blamed[i] = reason
        self._active.discard(i)
        self._expected = None
        return ProtocolRejection(reason, detail)

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
        if not (keys.valid_public_key(a.cipher_public_key) and keys.valid_public_key(a.mask_public_key)):
            # Every agreement with a low-order point fails: each neighbour would lose its round.
            raise self._fault(i, "bad_key", "advert holds an invalid or low-order X25519 key")
        if self._verify is not None:
            cid = self._ctx.participants[i]
            signed = keys.advert_message(self._binding, cid, a.cipher_public_key, a.mask_public_key, a.seed_commitment)
            if not self._verify(cid, a.cert, signed, a.signature):
                raise self._fault(i, "bad_signature", "advert is not signed by the sender's certified identity")
        self._adverts[i] = a

    def _blames(self, i: int, entries: Sequence[pb.SecAggBlame], allowed: frozenset[int], what: str,
                reasons: frozenset[str]) -> dict[int, str]:
        out: dict[int, str] = {}
        for b in entries:
            if b.peer not in allowed or b.peer in out or b.reason not in reasons:
                raise ProtocolRejection("malformed", f"{what}: blames #{b.peer} ({b.reason[:40]!r}), "
                                        "not a neighbour it could blame for that, or twice")
            out[b.peer] = b.reason
        return out

    def _take_shares(self, i: int, body: bytes) -> None:
        res = ph.parse(pb.SecAggShareResponse, body, "share response")
        recipients = ph.distinct([s.peer for s in res.shares], "share response")
        want = self._graph[i] & self._u1
        blamed = self._blames(i, res.blamed, want, "share response", frozenset({"bad_signature", "bad_key"}))
        want_shares = want - blamed.keys()
        if recipients != want_shares:
            raise ProtocolRejection(
                "unexpected_recipients",
                f"shares must go to exactly the {len(want_shares)} advertised neighbours it did not blame; "
                f"unexpected {sorted(recipients - want_shares)}, missing {sorted(want_shares - recipients)}",
            )
        for s in res.shares:
            if len(s.ciphertext) != _SEALED_BYTES:
                raise ProtocolRejection(
                    "wrong_size", f"sealed shares for #{s.peer} are {len(s.ciphertext)} bytes, expected {_SEALED_BYTES}"
                )
        for s in res.shares:
            self._sealed.setdefault(s.peer, {})[i] = ph.sealed(i, s.ciphertext)
        for v, why in blamed.items():
            self._cut(i, v)
            if self._verify is not None:
                # This server verified v's advert (key and signature) before relaying it.
                self._blamed[i] = f"accused #{v}'s verified advert ({why})"
            else:
                self._dispute(i, v, why)

    def _cut(self, a: int, b: int) -> None:
        self._removed.setdefault(a, set()).add(b)
        self._removed.setdefault(b, set()).add(a)

    def _dispute(self, accuser: int, accused: int, why: str) -> None:
        """One client's word against another's, settled in :meth:`blamed`."""
        self._accusations.setdefault(accused, {})[accuser] = why

    def _take_masked(self, i: int, body: bytes) -> None:
        res = ph.parse(pb.SecAggMaskedInputResponse, body, "masked input")
        words = ph.ring_words(res.masked, self._params.fixed.dtype, self._params.dimension + 1)
        if words is None:
            raise ProtocolRejection(
                "wrong_size",
                f"masked input is {len(res.masked)} bytes, expected {self._params.dimension + 1} words of "
                f"{self._params.fixed.ring_bits} bits",
            )
        senders = frozenset(self.neighbours(i) & self._u2)
        blamed = self._blames(i, res.blamed, senders, "masked input", frozenset({"bad_share"}))
        self._sum += words  # modular: numpy unsigned arithmetic wraps
        for v, why in blamed.items():
            self._not_held.add((i, v))
            self._dispute(i, v, why)

    def _take_consistency(self, i: int, body: bytes) -> None:
        res = ph.parse(pb.SecAggConsistencyResponse, body, "consistency response")
        peers = ph.distinct([c.peer for c in res.confirmations], "consistency response")
        want = self.neighbours(i) & self._u3
        if peers != want:
            raise ProtocolRejection(
                "unexpected_recipients",
                f"confirmations must go to exactly the {len(want)} surviving neighbours; "
                f"unexpected {sorted(peers - want)}, missing {sorted(want - peers)}",
            )
        if any(len(c.mac) != ph.MAC_BYTES for c in res.confirmations):
            raise ProtocolRejection("wrong_size", f"a confirmation is not {ph.MAC_BYTES} bytes")
        for c in res.confirmations:
            self._confirms.setdefault(c.peer, {})[i] = pb.SecAggConfirmation(peer=i, mac=c.mac).SerializeToString()

    def _take_unmask(self, i: int, body: bytes) -> None:
        res = ph.parse(pb.SecAggUnmaskResponse, body, "unmask response")
        seed_owners = ph.distinct([s.owner for s in res.seed_shares], "unmask response (seed shares)")
        key_owners = ph.distinct([s.owner for s in res.mask_key_shares], "unmask response (mask-key shares)")
        nb = self.neighbours(i)
        unheld = {o for h, o in self._not_held if h == i}
        want_seed, want_key = ((nb & self._u3) | {i}) - unheld, (nb & self._gone) - unheld
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
            self._u1 = self._enough(answered, "advertised valid keys")
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
            # At most U3 will confirm: abort now if even that is not enough to rebuild every secret.
            return self._unless_short(set(self._u3)) or self._advance(ph.CONSISTENCY, self._u3)
        if phase == ph.CONSISTENCY:
            return self._unless_short(set(answered)) or self._advance(ph.UNMASK, self._uc)
        try:
            return self._finish()
        except (ValueError, KeyError, ArithmeticError) as exc:
            # Shares that combine into an invalid key, a point the commitments did not catch: the
            # round is lost, the server is not.
            return self._abort(f"unmasking failed ({type(exc).__name__}: {exc}); nothing was released")

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
            thin = {u for u in alive if len(self._closed(u) & alive) < t}
            alive -= thin
            changed = bool(thin)
        if len(alive) < self._required:
            self._abort(
                f"only {len(alive)} participants {what} with at least {t} live neighbours each, "
                f"fewer than the {self._required} required"
            )
            return set()
        return alive

    def _unless_short(self, unmaskers: set[int]) -> Aborted | None:
        """Take ``unmaskers`` as the clients that will reveal shares; abort (before anything is
        revealed) if some secret the sum needs would then have fewer than the local threshold."""
        self._uc = unmaskers
        t = self._params.local_threshold
        short = [o for o in self._owners_to_rebuild() if len(self._holders(o)) < t]
        if not short:
            return None
        return self._abort(f"{len(short)} clients (first {self._ctx.participants[short[0]]!r}) have fewer than "
                           f"{t} share holders left; nothing was unmasked")

    def _owners_to_rebuild(self) -> list[int]:
        dropped = [v for v in sorted(self._gone) if self.neighbours(v) & self._u3]
        return sorted(self._u3) + dropped

    def _holders(self, owner: int) -> set[int]:
        """Clients that will reveal a share of ``owner``'s secrets in unmask."""
        holders = {h for h in self._closed(owner) & self._uc if (h, owner) not in self._not_held}
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
        self._sealed, self._seed_points, self._key_points, self._confirms = {}, {}, {}, {}
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
            pair = keys.KeyPair.from_private_bytes(raw) if raw is not None and len(raw) == keys.KEY_BYTES else None
            if pair is None or not hmac.compare_digest(pair.public, self._adverts[owner].mask_public_key):
                return self._abort(f"mask-key shares of {self._ctx.participants[owner]!r} are corrupted")
            lost[owner] = pair
        total = self._sum
        mask = Expander(count, fixed.dtype)
        for seed in rebuilt.values():
            total -= mask(seed)
        for v, pair in lost.items():
            for w in sorted(self.neighbours(v) & self._u3):
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
