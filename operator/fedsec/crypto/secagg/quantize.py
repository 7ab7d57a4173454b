"""Fixed-point encoding of real vectors into the ring Z_(2**ring_bits), with stochastic rounding.

A value ``x`` is clipped to [-clip, clip], multiplied by ``scale / clip`` where ``scale`` is
2**frac_bits times a factor in [0, 1] (the client's normalised weight), and rounded to an integer
stochastically: down or up with the probabilities that make the rounding unbiased, so the error of a
sum of n values is zero-mean with |error| < n units of 2**-frac_bits * clip. The integer is stored in
two's complement modulo 2**ring_bits. A sum of n such integers is exact in the ring as long as
n * 2**frac_bits < 2**(ring_bits-1): that is the headroom the protocol reserves.

The rounding noise comes from numpy's PCG64 under a fresh OS seed: it needs to be unbiased, not
secret (only the masked sum leaves a client), and is independent of the masks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


MAX_FRAC_BITS = 40
"""float64 holds 53 significant bits: past 2**40 the fraction that stochastic rounding needs is lost."""


@dataclass(frozen=True)
class FixedPoint:
    """How real values map into the ring: ``frac_bits`` fractional bits of ``clip_range``."""

    ring_bits: int
    frac_bits: int
    clip_range: float

    def __post_init__(self) -> None:
        if self.ring_bits not in (32, 64):
            raise ValueError(f"ring_bits must be 32 or 64, got {self.ring_bits}")
        if not 1 <= self.frac_bits <= min(self.ring_bits - 2, MAX_FRAC_BITS):
            raise ValueError(
                f"frac_bits must be between 1 and {min(self.ring_bits - 2, MAX_FRAC_BITS)}, "
                f"got {self.frac_bits}"
            )
        if not (np.isfinite(self.clip_range) and self.clip_range > 0):
            raise ValueError(f"clip_range must be a positive finite number, got {self.clip_range}")

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return np.uint32 if self.ring_bits == 32 else np.uint64

    @property
    def signed(self) -> type[np.signedinteger]:
        return np.int32 if self.ring_bits == 32 else np.int64

    @property
    def unit(self) -> float:
        """2**frac_bits: the integer that stands for ``clip_range`` (or for a full weight of 1)."""
        return float(2**self.frac_bits)

    def max_summands(self) -> int:
        """How many encoded values the ring can add without wrapping around."""
        return (2 ** (self.ring_bits - 1) - 1) // 2**self.frac_bits

    def encode(self, values: np.ndarray, factor: float, out: np.ndarray) -> int:
        """Write round(clip(values) * factor) into ``out`` (ring dtype); return how many were clipped.

        ``factor`` in [0, 1] multiplies every value after clipping (the normalised weight).
        """
        if not 0.0 <= factor <= 1.0:
            raise ValueError(f"factor must be in [0, 1], got {factor}")
        # In place wherever possible: at 1e5-1e6 coordinates, fresh temporaries cost page faults
        # comparable to the arithmetic itself.
        v = values.astype(np.float64).ravel()
        c = self.clip_range
        clipped = int(np.count_nonzero(v > c)) + int(np.count_nonzero(v < -c))
        np.clip(v, -c, c, out=v)
        v *= factor * self.unit / c
        self._round_into(v, out)
        return clipped

    def encode_scalar(self, value: float) -> int:
        """Stochastic rounding of ``value * 2**frac_bits`` for one value in [0, 1], as a ring element."""
        v = np.array([value * self.unit], dtype=np.float64)
        out = np.empty(1, dtype=self.dtype)
        self._round_into(v, out)
        return int(out[0])

    def _round_into(self, v: np.ndarray, out: np.ndarray) -> None:
        # u uniform in [0, 1) with 53 random bits: floor(v + u) rounds up with probability frac(v),
        # so E[result] = v. The noise needs no secrecy (only the masked sum leaves the client), so
        # numpy's PCG64 under a fresh OS seed is enough, and it writes float64 directly.
        rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
        v += rng.random(v.size)
        np.floor(v, out=v)
        np.copyto(out.reshape(-1).view(self.signed), v, casting="unsafe")  # two's complement

    def to_signed(self, ring: np.ndarray) -> np.ndarray:
        """Two's-complement reading of ring elements as signed integers."""
        return ring.view(self.signed)

    def decode_values(self, ring_sum: np.ndarray) -> np.ndarray:
        """Sum of encoded values back to reals (float64), as ``sum(clip(x) * factor)``."""
        return self.to_signed(ring_sum).astype(np.float64) * (self.clip_range / self.unit)
