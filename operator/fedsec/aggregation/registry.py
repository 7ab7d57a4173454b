"""The one place a job's ``secureAggregation`` spec becomes an aggregation protocol.

Training rounds carry model deltas, small numbers clipped to ``clipRange``. The feature-statistics
round (``task.standardize``) carries per-feature means and mean squares, which can be large
(breast-cancer's ``area`` squared is ~10^6): under secure aggregation it runs in a 64-bit ring with a
range of ±2^20 and 40 fractional bits, which keeps it exact to ~10^-6. Features whose squares exceed
2^20 are clipped there; rescale such features (docs/secure-aggregation.md).
"""

from __future__ import annotations

from fedsec.aggregation.base import AggregationMode
from fedsec.aggregation.plaintext import PlaintextMode
from fedsec.aggregation.secagg.config import DEFAULT_THRESHOLD, SecAggConfig
from fedsec.aggregation.secagg.mode import SecAggMode
from fedsec.aggregation.secagg.server import AdvertVerifier
from fedsec.api.job import SecureAggregationSpec

STATS_CLIP_RANGE = float(2**20)
STATS_RING_BITS = 64


def secagg_config(spec: SecureAggregationSpec, *, for_stats: bool = False) -> SecAggConfig:
    threshold = DEFAULT_THRESHOLD if spec.threshold is None else spec.threshold
    bound = {} if spec.weight_bound is None else {"weight_bound": float(spec.weight_bound)}
    if for_stats:
        return SecAggConfig(
            threshold=threshold, clip_range=STATS_CLIP_RANGE, ring_bits=STATS_RING_BITS,
            neighbours=spec.neighbours or "auto",
            **bound,
        )
    return SecAggConfig(
        threshold=threshold, clip_range=spec.clip_range, ring_bits=spec.ring_bits,
        quantization_bits=spec.quantization_bits, neighbours=spec.neighbours or "auto", **bound,
    )


def mode_for(spec: SecureAggregationSpec, *, for_stats: bool = False,
             verify_advert: AdvertVerifier | None = None) -> AggregationMode:
    """The mode ``spec`` names; ``verify_advert`` is the aggregator's check of secagg key adverts."""
    if spec.mode == "none":
        return PlaintextMode()
    if spec.mode == "secagg":
        return SecAggMode(secagg_config(spec, for_stats=for_stats), verify_advert)
    raise ValueError(f"secureAggregation.mode {spec.mode!r} is not available in this build")
