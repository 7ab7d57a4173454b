"""Client side of one secure-aggregation round: a state machine that holds the client's secrets.

advertise      -> fresh cipher and mask key pairs, a self-mask seed b, a signed advert
share          -> verify the neighbours' adverts; Shamir-share b and the mask private key among the
                  closed neighbourhood; seal each neighbour's pair of shares under the cipher key
masked-input   -> open the shares neighbours sent; send y = Q(w * x) + PRG(b) +- PRG(s_uv) ...
consistency    -> the server shows the survivor set U3; confirm it to each surviving neighbour with
                  a MAC under the pair's agreed key
unmask         -> check enough neighbours confirmed the same U3; reveal, for each neighbour, the
                  share of b (it survived) or of its mask key (it dropped), never both, and only once

Every check the client can make without trusting the server is made here: the parameters (weight
bound included) match its own derivation from the job spec, the neighbours are those of the public
graph, every advert carries a valid identity signature and valid keys, every ciphertext
authenticates, enough neighbours take part, the survivor set is confirmed by enough neighbours,
and the unmask request names each neighbour in exactly one role, as that set says.

Two kinds of failure. A *peer's* fault — an advert that does not verify, a low-order key, shares
that do not open — leaves that peer out of this client's round (named in the answer's ``blamed``
list, so the server can leave the pair out and the engine can exclude the culprit from the retry);
the round goes on as long as the local threshold holds. A *server's* fault — parameters, peers or
survivor sets that contradict the client's own derivation — is a refusal (ProtocolRejection): the
client forgets its secrets and answers nothing more this round.
"""

from __future__ import annotations

import hmac
import math
import os

import numpy as np

from fedsec.aggregation.base import ClientProtocol, ClientUpdate, PeerIdentity, ProtocolRejection, RoundContext
from fedsec.aggregation.secagg import phases as ph
from fedsec.aggregation.secagg.config import RoundParams, SecAggConfig
from fedsec.aggregation.secagg.graph import graph_seed, neighbours_of
from fedsec.crypto.secagg import aead, keys, shamir
from fedsec.crypto.secagg.prg import Expander
from fedsec.wire.proto import secagg_pb2 as pb

_DONE = "done"
_FAILED = "failed"


def flatten(update: ClientUpdate, ctx: RoundContext) -> np.ndarray:
    """The update's delta as one float32 vector in the order of ``ctx.tensor_specs``."""
    parts = []
    for spec in ctx.tensor_specs:
        arr = update.delta.get(spec.name)
        if arr is None:
            raise ValueError(f"update lacks tensor {spec.name!r}")
        if tuple(arr.shape) != tuple(spec.shape):
            raise ValueError(f"tensor {spec.name!r}: shape {tuple(arr.shape)}, expected {spec.shape}")
        parts.append(np.asarray(arr, dtype=np.float32).ravel())
    extra = sorted(set(update.delta) - {s.name for s in ctx.tensor_specs})
    if extra:
        raise ValueError(f"update has tensors the model does not declare: {extra}")
    # One tensor: a view, no copy (the client holds its update until it has masked it).
    flat = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if not np.isfinite(flat).all():
        raise ValueError("update contains NaN or infinity")
    return flat


class SecAggClient(ClientProtocol):
    """One client's part in one round. Build it after local training; drop it when the round ends."""

    def __init__(
        self,
        config: SecAggConfig,
        ctx: RoundContext,
        identity: PeerIdentity,
        update: ClientUpdate,
    ) -> None:
        if identity.client_id not in ctx.participants:
            raise ValueError(f"client {identity.client_id!r} is not a participant of round {ctx.round_id}")
        if not (math.isfinite(update.weight) and update.weight >= 0):
            raise ValueError(f"update weight must be a finite non-negative number, got {update.weight}")
        self._ctx = ctx
        self._id = identity
        self._me = ctx.participants.index(identity.client_id)
        self._x = self._me + 1  # Shamir x coordinate: public, never zero
        self._binding = keys.RoundBinding(ctx.job_uid, ctx.round_id, ctx.binding)
        self._delta: np.ndarray | None = flatten(update, ctx)
        self._weight = float(update.weight)
        self._params = RoundParams.derive(config, len(ctx.participants), int(self._delta.size))
        self._neighbours = neighbours_of(
            self._me, len(ctx.participants), self._params.degree, graph_seed(self._binding, ctx.seed)
        )
        self._state = ph.ADVERTISE
        self.clipped = 0
        """Coordinates of the delta that ``clip_range`` cut (set once the masked input is built)."""
        # Round secrets, dropped as soon as they are no longer needed.
        self._cipher: keys.KeyPair | None = None
        self._mask: keys.KeyPair | None = None
        self._seed: bytes | None = None
        self._weight_bound = 0.0
        self._share_keys: dict[int, bytes] = {}
        self._held: dict[int, tuple[int, int]] = {}  # owner -> (seed share, mask-key share) at my x
        self._own: tuple[int, int] | None = None
        self._senders: set[int] = set()
        self._mask_seeds: dict[int, bytes] = {}  # peer -> pairwise mask seed s_uv (agreed at share)
        self._confirm_keys: dict[int, bytes] = {}  # peer -> the pair's consistency MAC key
        self._survivors: frozenset[int] | None = None  # U3 as the server showed it
        self._digest = b""
        self._blamed: dict[int, str] = {}  # peers left out of this round, and why (reported to the server)

    @property
    def state(self) -> str:
        """The phase this client expects next, ``done`` or ``failed``."""
        return self._state

    @property
    def neighbours(self) -> frozenset[int]:
        return self._neighbours

    @property
    def blamed(self) -> dict[int, str]:
        return dict(self._blamed)

    def respond(self, phase: str, request: bytes) -> bytes:
        if self._state in (_DONE, _FAILED):
            raise ProtocolRejection(
                "round_over", f"client already {'finished' if self._state == _DONE else 'refused'} this round"
            )
        if phase != self._state:
            raise ProtocolRejection("unexpected_phase", f"expected phase {self._state!r}, got {phase!r}")
        handler = {
            ph.ADVERTISE: self._advertise,
            ph.SHARE: self._share,
            ph.MASKED_INPUT: self._masked_input,
            ph.CONSISTENCY: self._consistency,
            ph.UNMASK: self._unmask,
        }[phase]
        try:
            return handler(request)
        except ProtocolRejection:
            self._forget()
            self._state = _FAILED
            raise

    # --- phases ---------------------------------------------------------------------------------

    def _advertise(self, body: bytes) -> bytes:
        req = ph.parse(pb.SecAggAdvertiseRequest, body, "advertise request")
        p, mine = req.params, self._params
        ours = (mine.participants, mine.degree, mine.threshold, mine.local_threshold,
                mine.fixed.ring_bits, mine.fixed.frac_bits, mine.fixed.clip_range, mine.dimension)
        theirs = (p.participants, p.degree, p.threshold, p.local_threshold, p.ring_bits, p.frac_bits,
                  p.clip_range, p.dimension)
        if ours != theirs:
            raise ProtocolRejection(
                "params_mismatch",
                f"server's round parameters {theirs} differ from this client's {ours} "
                "(participants, degree, threshold, local threshold, ring bits, quantization bits, "
                "clip range, dimension)",
            )
        if p.weight_bound != mine.weight_bound:
            # Chosen per client, a bound could round every update but a victim's to zero.
            raise ProtocolRejection(
                "params_mismatch", f"server's weight bound {p.weight_bound!r} is not the plan's {mine.weight_bound!r}"
            )
        self._weight_bound = mine.weight_bound
        self._cipher, self._mask = keys.KeyPair(), keys.KeyPair()
        self._seed = os.urandom(shamir.SECRET_BYTES)
        commitment = keys.seed_commitment(self._binding, self._me, self._seed)
        signed = keys.advert_message(
            self._binding, self._id.client_id, self._cipher.public, self._mask.public, commitment
        )
        self._state = ph.SHARE
        return pb.SecAggKeyAdvert(
            cipher_public_key=self._cipher.public,
            mask_public_key=self._mask.public,
            seed_commitment=commitment,
            signature=self._id.sign(signed),
            cert=self._id.cert,
        ).SerializeToString()

    def _share(self, body: bytes) -> bytes:
        assert self._cipher is not None and self._mask is not None and self._seed is not None
        req = ph.parse(pb.SecAggShareRequest, body, "share request")
        peers: dict[int, pb.SecAggKeyAdvert] = {}
        seen: set[int] = set()
        for entry in req.peers:
            v = entry.index
            if v not in self._neighbours:
                raise ProtocolRejection("unknown_peer", f"participant #{v} is not a neighbour of this client")
            if v in seen:
                raise ProtocolRejection("malformed", f"participant #{v} advertised twice")
            seen.add(v)
            a = entry.advert
            peer_id = self._ctx.participants[v]
            if len(a.seed_commitment) != keys.COMMITMENT_BYTES or not (
                    keys.valid_public_key(a.cipher_public_key) and keys.valid_public_key(a.mask_public_key)):
                self._blamed[v] = "bad_key"
                continue
            signed = keys.advert_message(
                self._binding, peer_id, a.cipher_public_key, a.mask_public_key, a.seed_commitment
            )
            if not self._id.verify(peer_id, a.cert, signed, a.signature):
                # A forged or substituted advert: never share with (or mask against) that key.
                self._blamed[v] = "bad_signature"
                continue
            try:
                share_key, confirm_key = self._cipher.agree_many(
                    a.cipher_public_key,
                    (keys.pair_info(ph.SHARE_KEY, self._binding, self._me, v),
                     keys.pair_info(ph.CONFIRM_KEY, self._binding, self._me, v)),
                )
                mask_seed = self._mask.agree(a.mask_public_key, keys.pair_info(ph.MASK_SEED, self._binding, self._me, v))
            except ValueError:  # a key no agreement can use, that the small-order table missed
                self._blamed[v] = "bad_key"
                continue
            self._share_keys[v], self._confirm_keys[v], self._mask_seeds[v] = share_key, confirm_key, mask_seed
            peers[v] = a
        if len(peers) + 1 < self._params.local_threshold:
            raise ProtocolRejection(
                "below_threshold",
                f"only {len(peers)} neighbours advertised valid keys; {self._params.local_threshold - 1} needed",
            )
        holders = sorted(peers.keys() | {self._me})
        xs = [h + 1 for h in holders]
        seed_ys = shamir.split(self._seed, xs, self._params.local_threshold)
        key_ys = shamir.split(self._mask.private_bytes(), xs, self._params.local_threshold)
        out = pb.SecAggShareResponse()
        for h, sy, ky in zip(holders, seed_ys, key_ys):
            if h == self._me:
                self._own = (sy, ky)
                continue
            plaintext = shamir.encode_share(sy) + shamir.encode_share(ky)
            out.shares.add(peer=h, ciphertext=aead.seal(self._share_keys[h], self._binding, self._me, h, plaintext))
        for v, why in sorted(self._blamed.items()):
            out.blamed.add(peer=v, reason=why)
        self._cipher = None  # its only uses were the share and confirmation keys, kept per peer
        self._mask = None  # shared above; the pairwise seeds it agreed are kept per peer
        self._state = ph.MASKED_INPUT
        return out.SerializeToString()

    def _masked_input(self, body: bytes) -> bytes:
        assert self._seed is not None and self._delta is not None
        req = ph.parse(pb.SecAggMaskedInputRequest, body, "masked-input request")
        senders = ph.distinct([s.peer for s in req.shares], "masked-input request")
        unknown = senders - self._share_keys.keys()
        if unknown:
            raise ProtocolRejection(
                "unknown_peer", f"shares from participants {sorted(unknown)} this client never exchanged keys with"
            )
        if len(senders) + 1 < self._params.local_threshold:
            raise ProtocolRejection(
                "below_threshold",
                f"only {len(senders)} neighbours sent shares; {self._params.local_threshold - 1} needed",
            )
        held: dict[int, tuple[int, int]] = {}
        bad_shares: list[int] = []
        for s in req.shares:
            try:
                plain = aead.open_(self._share_keys[s.peer], self._binding, s.peer, self._me, s.ciphertext)
                if len(plain) != ph.SHARE_PLAINTEXT_BYTES:
                    raise ValueError(f"{len(plain)} bytes of shares, expected {ph.SHARE_PLAINTEXT_BYTES}")
                held[s.peer] = (
                    shamir.decode_share(plain[: shamir.SHARE_BYTES]),
                    shamir.decode_share(plain[shamir.SHARE_BYTES:]),
                )
            except ValueError:
                # The peer still masks with us (our pairwise seed needs no shares): we mask with it
                # too and only cannot help rebuild its secrets. Say so, and go on.
                bad_shares.append(s.peer)
                self._blamed[s.peer] = "bad_share"
        params = self._params
        fixed = params.fixed
        d = params.dimension
        vec = np.empty(d + 1, dtype=fixed.dtype)
        factor = min(self._weight, self._weight_bound) / self._weight_bound
        self.clipped = fixed.encode(self._delta, factor, vec[:d])
        vec[d] = fixed.encode_scalar(factor)
        mask = Expander(d + 1, fixed.dtype)
        vec += mask(self._seed)
        for v in sorted(senders):
            # The lower index adds, the higher subtracts: the pair cancels in the sum.
            if self._me < v:
                vec += mask(self._mask_seeds[v])
            else:
                vec -= mask(self._mask_seeds[v])
        self._held, self._senders = held, senders
        # Only shares and confirmation keys are needed from here on.
        self._delta = None
        self._seed = None
        self._mask_seeds = {}
        self._share_keys = {}
        self._state = ph.CONSISTENCY
        out = pb.SecAggMaskedInputResponse(masked=ph.ring_bytes(vec))
        for v in bad_shares:
            out.blamed.add(peer=v, reason="bad_share")
        return out.SerializeToString()

    def _consistency(self, body: bytes) -> bytes:
        req = ph.parse(pb.SecAggConsistencyRequest, body, "consistency request")
        u3 = ph.distinct(list(req.survivors), "consistency request")
        n = len(self._ctx.participants)
        if any(i >= n for i in u3):
            raise ProtocolRejection("unknown_peer", "the survivor set names participants the round does not have")
        if self._me not in u3:
            raise ProtocolRejection("inconsistent", "the survivor set leaves out this client, whose input was sent")
        if len(u3) < self._ctx.min_survivors:
            raise ProtocolRejection(
                "below_threshold", f"{len(u3)} survivors; the round commits only with {self._ctx.min_survivors}"
            )
        surviving = (u3 - {self._me}) & self._neighbours
        strangers = surviving - self._senders
        if strangers:
            # A survivor completed "share", so a neighbour in U3 is one whose shares reached us,
            # unless one of us left the other out; either way we know who masked with us.
            raise ProtocolRejection(
                "inconsistent", f"the survivor set names neighbours {sorted(strangers)} that never exchanged shares with us"
            )
        if len(surviving) + 1 < self._params.local_threshold:
            raise ProtocolRejection(
                "below_threshold",
                f"only {len(surviving)} neighbours survived; {self._params.local_threshold - 1} needed",
            )
        self._survivors = frozenset(u3)
        self._digest = ph.survivors_digest(u3)
        binding = self._binding.encode()
        out = pb.SecAggConsistencyResponse()
        for w in sorted(surviving):
            out.confirmations.add(
                peer=w, mac=ph.confirmation(self._confirm_keys[w], binding, self._me, w, self._digest)
            )
        self._state = ph.UNMASK
        return out.SerializeToString()

    def _unmask(self, body: bytes) -> bytes:
        assert self._own is not None and self._survivors is not None
        req = ph.parse(pb.SecAggUnmaskRequest, body, "unmask request")
        survivors = ph.distinct(list(req.survivors), "unmask request (survivors)")
        dropped = ph.distinct(list(req.dropped), "unmask request (dropped)")
        both = survivors & dropped
        if both:
            # The one rule that keeps an update secret against a server that lies about dropouts.
            raise ProtocolRejection(
                "share_kind_conflict",
                f"server asked for both the seed and the mask-key share of participants {sorted(both)}",
            )
        if self._me in survivors | dropped:
            raise ProtocolRejection("share_kind_conflict", "server asked this client about itself")
        named = survivors | dropped
        if named != self._senders:
            raise ProtocolRejection(
                "unknown_peer",
                f"unmask request must name exactly the {len(self._senders)} neighbours that sent shares; "
                f"unexpected {sorted(named - self._senders)}, missing {sorted(self._senders - named)}",
            )
        if survivors != named & self._survivors:
            raise ProtocolRejection(
                "inconsistent", "the unmask request's survivors differ from the survivor set this client confirmed"
            )
        binding = self._binding.encode()
        confirmed: set[int] = set()
        for c in req.confirmations:
            if c.peer not in survivors or c.peer in confirmed:
                raise ProtocolRejection("malformed", f"confirmation from participant #{c.peer}, not a surviving neighbour "
                                        "or given twice")
            expected = ph.confirmation(self._confirm_keys[c.peer], binding, c.peer, self._me, self._digest)
            if not hmac.compare_digest(expected, c.mac):
                # The neighbour vouched for another survivor set, or the server forged it: the server
                # is telling clients different stories about who dropped.
                raise ProtocolRejection(
                    "inconsistent", f"participant #{c.peer} confirmed a different survivor set than this client was shown"
                )
            confirmed.add(c.peer)
        if len(confirmed) + 1 < self._params.local_threshold:
            raise ProtocolRejection(
                "below_threshold",
                f"only {len(confirmed)} neighbours confirmed the survivor set; {self._params.local_threshold - 1} needed",
            )
        out = pb.SecAggUnmaskResponse()
        out.seed_shares.add(owner=self._me, share=shamir.encode_share(self._own[0]))
        for v in sorted(survivors & self._held.keys()):
            out.seed_shares.add(owner=v, share=shamir.encode_share(self._held[v][0]))
        for v in sorted(dropped & self._held.keys()):
            out.mask_key_shares.add(owner=v, share=shamir.encode_share(self._held[v][1]))
        self._forget()
        self._state = _DONE
        return out.SerializeToString()

    def _forget(self) -> None:
        """Drop every secret of the round (Python cannot wipe memory; this drops the references)."""
        self._delta = None
        self._cipher = self._mask = None
        self._seed = None
        self._share_keys = {}
        self._confirm_keys = {}
        self._mask_seeds = {}
        self._held = {}
        self._own = None

    def __repr__(self) -> str:  # never show secrets
        return f"SecAggClient({self._id.client_id!r}, round={self._ctx.round_id}, state={self._state!r})"
