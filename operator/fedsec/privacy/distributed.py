"""Distributed Gaussian noise (``privacy.mechanism: distributed-gaussian``), the client's half.

Each client clips its update (the model parameters' delta, as one vector) to L2 norm ``C`` and adds
Gaussian noise of standard deviation ``z·C / sqrt(t)`` to every coordinate, ``t`` being the least
number of survivors whose sum the server may unmask (``max(quorum, threshold)``). Under secure
aggregation the server learns only the sum of at least ``t`` such updates, which then carries noise
of standard deviation at least ``z·C``: the Gaussian mechanism on a sum whose sensitivity to one
site is ``C`` (Kairouz et al., ICML 2021; Agarwal et al. 2018 for the idea). Buffers (the input
scaling) are neither clipped nor noised: they never change in training.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Collection, Mapping

import numpy as np


def clip_and_noise(
    delta: Mapping[str, np.ndarray], parameters: Collection[str], *, clipping_norm: float,
    noise_multiplier: float, min_survivors: int, rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    if min_survivors < 1:
        raise ValueError("min_survivors must be at least 1")
    rng = rng or np.random.default_rng(secrets.randbits(128))
    norm = math.sqrt(sum(float(np.sum(np.square(delta[k], dtype=np.float64))) for k in parameters))
    scale = min(1.0, clipping_norm / norm) if norm > 0 else 1.0
    std = noise_multiplier * clipping_norm / math.sqrt(min_survivors)
    out = {}
    for k, v in delta.items():
        v = np.asarray(v, np.float32)
        if k in parameters:
            v = (v * np.float32(scale) + rng.normal(0.0, std, size=v.shape)).astype(np.float32)
        out[k] = v
    return out
