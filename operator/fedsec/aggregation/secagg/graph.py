"""The SecAgg+ communication graph: who exchanges keys, shares and pairwise masks with whom.

Bell et al. replace Bonawitz's complete graph with a random graph of degree O(log n), which is what
turns the n**2 cost into n log n. We use their suggestion of a Harary graph over a random
permutation (as Flower does): place the participants on a ring in a pseudo-random order and join
each to the k/2 nearest on either side. Every client has exactly k neighbours, and a Harary graph is
k-connected: removing fewer than k clients (dropped or colluding) cannot split the rest, so the
server never obtains the partial sum of a group of honest survivors.

The order is derived from public per-round randomness, so server and every client compute the same
graph without trusting one another's word for it.
"""

from __future__ import annotations

import hashlib

import numpy as np

from fedsec.crypto.secagg.keys import RoundBinding
from fedsec.crypto.secagg.prg import expand

_DOMAIN = b"fedsec/secagg/v1/graph\x00"


def graph_seed(binding: RoundBinding, round_seed: bytes) -> bytes:
    return hashlib.sha256(_DOMAIN + binding.encode() + round_seed).digest()


def permutation(n: int, seed: bytes) -> list[int]:
    """Participants sorted by a 64-bit PRG key each: a uniform order up to key collisions (about
    n**2 / 2**65), which the stable sort breaks by index so every side gets the same order."""
    keys = expand(seed, max(n, 1), np.uint64)[:n]
    return [int(i) for i in np.argsort(keys, kind="stable")]


def neighbours_of(i: int, n: int, degree: int, seed: bytes) -> frozenset[int]:
    """Open neighbourhood of participant ``i`` alone: what a client needs, in O(n) not O(n k)."""
    if degree >= n - 1:
        return frozenset(range(n)) - {i}
    if degree < 2 or degree % 2:
        raise ValueError(f"a sparse graph needs an even degree >= 2, got {degree}")
    order = permutation(n, seed)
    p = order.index(i)
    half = degree // 2
    return frozenset(order[(p + off) % n] for off in range(-half, half + 1) if off != 0)


def neighbour_graph(n: int, degree: int, seed: bytes) -> tuple[frozenset[int], ...]:
    """Open neighbourhoods (indices into the round's participants) of a degree-``degree`` graph."""
    if degree >= n - 1:
        everyone = frozenset(range(n))
        return tuple(everyone - {i} for i in range(n))
    if degree < 2 or degree % 2:
        raise ValueError(f"a sparse graph needs an even degree >= 2, got {degree}")
    order = permutation(n, seed)
    position = {node: p for p, node in enumerate(order)}
    half = degree // 2
    return tuple(
        frozenset(
            order[(position[i] + off) % n] for off in range(-half, half + 1) if off != 0
        )
        for i in range(n)
    )
