"""Shamir's t-of-m secret sharing of 32-byte secrets over the prime field GF(2**256 + 297).

2**256 + 297 is the least prime above 2**256, so every 32-byte secret is a field element and a share
is 33 bytes. Share ``x`` coordinates are public (a participant's position in the round plus one);
``y`` values are secret.

Constant-time-minded: the code takes no branch on a secret; the polynomial is evaluated by Horner's
rule with the same operations for every value, and reconstruction is a fixed linear combination
whose Lagrange coefficients depend only on the public ``x`` coordinates. CPython integers are not
constant-time at the machine level (their cost varies a little with magnitude); that residual leak
is the price of writing this in Python and is the same for every share of a given length.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence

PRIME = 2**256 + 297
SECRET_BYTES = 32
SHARE_BYTES = 33


def split(secret: bytes, xs: Sequence[int], threshold: int) -> list[int]:
    """Shares (the ``y`` values, in the order of ``xs``) of ``secret``; any ``threshold`` recover it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    _check_xs(xs)
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be between 1 and the {len(xs)} shares")
    # coefficients[0] is the secret; the others are uniform in the field.
    coefficients = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(PRIME) for _ in range(threshold - 1)
    ]
    out = []
    for x in xs:
        y = 0
        for c in reversed(coefficients):
            y = (y * x + c) % PRIME
        out.append(y)
    return out


@functools.lru_cache(maxsize=4096)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Coefficients l_i with f(0) = sum(l_i * f(x_i)); public, so cached per set of ``x``.

    l_i = prod_{j != i} x_j / (x_j - x_i). The t denominators are inverted together with one
    modular exponentiation (Montgomery's trick) instead of t of them.
    """
    _check_xs(xs)
    nums, dens = [], []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        nums.append(num)
        dens.append(den)
    prefix = [1]
    for den in dens:
        prefix.append(prefix[-1] * den % PRIME)
    inv = pow(prefix[-1], -1, PRIME)
    coeffs = [0] * len(xs)
    for i in range(len(xs) - 1, -1, -1):
        coeffs[i] = nums[i] * inv * prefix[i] % PRIME  # inv is 1 / (dens[0] * ... * dens[i])
        inv = inv * dens[i] % PRIME
    return tuple(coeffs)


def combine(points: Sequence[tuple[int, int]]) -> bytes:
    """The secret whose shares are ``points`` (x, y); pass exactly ``threshold`` of them.

    Raises ValueError when the result cannot be a 32-byte secret, which happens (with overwhelming
    probability) when any share was corrupted.
    """
    xs = tuple(x for x, _ in points)
    coeffs = lagrange_at_zero(xs)
    value = sum(c * y for c, (_, y) in zip(coeffs, points)) % PRIME
    if value >> (8 * SECRET_BYTES):
        raise ValueError("shares do not reconstruct a 32-byte secret (a share is corrupted)")
    return value.to_bytes(SECRET_BYTES, "big")


def encode_share(y: int) -> bytes:
    return y.to_bytes(SHARE_BYTES, "big")


def decode_share(data: bytes) -> int:
    if len(data) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    y = int.from_bytes(data, "big")
    if y >= PRIME:
        raise ValueError("share value is not a field element")
    return y


def _check_xs(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs):
        raise ValueError("share x coordinates must be distinct")
    if any(not 0 < x < PRIME for x in xs):
        raise ValueError("share x coordinates must be non-zero field elements")
