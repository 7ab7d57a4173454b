"""Phase names and the shared pieces of both roles: what one round's secagg messages are bound to."""

from __future__ import annotations

import hashlib
import hmac
import struct
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

import numpy as np
from google.protobuf.message import DecodeError, Message

from fedsec.aggregation.base import ProtocolRejection
from fedsec.crypto.secagg import shamir

ADVERTISE = "advertise"
SHARE = "share"
MASKED_INPUT = "masked-input"
CONSISTENCY = "consistency"
UNMASK = "unmask"
PHASES = (ADVERTISE, SHARE, MASKED_INPUT, CONSISTENCY, UNMASK)

SHARE_PLAINTEXT_BYTES = 2 * shamir.SHARE_BYTES  # seed share || mask-key share

# HKDF purposes: one agreement never keys two things.
SHARE_KEY = b"share-key"
CONFIRM_KEY = b"consistency-mac"
MASK_SEED = b"pairwise-mask"

MAC_BYTES = 32
# What a client may say of a peer it left out; anything else is a malformed answer.
BLAME_REASONS = frozenset({"bad_signature", "bad_key", "bad_share"})
_CONFIRM_DOMAIN = b"fedsec/secagg/v1/consistency\x00"


def survivors_digest(survivors: Iterable[int]) -> bytes:
    """SHA-256 of a sorted survivor set: what a consistency confirmation vouches for."""
    return hashlib.sha256(b"".join(struct.pack(">I", i) for i in sorted(survivors))).digest()


def confirmation(key: bytes, binding: bytes, sender: int, recipient: int, digest: bytes) -> bytes:
    """``sender``'s MAC to ``recipient`` that it was shown the survivor set with ``digest``.

    Keyed by the pair's consistency key, which came from their authenticated key agreement: the
    server relays it but cannot make one, so a matching MAC means the neighbour saw the same set.
    """
    msg = _CONFIRM_DOMAIN + binding + struct.pack(">II", sender, recipient) + digest
    return hmac.new(key, msg, hashlib.sha256).digest()

M = TypeVar("M", bound=Message)


def ring_bytes(vec: np.ndarray) -> bytes:
    """Ring words as little-endian bytes, without a copy on little-endian machines."""
    return vec.tobytes() if sys.byteorder == "little" else vec.byteswap().tobytes()


def ring_words(data: bytes, dtype: type[np.unsignedinteger], count: int) -> np.ndarray | None:
    """Little-endian ring words, or None when ``data`` does not hold exactly ``count`` of them."""
    dt = np.dtype(dtype)
    if len(data) != count * dt.itemsize:
        return None
    arr = np.frombuffer(data, dtype=dt.newbyteorder("<"), count=count)
    return arr if sys.byteorder == "little" else arr.astype(dt)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def repeated(field: int, blobs: list[bytes]) -> bytes:
    """Protobuf encoding of a repeated message field from already serialized messages.

    The server relays n * k small messages per phase; splicing their bytes (protobuf's wire
    format is a concatenation of tagged fields) avoids rebuilding and reserializing each one.
    """
    tag = varint(field << 3 | 2)
    return b"".join(tag + varint(len(b)) + b for b in blobs)


def sealed(peer: int, ciphertext: bytes) -> bytes:
    """A serialized SecAggSealedShares (field 1 varint, field 2 bytes)."""
    return b"\x08" + varint(peer) + b"\x12" + varint(len(ciphertext)) + ciphertext


def parse(factory: Callable[[], M], body: bytes, what: str) -> M:
    msg = factory()
    try:
        msg.ParseFromString(body)
    except (DecodeError, ValueError) as exc:
        raise ProtocolRejection("malformed", f"{what} is not a valid message: {exc}") from None
    return msg


def distinct(indices: list[int], what: str) -> set[int]:
    out = set(indices)
    if len(out) != len(indices):
        raise ProtocolRejection("malformed", f"{what} lists a participant twice")
    return out
