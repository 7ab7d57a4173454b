"""Federated feature standardisation (``task.standardize``): the two steps of round 0. Pure numpy.

A single round of per-site means and mean squares, averaged, is wrong in two ways under secure
aggregation: one clip range and one quantization step serve every feature, so a feature whose
squares are large is clipped (silently) while one whose spread is small drowns in the step; and
``E[x²] - E[x]²`` cancels. Round 0 therefore runs in two secure steps, each a normal attempt with
its own round id, under the statistics configuration of the aggregation mode
(:data:`STATS_RANGE`, a 64-bit ring):

1. ``stats-scale``: each site sends, per feature, quantities that are bounded whatever its data:
   log2 of its root mean square (within ±149 for float32 data), whether that is non-zero, and its
   mean and standard deviation as fractions of it (in [-1, 1] and [0, 1]). Nothing can be clipped.
   :func:`pooled_scale` turns the weighted averages into a public centre ``c`` and scale ``s`` per
   feature: ``s`` is about the sites' typical standard deviation, ``c`` about the mean. They only
   need to be right to a small factor.
2. ``stats``: the aggregator sends ``(c, s)`` in the model's ``input_norm`` layer; each site sends
   the first two moments of ``z = (x - c) / s``, which are of order one for every feature, so one
   range and one step fit them all, and the variance ``E[z²] - E[z]²`` no longer cancels. A site
   whose ``E[z²]`` exceeds :data:`STATS_RANGE` marks the feature clipped; the marks are averaged
   with the moments, so the aggregator learns how many sites clipped each feature, and the round
   fails naming them (:func:`clipping_reason`) instead of standardising with wrong numbers.

What a site releases: in both steps, functions of its per-feature first two moments and its row
count, averaged with the other sites' under the aggregation mode. Whatever ``(c, s)`` the aggregator
sends, step 2's moments are an affine function of the pooled E[x] and E[x²] (what the single round
released), and a clip mark is a function of the site's own moments, never of single rows. Under
secure aggregation ``(c, s)`` is bound into the round (:func:`centre_binding`): sites handed
different centres cannot agree keys with each other, so the aggregator cannot centre one site
differently from the rest to single it out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedsec.aggregation.base import TensorSpec

STATS_RANGE = float(2**8)
"""clipRange of both statistics steps: a site's E[z²] up to 256, i.e. its values within 16 of the
sites' typical standard deviations of the centre on average (breast cancer's non-iid hospitals reach
17 of 256). A wider range costs precision in proportion: the step is STATS_RANGE / 2^40 per unit of
normalised weight (docs/secure-aggregation.md)."""

CONSTANT_VARIANCE = 1e-5
"""A feature whose pooled variance of z is at or below this is treated as constant (std 1): its
spread is under 0.3% of the sites' own, at the level of the round's quantization."""

_SCALE_TENSORS = ("log_rms", "nonzero", "rho", "tau")
_MOMENT_TENSORS = ("mean", "sqmean", "clipped")
_PRESENT = 1e-6  # share of the rows: below it no site saw a non-zero value (quantization noise)
_FLAT = 2.0**-20  # sites' std / rms below this: the feature is constant within every site
_BINDING_DOMAIN = b"fedsec/stats-centre/v1\x00"


def scale_specs(input_dim: int) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(n, (input_dim,)) for n in _SCALE_TENSORS)


def moment_specs(input_dim: int) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(n, (input_dim,)) for n in _MOMENT_TENSORS)


def _rows(X: np.ndarray) -> np.ndarray:
    X64 = np.asarray(X, dtype=np.float64)
    if X64.ndim != 2 or X64.shape[0] == 0:
        raise ValueError(f"feature statistics need a non-empty (rows, features) table, got shape {X64.shape}")
    if not np.isfinite(X64).all():
        raise ValueError("feature statistics: the table holds NaN or infinity")
    return X64


def site_scale(X: np.ndarray) -> dict[str, np.ndarray]:
    """Step 1 at a site: per feature log2 rms, rms > 0, mean / rms, std / rms (float32)."""
    X64 = _rows(X)
    mean = X64.mean(axis=0)
    std = np.sqrt(np.square(X64 - mean).mean(axis=0))
    rms = np.sqrt(np.square(X64).mean(axis=0))
    nonzero = rms > 0
    safe = np.where(nonzero, rms, 1.0)
    return {
        "log_rms": np.where(nonzero, np.log2(safe), 0.0).astype(np.float32),
        "nonzero": nonzero.astype(np.float32),
        "rho": np.clip(np.where(nonzero, mean / safe, 0.0), -1.0, 1.0).astype(np.float32),
        "tau": np.clip(np.where(nonzero, std / safe, 0.0), 0.0, 1.0).astype(np.float32),
    }


def pooled_scale(mean_delta: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The public centre and scale (float32, scale > 0) from step 1's weighted averages."""
    nz = np.asarray(mean_delta["nonzero"], np.float64)
    present = nz > _PRESENT
    share = np.where(present, nz, 1.0)
    # float32 normal range: the centre and scale travel in the model as float32
    log_rms = np.clip(np.asarray(mean_delta["log_rms"], np.float64) / share, -125.0, 125.0)
    rho = np.clip(np.asarray(mean_delta["rho"], np.float64) / share, -1.0, 1.0)
    tau = np.clip(np.asarray(mean_delta["tau"], np.float64) / share, 0.0, 1.0)
    rms = np.exp2(log_rms)
    centre = np.where(present, rho * rms, 0.0)
    scale = np.where(present, np.where(tau > _FLAT, tau * rms, rms), 1.0)
    return centre.astype(np.float32), scale.astype(np.float32)


def centre_binding(centre: np.ndarray, scale: np.ndarray) -> bytes:
    """What step 2's secure aggregation is bound to: every site must have been sent this (c, s)."""
    c = np.ascontiguousarray(centre, dtype="<f4").tobytes()
    s = np.ascontiguousarray(scale, dtype="<f4").tobytes()
    return hashlib.sha256(_BINDING_DOMAIN + len(c).to_bytes(8, "big") + c + s).digest()


def site_moments(X: np.ndarray, centre: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    """Step 2 at a site: E[z], E[z²] of z = (x - c) / s, and the clip mark (float32).

    A feature whose E[z²] exceeds :data:`STATS_RANGE` is marked and its moments are sent clipped to
    the range (what the fixed-point encoding would do anyway); the mark is 1 / rows, so that its
    row-weighted average times the total rows is the number of sites that clipped.
    """
    X64 = _rows(X)
    c = np.asarray(centre, np.float64)
    s = np.asarray(scale, np.float64)
    if c.shape != (X64.shape[1],) or s.shape != c.shape:
        raise ValueError(f"centre and scale must have shape ({X64.shape[1]},), got {c.shape} and {s.shape}")
    if not (np.isfinite(c).all() and np.isfinite(s).all() and (s > 0).all()):
        raise ValueError("the centre must be finite and the scale finite and positive")
    z = (X64 - c) / s
    m1 = z.mean(axis=0)
    m2 = np.square(z).mean(axis=0)
    clipped = ~(m2 <= STATS_RANGE)  # also catches an overflow to inf
    return {
        "mean": np.clip(np.nan_to_num(m1), -STATS_RANGE, STATS_RANGE).astype(np.float32),
        "sqmean": np.clip(np.nan_to_num(m2, posinf=STATS_RANGE), 0.0, STATS_RANGE).astype(np.float32),
        "clipped": (clipped / X64.shape[0]).astype(np.float32),
    }


@dataclass(frozen=True)
class Standardization:
    mean: np.ndarray  # float64 [d]
    std: np.ndarray  # float64 [d], > 0; 1 for a constant feature
    clipped_sites: np.ndarray  # int [d]: sites whose statistics of that feature were clipped


def pooled_moments(
    mean_delta: Mapping[str, np.ndarray], total_weight: float, centre: np.ndarray, scale: np.ndarray
) -> Standardization:
    """Step 2's weighted averages (weights: training rows; ``total_weight`` their sum) back to the
    pooled mean and standard deviation of x."""
    c = np.asarray(centre, np.float64)
    s = np.asarray(scale, np.float64)
    m1 = np.asarray(mean_delta["mean"], np.float64)
    m2 = np.asarray(mean_delta["sqmean"], np.float64)
    var_z = m2 - m1 * m1
    constant = var_z <= CONSTANT_VARIANCE
    std = np.where(constant, 1.0, s * np.sqrt(np.maximum(var_z, CONSTANT_VARIANCE)))
    sites = np.rint(np.asarray(mean_delta["clipped"], np.float64) * float(total_weight)).astype(np.int64)
    return Standardization(mean=c + s * m1, std=std, clipped_sites=np.maximum(sites, 0))


def clipping_reason(std: Standardization, feature_names: Sequence[str] = ()) -> str:
    """Why the statistics must not be used ('' when they may): the features some site clipped."""
    hit = np.flatnonzero(std.clipped_sites > 0)
    if hit.size == 0:
        return ""

    def name(j: int) -> str:
        return repr(feature_names[j]) if j < len(feature_names) else f"input column {j}"

    shown = ", ".join(f"{name(int(j))} ({int(std.clipped_sites[j])} site(s))" for j in hit[:8])
    more = f" and {hit.size - 8} more" if hit.size > 8 else ""
    if not feature_names:
        more += " (0-based; the sites' logs name them, and task.features would name them here)"
    return (
        f"feature statistics clipped for {hit.size} feature(s): {shown}{more}. At those sites the values lie more "
        f"than {np.sqrt(STATS_RANGE):g} typical standard deviations from the other sites' centre, so the federated "
        "mean and standard deviation would be wrong; nothing was standardised. Check that every site measures these "
        "features in the same units (rescale the odd site's column), or set task.standardize: false and give "
        "task.featureRanges (docs/secure-aggregation.md, feature statistics)"
    )


__all__ = [
    "CONSTANT_VARIANCE", "STATS_RANGE", "Standardization", "centre_binding", "clipping_reason", "moment_specs",
    "pooled_moments", "pooled_scale", "scale_specs", "site_moments", "site_scale",
]
