"""Signed envelopes: every message bound to (job, round, phase, key epoch, sender, nonce).

``seal`` builds one; ``open_envelope`` is the boundary check every received message passes before
any other code looks at it. It rejects, with a reason label for metrics and a detail for people:
oversized and malformed messages, certificates the job CA did not issue, signatures that do not
verify, senders that are not who their certificate says, other jobs, other key epochs, bodies that
do not match their hash, and replays (see ``fedsec.protocol.replay``). Round and phase freshness
are the round engine's to judge, because only it knows the current round.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message

from fedsec.crypto.signing import Identity, IdentityError, Signer, Verifier
from fedsec.protocol.key_epochs import EpochWindow
from fedsec.protocol.rejections import Rejected
from fedsec.protocol.replay import ReplayGuard
from fedsec.wire.proto import round_pb2 as pb

_DOMAIN = b"fedsec/v1/envelope\x00"
NONCE_BYTES = 16

BODY_TYPES: dict[str, type[Message]] = {
    "Join": pb.Join,
    "Poll": pb.Poll,
    "Contribution": pb.Contribution,
    "Reply": pb.Reply,
    "Ack": pb.Ack,
}


@dataclass(frozen=True)
class Opened:
    header: pb.Header
    body: Message
    sender: Identity


@dataclass(frozen=True)
class SerializedBody:
    """A body serialized and hashed once, to seal for many recipients (the same Task for every
    participant of a round: hashing a model once per round instead of once per site)."""

    data: bytes
    body_type: str
    sha256: bytes

    @classmethod
    def of(cls, body: Message) -> SerializedBody:
        data = body.SerializeToString(deterministic=True)
        return cls(data, type(body).DESCRIPTOR.name, hashlib.sha256(data).digest())


def seal(
    signer: Signer,
    body: Message | SerializedBody,
    *,
    job_uid: str,
    round_id: int,
    phase: str,
    recipient: str,
    in_reply_to: bytes = b"",
    now_ms: int | None = None,
) -> pb.Envelope:
    sb = body if isinstance(body, SerializedBody) else SerializedBody.of(body)
    header = pb.Header(
        job_uid=job_uid,
        round_id=round_id,
        phase=phase,
        key_epoch=signer.epoch,
        sender=signer.name,
        nonce=os.urandom(NONCE_BYTES),
        issued_at_ms=int(time.time() * 1000) if now_ms is None else now_ms,
        recipient=recipient,
        body_type=sb.body_type,
        body_sha256=sb.sha256,
        in_reply_to=in_reply_to,
    ).SerializeToString(deterministic=True)
    return pb.Envelope(header=header, body=sb.data, signature=signer.sign(_DOMAIN + header), signer_cert=signer.cert_der)


def open_envelope(
    env: pb.Envelope,
    verifier: Verifier,
    *,
    job_uid: str,
    key_epochs: EpochWindow,
    recipient: str,
    replay: ReplayGuard | None,
    now_ms: int,
    max_bytes: int,
    size_cap: Callable[[pb.Header], int] | None = None,
) -> Opened:
    """Check one received envelope; raise :class:`Rejected` naming the first thing wrong.

    ``size_cap`` bounds the whole envelope by what its (signed) header says it is, e.g. a Poll or an
    answer in a given phase; it is checked once the signature verifies and before the body is
    hashed or parsed, so an over-long message costs no parse and its refusal still answers it.
    """
    size = env.ByteSize()
    body_bytes = env.body  # upb copies a bytes field on every read: read the (large) body once
    if size > max_bytes:
        raise Rejected("oversized", f"message of {size} bytes exceeds the limit of {max_bytes}")
    header = pb.Header()
    try:
        header.ParseFromString(env.header)
    except DecodeError:
        raise Rejected("malformed", "envelope header does not parse") from None
    if not env.signature or not env.signer_cert:
        raise Rejected("malformed", "envelope carries no signature or no signer certificate")
    try:
        ident = verifier.verify(env.signer_cert, _DOMAIN + env.header, env.signature)
    except IdentityError as exc:
        raise Rejected("bad-signature", str(exc)) from None
    if not hmac.compare_digest(header.sender.encode(), ident.name.encode()):
        raise Rejected("forged-sender", f"envelope claims sender {header.sender!r} but is signed by {ident.name!r}")
    try:
        if header.job_uid != job_uid:
            raise Rejected("wrong-job", f"message is for job {header.job_uid!r}, this is {job_uid!r}")
        if header.key_epoch != ident.epoch or header.key_epoch not in key_epochs:
            raise Rejected(
                "wrong-epoch",
                f"message names key epoch {header.key_epoch} (certificate: {ident.epoch}); "
                f"accepted epochs: {key_epochs}",
            )
        if header.recipient != recipient:
            raise Rejected("wrong-recipient", f"message is addressed to {header.recipient!r}")
        if len(header.nonce) != NONCE_BYTES:
            raise Rejected("malformed", f"nonce must be {NONCE_BYTES} bytes")
        if size_cap is not None and size > (cap := size_cap(header)):
            raise Rejected(
                "oversized",
                f"{header.body_type or 'message'} for phase {header.phase!r} of {size} bytes exceeds the "
                f"{cap} bytes that kind of message can need in this job",
            )
        if not hmac.compare_digest(hashlib.sha256(body_bytes).digest(), header.body_sha256):
            raise Rejected("malformed", "body does not match the signed hash")
        body_cls = BODY_TYPES.get(header.body_type)
        if body_cls is None:
            raise Rejected("malformed", f"unknown body type {header.body_type!r}")
        body = body_cls()
        try:
            body.ParseFromString(body_bytes)
        except DecodeError:
            raise Rejected("malformed", f"{header.body_type} body does not parse") from None
    except Rejected as rej:
        # Signed by who it says: the refusal may answer this request, by its sender and nonce.
        rej.sender, rej.nonce = ident.name, header.nonce
        raise
    if replay is not None:
        replay.check(header.sender, header.nonce, header.issued_at_ms, now_ms)
    return Opened(header=header, body=body, sender=ident)
