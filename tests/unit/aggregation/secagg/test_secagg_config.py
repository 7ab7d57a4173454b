import pytest

from fedsec.aggregation.secagg import RoundParams, SecAggConfig, SecAggMode, check_consistency, threshold_count
from fedsec.aggregation.secagg.config import degree


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (SecAggConfig(threshold=0.5), "threshold"),
        (SecAggConfig(threshold=1.5), "threshold"),
        (SecAggConfig(threshold=float("nan")), "threshold"),
        (SecAggConfig(threshold=1), "threshold"),
        (SecAggConfig(threshold=True), "threshold"),
        (SecAggConfig(clip_range=0.0), "clip_range"),
        (SecAggConfig(clip_range=float("inf")), "clip_range"),
        (SecAggConfig(ring_bits=16), "ring_bits"),
        (SecAggConfig(quantization_bits=31), "quantization_bits"),
        (SecAggConfig(quantization_bits=0), "quantization_bits"),
        (SecAggConfig(neighbours=3), "neighbours"),
        (SecAggConfig(neighbours="sparse"), "neighbours"),  # type: ignore[arg-type]
        (SecAggConfig(complete_graph_max=0), "complete_graph_max"),
        (SecAggConfig(weight_bound=-1.0), "weight_bound"),
    ],
)
def test_validate_names_the_wrong_field(config: SecAggConfig, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        config.validate()
    with pytest.raises(ValueError, match=f"^{field}:"):
        SecAggMode(config)


def test_defaults_are_valid():
    SecAggConfig().validate()


@pytest.mark.parametrize(
    ("threshold", "n", "want"),
    [(2 / 3, 3, 2), (2 / 3, 10, 7), (2 / 3, 100, 67), (0.51, 10, 6), (1.0, 7, 7), (6, 10, 6), (6, 11, 6)],
)
def test_threshold_count(threshold: float, n: int, want: int) -> None:
    assert threshold_count(SecAggConfig(threshold=threshold), n) == want


@pytest.mark.parametrize(("threshold", "n", "match"), [(5, 10, "strict majority"), (11, 10, "only 10"), (0.9, 1, "at least 2")])
def test_threshold_count_refuses_insecure_or_impossible_rounds(threshold: float, n: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        threshold_count(SecAggConfig(threshold=threshold), n)


def test_required_survivors_is_the_larger_of_quorum_and_threshold():
    mode = SecAggMode(SecAggConfig(threshold=0.75))
    assert mode.required_survivors(20, 5) == 15
    assert mode.required_survivors(20, 18) == 18


def test_consistency_with_the_quorum():
    check_consistency(SecAggConfig(threshold=2 / 3), quorum=3, max_participants=1000)
    check_consistency(SecAggConfig(threshold=6), quorum=8, max_participants=11)
    with pytest.raises(ValueError, match="^threshold: 9 is above the quorum"):
        check_consistency(SecAggConfig(threshold=9), quorum=8, max_participants=11)
    with pytest.raises(ValueError, match="^threshold: .*strict majority"):
        check_consistency(SecAggConfig(threshold=6), quorum=8, max_participants=12)
    with pytest.raises(ValueError, match="^quorum:"):
        check_consistency(SecAggConfig(), quorum=1, max_participants=10)
    with pytest.raises(ValueError, match="^quantization_bits:"):
        check_consistency(SecAggConfig(quantization_bits=28), quorum=3, max_participants=100)


def test_degree_and_local_threshold():
    auto = SecAggConfig()
    assert degree(auto, 32) == 31  # small rounds: complete graph
    assert degree(auto, 100) == 14 and degree(auto, 500) == 18  # 2 * ceil(log2 n)
    assert degree(SecAggConfig(neighbours="complete"), 500) == 499
    assert degree(SecAggConfig(neighbours=8), 6) == 5
    p = RoundParams.derive(auto, 100, 10)
    # The job's threshold holds in every neighbourhood: 2/3 of the 15 holders, not a bare majority (8).
    assert (p.threshold, p.local_threshold, p.fixed.frac_bits) == (67, 10, 24)
    assert RoundParams.derive(SecAggConfig(threshold=0.51), 100, 10).local_threshold == 8  # majority floor
    assert RoundParams.derive(SecAggConfig(threshold=1.0), 100, 10).local_threshold == 15
    c = RoundParams.derive(SecAggConfig(neighbours="complete"), 100, 10)
    assert c.complete and c.local_threshold == c.threshold == 67


@pytest.mark.parametrize(
    ("config", "n", "required", "match"),
    [
        (SecAggConfig(), 1, 2, "at least 2"),  # more survivors required than there are participants
        (SecAggConfig(threshold=5), 4, 5, "only 4"),
        (SecAggConfig(threshold=5), 10, 6, "strict majority"),  # 6 could survive, but 5 of 10 is no majority
    ],
)
def test_a_round_the_config_cannot_serve_aborts_at_once_and_never_raises(config, n, required, match) -> None:
    from fedsec.aggregation.base import Aborted, RoundContext, TensorSpec

    mode = SecAggMode(config)
    ctx = RoundContext("job", 1, tuple(f"c{i}" for i in range(n)), 1, (TensorSpec("v", (3,)),))
    assert mode.required_survivors(n, 1) == required
    server = mode.server(ctx)
    assert server.expected() == frozenset() and server.request_for("c0") is None
    outcome = server.close_phase()
    assert isinstance(outcome, Aborted) and match in outcome.reason
