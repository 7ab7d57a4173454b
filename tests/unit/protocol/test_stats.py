"""The pure arithmetic of round 0's two statistics steps (fedsec.protocol.stats) and the site's
check that admits them only as round 0 of a job that standardises."""

from __future__ import annotations

import numpy as np
import pytest

from fedsec.api.admitted import AdmittedPlan
from fedsec.protocol import stats as fstats
from fedsec.protocol.terms import TaskRefused, check_task, round_seed


def pooled_by_rows(per_site: list[dict[str, np.ndarray]], rows: list[int]) -> dict[str, np.ndarray]:
    """The row-weighted average a plaintext round computes (what secure aggregation reproduces)."""
    w = np.array(rows, np.float64) / sum(rows)
    return {k: sum(wi * d[k].astype(np.float64) for wi, d in zip(w, per_site, strict=True)) for k in per_site[0]}


def two_steps(sites: list[np.ndarray]) -> fstats.Standardization:
    rows = [len(x) for x in sites]
    centre, scale = fstats.pooled_scale(pooled_by_rows([fstats.site_scale(x) for x in sites], rows))
    moments = pooled_by_rows([fstats.site_moments(x, centre, scale) for x in sites], rows)
    return fstats.pooled_moments(moments, float(sum(rows)), centre, scale)


def test_scale_statistics_are_bounded_whatever_the_data() -> None:
    X = np.array([[3e38, 1e-38, 0.0, -5.0], [-3e38, 1e-38, 0.0, -7.0]], np.float32)
    s = fstats.site_scale(X)
    for name, arr in s.items():
        assert arr.dtype == np.float32 and np.isfinite(arr).all(), name
        assert (np.abs(arr) <= fstats.STATS_RANGE).all(), name
    assert s["nonzero"].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert s["rho"][3] == pytest.approx(-6 / np.sqrt(37), rel=1e-6) and s["tau"][1] == 0.0


def test_two_steps_give_the_pooled_mean_and_std_across_wildly_different_scales() -> None:
    rng = np.random.default_rng(3)
    sites = [np.column_stack([rng.normal(4e6, 2e5, n), rng.normal(0.06, 0.007, n), rng.normal(-3, 1e-3, n)])
             .astype(np.float32) for n in (25, 40, 61)]
    got = two_steps(sites)
    pooled = np.concatenate(sites).astype(np.float64)
    # each feature to 1e-6 of its own spread, though the three differ by 10^8 in scale
    assert (np.abs(got.mean - pooled.mean(axis=0)) <= 1e-6 * pooled.std(axis=0)).all()
    np.testing.assert_allclose(got.std, pooled.std(axis=0), rtol=1e-6)
    assert (got.clipped_sites == 0).all()


def test_absent_and_constant_features_are_centred_with_std_one() -> None:
    a = np.array([[0.0, 7.0, 1.0], [0.0, 7.0, 2.0]], np.float32)
    b = np.array([[0.0, 7.0, 3.0], [0.0, 7.0, 4.0], [0.0, 7.0, 5.0]], np.float32)
    centre, scale = fstats.pooled_scale(pooled_by_rows([fstats.site_scale(a), fstats.site_scale(b)], [2, 3]))
    assert (centre[0], scale[0]) == (0.0, 1.0)  # never non-zero anywhere
    got = two_steps([a, b])
    assert got.std[:2].tolist() == [1.0, 1.0]
    assert got.mean[:2] == pytest.approx([0.0, 7.0], abs=1e-5)
    assert got.std[2] == pytest.approx(np.std([1, 2, 3, 4, 5]), rel=1e-6)


def test_a_site_in_other_units_is_counted_and_named() -> None:
    rng = np.random.default_rng(0)
    sites = [rng.normal([10.0, 50.0], [1.0, 5.0], size=(30, 2)).astype(np.float32) for _ in range(4)]
    sites[2] = sites[2] * np.array([1.0, 1000.0], np.float32)  # millimetres where the others use metres
    got = two_steps(sites)
    assert got.clipped_sites.tolist() == [0, 1]
    reason = fstats.clipping_reason(got, ("height", "weight"))
    assert "'weight' (1 site(s))" in reason and "'height'" not in reason and "task.featureRanges" in reason
    assert fstats.clipping_reason(got).startswith(
        "feature statistics clipped for 1 feature(s): input column 1 (1 site(s)) (0-based; the sites' logs name them")


def test_moments_refuse_a_centre_or_scale_no_honest_aggregator_sends() -> None:
    X = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="scale finite and positive"):
        fstats.site_moments(X, np.zeros(2), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        fstats.site_moments(X, np.zeros(3), np.ones(3))
    huge = fstats.site_moments(X, np.zeros(2, np.float32), np.full(2, 1e-30, np.float32))
    assert np.isfinite(huge["sqmean"]).all() and huge["clipped"].tolist() == pytest.approx([1 / 3, 1 / 3])


def test_the_binding_changes_with_any_bit_of_the_centre_or_scale() -> None:
    c, s = np.zeros(3, np.float32), np.ones(3, np.float32)
    base = fstats.centre_binding(c, s)
    assert fstats.centre_binding(c.copy(), s.copy()) == base
    assert fstats.centre_binding(np.nextafter(c, np.float32(1)), s) != base
    assert fstats.centre_binding(c, s * 2) != base
    assert fstats.centre_binding(s, c) != base


PLAN = AdmittedPlan(job_uid="u", spec_digest="0" * 64, roster=("a", "b", "c"), quorum=2)


def check(kind: str, number: int, standardize: bool = True) -> None:
    check_task(PLAN, site="a", rounds=3, standardize=standardize, required=lambda n: 2, round_id=7,
               round_number=number, kind=kind, participants=["a", "b", "c"], min_survivors=2,
               seed=round_seed("u", 7))


@pytest.mark.parametrize("kind", ["stats-scale", "stats"])
def test_both_statistics_steps_are_admitted_as_round_zero_only(kind: str) -> None:
    check(kind, 0)
    for number, standardize in ((1, True), (0, False)):
        with pytest.raises(TaskRefused) as refused:
            check(kind, number, standardize)
        assert refused.value.reason == "beyond-plan" and kind in refused.value.detail
