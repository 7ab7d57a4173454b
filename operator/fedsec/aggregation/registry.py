"""The one place a job's ``secureAggregation`` spec becomes an aggregation protocol.

Training rounds carry model deltas, small numbers clipped to ``clipRange``. The two steps of the
feature-statistics round (``task.standardize``, :mod:`fedsec.protocol.stats`) carry quantities that
are of order one by construction (bounded logs and ratios, then moments of features centred and
scaled by public per-feature values): under secure aggregation they run in a 64-bit ring with the
range ±``STATS_RANGE`` (2^8) and 40 fractional bits. A site whose statistic would exceed the range
marks it, and the round fails naming the feature; nothing is clipped silently.
"""

from __future__ import annotations

from fedsec.aggregation.base import AggregationMode
from fedsec.aggregation.plaintext import PlaintextMode
from fedsec.aggregation.secagg.config import DEFAULT_THRESHOLD, SecAggConfig
from fedsec.aggregation.secagg.mode import SecAggMode
from fedsec.aggregation.secagg.server import AdvertVerifier
from fedsec.api.job import SecureAggregationSpec
from fedsec.protocol.stats import STATS_RANGE

STATS_CLIP_RANGE = STATS_RANGE
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
