"""Per-round X25519 key pairs, key agreement and the signed advert that binds them to an identity.

Each client makes two fresh key pairs per round, as in Bonawitz et al.: a *cipher* pair whose
agreements key the pairwise encryption of shares, and a *mask* pair whose agreements seed the
pairwise masks. They must differ: the mask private key of a client that drops is reconstructed by
the server, and that must not open the share ciphertexts the client exchanged.

An advert carries both public keys and a commitment to the client's self-mask seed, signed with the
client's long-lived identity key over a domain-separated, length-prefixed encoding of
(job, round, client, keys, commitment), so an advert cannot be replayed in another round or claimed
by another client. Shared secrets go through HKDF-SHA256 with an ``info`` naming their purpose and
the pair, so one agreement never keys two things.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
COMMITMENT_BYTES = 32
_ADVERT_DOMAIN = b"fedsec/secagg/v1/key-advert\x00"
_COMMIT_DOMAIN = b"fedsec/secagg/v1/seed-commitment\x00"


def _lp(*parts: bytes) -> bytes:
    """Length-prefixed concatenation: no two different tuples encode to the same bytes."""
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


@dataclass(frozen=True)
class RoundBinding:
    """What every derived key and signature of one round is bound to."""

    job_uid: str
    round_id: int
    context: bytes = b""  # public round inputs all must share (RoundContext.binding); empty: none

    def encode(self) -> bytes:
        return self._encoded

    @functools.cached_property
    def _encoded(self) -> bytes:  # asked for once per pair and per message: compute it once
        parts = (self.job_uid.encode(), struct.pack(">Q", self.round_id))
        return _lp(*parts, self.context) if self.context else _lp(*parts)  # unchanged without a context


class KeyPair:
    """A fresh X25519 key pair. The private key stays inside; ``private_bytes`` exists for sharing."""

    def __init__(self, private: x25519.X25519PrivateKey | None = None) -> None:
        self._private = private if private is not None else x25519.X25519PrivateKey.generate()
        self.public = self._private.public_key().public_bytes_raw()

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> KeyPair:
        if len(raw) != KEY_BYTES:
            raise ValueError(f"X25519 private key must be {KEY_BYTES} bytes, got {len(raw)}")
        return cls(x25519.X25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        """Raw private key, only to be Shamir-shared (the mask key of Bonawitz et al.)."""
        return self._private.private_bytes_raw()

    def agree(self, peer_public: bytes, info: bytes) -> bytes:
        """32 bytes derived from the X25519 agreement with ``peer_public`` for purpose ``info``.

        Raises ValueError for a malformed or low-order peer key (cryptography refuses an all-zero
        shared secret).
        """
        return self.agree_many(peer_public, (info,))[0]

    def agree_many(self, peer_public: bytes, infos: tuple[bytes, ...]) -> list[bytes]:
        """One X25519 agreement, one independent 32-byte key per ``info`` (HKDF-SHA256).

        The agreement is the expensive part (~25 µs); a pair that needs two keys (the shares'
        encryption key and the consistency check's MAC key) pays for it once.
        """
        if len(peer_public) != KEY_BYTES:
            raise ValueError(f"X25519 public key must be {KEY_BYTES} bytes, got {len(peer_public)}")
        shared = self._private.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
        return [HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(shared) for info in infos]

    def __repr__(self) -> str:  # never show key material
        return "KeyPair(<private>)"


# The encodings of Curve25519's points of small order (libsodium's blocklist, which covers the
# non-canonical forms too once bit 255, which X25519 ignores, is cleared).
_SMALL_ORDER = frozenset(bytes.fromhex(h) for h in (
    "00" * 32,
    "01" + "00" * 31,
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ec" + "ff" * 30 + "7f",
    "ed" + "ff" * 30 + "7f",
    "ee" + "ff" * 30 + "7f",
))


def valid_public_key(raw: bytes) -> bool:
    """Whether ``raw`` is an X25519 public key an agreement can use: 32 bytes and not of small order.

    A small-order point makes every agreement with it the all-zero secret (which cryptography
    refuses), so a client advertising one would make each honest neighbour fail at masking time.
    Anyone can check this on a public key, so the server refuses such an advert outright; the check
    is a table look-up, not an agreement (a client's own agreement refuses what the table misses).
    """
    if len(raw) != KEY_BYTES:
        return False
    return bytes(raw[:31]) + bytes([raw[31] & 0x7F]) not in _SMALL_ORDER


def pair_info(purpose: bytes, binding: RoundBinding, a: int, b: int) -> bytes:
    """HKDF info for the pair {a, b}: symmetric in a and b so both ends derive the same key."""
    lo, hi = (a, b) if a < b else (b, a)
    return _lp(b"fedsec/secagg/v1/" + purpose, binding.encode(), struct.pack(">II", lo, hi))


def seed_commitment(binding: RoundBinding, index: int, seed: bytes) -> bytes:
    """Hiding and binding commitment to a uniformly random self-mask seed.

    The seed has 256 bits of entropy, so its hash reveals nothing usable; the server uses it to
    detect a corrupted share when it reconstructs the seed, instead of unmasking with garbage.
    """
    return hashlib.sha256(_COMMIT_DOMAIN + binding.encode() + struct.pack(">I", index) + seed).digest()


def commitment_matches(expected: bytes, binding: RoundBinding, index: int, seed: bytes) -> bool:
    return hmac.compare_digest(expected, seed_commitment(binding, index, seed))


def advert_message(
    binding: RoundBinding, client_id: str, cipher_public: bytes, mask_public: bytes, commitment: bytes
) -> bytes:
    """The exact bytes a client signs to advertise its round keys."""
    return _ADVERT_DOMAIN + _lp(
        binding.encode(), client_id.encode(), cipher_public, mask_public, commitment
    )


def public_of(private_raw: bytes) -> bytes:
    """Public key of a raw X25519 private key (to check a reconstructed mask key)."""
    return KeyPair.from_private_bytes(private_raw).public
