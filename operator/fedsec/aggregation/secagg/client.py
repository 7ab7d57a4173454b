"""Client side of one secure-aggregation round: a state machine that holds the client's secrets.

advertise      -> fresh cipher and mask key pairs, a self-mask seed b, a signed advert
share          -> verify the neighbours' adverts; Shamir-share b and the mask private key among the
                  closed neighbourhood; seal each neighbour's pair of shares under the cipher key
masked-input   -> open the shares neighbours sent; send y = Q(w * x) + PRG(b) +- PRG(s_uv) ...
unmask         -> reveal, for each neighbour, the share of b (it survived) or of its mask key (it
                  dropped), never both, and only once

Every check the client can make without trusting the server is made here: the parameters match its
own derivation from the job spec, the neighbours are those of the public graph, every advert carries
a valid identity signature, every ciphertext authenticates, enough neighbours take part, and the
unmask request names each neighbour in exactly one role. A failed check is a refusal
(ProtocolRejection): the client forgets its secrets and answers nothing more this round.
"""

from __future__ import annotations

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
        self._binding = keys.RoundBinding(ctx.job_uid, ctx.round_id)
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
        self._peers: dict[int, pb.SecAggKeyAdvert] = {}
        self._share_keys: dict[int, bytes] = {}
        self._held: dict[int, tuple[int, int]] = {}  # owner -> (seed share, mask-key share) at my x
        self._own: tuple[int, int] | None = None
        self._senders: set[int] = set()

    @property
    def state(self) -> str:
        """The phase this client expects next, ``done`` or ``failed``."""
        return self._state

    @property
    def neighbours(self) -> frozenset[int]:
        return self._neighbours

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
        if not (math.isfinite(p.weight_bound) and p.weight_bound > 0):
            raise ProtocolRejection("params_mismatch", f"weight bound {p.weight_bound} is not positive")
        self._weight_bound = p.weight_bound
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
        for entry in req.peers:
            v = entry.index
            if v not in self._neighbours:
                raise ProtocolRejection("unknown_peer", f"participant #{v} is not a neighbour of this client")
            if v in peers:
                raise ProtocolRejection("malformed", f"participant #{v} advertised twice")
            a = entry.advert
            if (len(a.cipher_public_key) != keys.KEY_BYTES or len(a.mask_public_key) != keys.KEY_BYTES
                    or len(a.seed_commitment) != keys.COMMITMENT_BYTES):
                raise ProtocolRejection("wrong_size", f"advert of participant #{v} has keys of the wrong size")
            peer_id = self._ctx.participants[v]
            signed = keys.advert_message(
                self._binding, peer_id, a.cipher_public_key, a.mask_public_key, a.seed_commitment
            )
            if not self._id.verify(peer_id, a.cert, signed, a.signature):
                raise ProtocolRejection(
                    "bad_signature", f"key advert of {peer_id!r} is not signed by its certified identity"
                )
            peers[v] = a
        if len(peers) + 1 < self._params.local_threshold:
            raise ProtocolRejection(
                "below_threshold",
                f"only {len(peers)} neighbours advertised keys; {self._params.local_threshold - 1} needed",
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
            try:
                key = self._cipher.agree(
                    peers[h].cipher_public_key, keys.pair_info(ph.SHARE_KEY, self._binding, self._me, h)
                )
            except ValueError as exc:
                raise ProtocolRejection("bad_key", f"cipher key of participant #{h}: {exc}") from None
            self._share_keys[h] = key
            plaintext = shamir.encode_share(sy) + shamir.encode_share(ky)
            out.shares.add(peer=h, ciphertext=aead.seal(key, self._binding, self._me, h, plaintext))
        self._peers = peers
        self._cipher = None  # its only use was the share keys, kept per peer
        self._state = ph.MASKED_INPUT
        return out.SerializeToString()

    def _masked_input(self, body: bytes) -> bytes:
        assert self._mask is not None and self._seed is not None and self._delta is not None
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
        for s in req.shares:
            try:
                plain = aead.open_(self._share_keys[s.peer], self._binding, s.peer, self._me, s.ciphertext)
                if len(plain) != ph.SHARE_PLAINTEXT_BYTES:
                    raise ValueError(f"{len(plain)} bytes of shares, expected {ph.SHARE_PLAINTEXT_BYTES}")
                held[s.peer] = (
                    shamir.decode_share(plain[: shamir.SHARE_BYTES]),
                    shamir.decode_share(plain[shamir.SHARE_BYTES:]),
                )
            except ValueError as exc:
                raise ProtocolRejection("bad_share", f"shares from participant #{s.peer}: {exc}") from None
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
            try:
                seed = self._mask.agree(
                    self._peers[v].mask_public_key, keys.pair_info(ph.MASK_SEED, self._binding, self._me, v)
                )
            except ValueError as exc:
                raise ProtocolRejection("bad_key", f"mask key of participant #{v}: {exc}") from None
            # The lower index adds, the higher subtracts: the pair cancels in the sum.
            if self._me < v:
                vec += mask(seed)
            else:
                vec -= mask(seed)
        self._held, self._senders = held, senders
        # Only shares are needed from here on; the update, the seed and the mask key are not.
        self._delta = None
        self._seed = None
        self._mask = None
        self._share_keys = {}
        self._state = ph.UNMASK
        return pb.SecAggMaskedInputResponse(masked=ph.ring_bytes(vec)).SerializeToString()

    def _unmask(self, body: bytes) -> bytes:
        assert self._own is not None
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
        if len(survivors) + 1 < self._params.local_threshold:
            raise ProtocolRejection(
                "below_threshold",
                f"only {len(survivors)} neighbours survived; {self._params.local_threshold - 1} needed",
            )
        out = pb.SecAggUnmaskResponse()
        out.seed_shares.add(owner=self._me, share=shamir.encode_share(self._own[0]))
        for v in sorted(survivors):
            out.seed_shares.add(owner=v, share=shamir.encode_share(self._held[v][0]))
        for v in sorted(dropped):
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
        self._held = {}
        self._own = None

    def __repr__(self) -> str:  # never show secrets
        return f"SecAggClient({self._id.client_id!r}, round={self._ctx.round_id}, state={self._state!r})"
