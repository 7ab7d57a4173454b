"""The pseudo-random generator that expands a 32-byte seed into a mask vector: AES-256 in CTR mode.

A seed is used for exactly one vector (each seed is fresh per round and per purpose), so a fixed
all-zero counter block is safe. The keystream is written straight into a numpy buffer: the mask of a
vector of ``d`` words costs one pass of AES-NI over ``d * itemsize`` bytes and no Python loop.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
_ZERO_IV = bytes(16)
_AES_BLOCK = 16


def keystream(seed: bytes, nbytes: int) -> bytearray:
    """``nbytes`` of AES-256-CTR keystream under key ``seed`` (the buffer may be 15 bytes longer)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
    enc = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_IV)).encryptor()
    # update_into wants room for a partial block; encrypting zeros yields the raw keystream.
    out = bytearray(nbytes + _AES_BLOCK - 1)
    enc.update_into(bytes(nbytes), out)
    return out


class Expander:
    """Expands many seeds into vectors of one length, reusing one buffer.

    A client expands k + 1 masks and the server one per survivor: allocating a fresh buffer each
    time costs page faults comparable to the AES itself at 1e5 words. The returned array is a
    view into the buffer, valid until the next call: add it into an accumulator straight away.
    """

    def __init__(self, count: int, dtype: np.dtype | type = np.uint32) -> None:
        self._dtype = np.dtype(dtype).newbyteorder("<")
        self._count = count
        self._nbytes = count * self._dtype.itemsize
        self._zeros = bytes(self._nbytes)
        self._out = bytearray(self._nbytes + _AES_BLOCK - 1)
        self._view = np.frombuffer(self._out, dtype=self._dtype, count=count)

    def __call__(self, seed: bytes) -> np.ndarray:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"PRG seed must be {SEED_BYTES} bytes, got {len(seed)}")
        enc = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_IV)).encryptor()
        enc.update_into(self._zeros, self._out)
        return self._view if self._dtype.isnative else self._view.astype(self._dtype.newbyteorder("="))


def expand(seed: bytes, count: int, dtype: np.dtype | type = np.uint32) -> np.ndarray:
    """``count`` uniformly random words of ``dtype`` (little-endian) derived from ``seed``."""
    dt = np.dtype(dtype).newbyteorder("<")
    buf = keystream(seed, count * dt.itemsize)
    arr = np.frombuffer(buf, dtype=dt, count=count)
    return arr if dt.isnative else arr.astype(dt.newbyteorder("="))
