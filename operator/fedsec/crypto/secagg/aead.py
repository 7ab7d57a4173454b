"""Authenticated encryption of the shares one client sends another through the server.

AES-256-GCM under a key both ends derive from their cipher-key agreement. The associated data binds
the ciphertext to (round, sender, recipient), so the server can neither redirect a ciphertext to
another client nor replay it in another round: either is an authentication failure. The nonce is
random (96 bits) and travels in front of the ciphertext; each key encrypts at most two messages.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedsec.crypto.secagg.keys import RoundBinding

NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = NONCE_BYTES + TAG_BYTES
_AD_DOMAIN = b"fedsec/secagg/v1/share-ciphertext\x00"


class DecryptionError(ValueError):
    """A ciphertext does not authenticate for this (round, sender, recipient)."""


def _ad(binding: RoundBinding, sender: int, recipient: int) -> bytes:
    return _AD_DOMAIN + binding.encode() + struct.pack(">II", sender, recipient)


def seal(key: bytes, binding: RoundBinding, sender: int, recipient: int, plaintext: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _ad(binding, sender, recipient))


def open_(key: bytes, binding: RoundBinding, sender: int, recipient: int, ciphertext: bytes) -> bytes:
    if len(ciphertext) < OVERHEAD:
        raise DecryptionError(f"ciphertext of {len(ciphertext)} bytes is shorter than nonce and tag")
    try:
        return AESGCM(key).decrypt(
            ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], _ad(binding, sender, recipient)
        )
    except InvalidTag:
        raise DecryptionError(
            f"share ciphertext from participant #{sender} to #{recipient} does not authenticate"
        ) from None
