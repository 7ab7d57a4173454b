"""The unmasked aggregate is the plaintext weighted mean of exactly the survivors, at every dropout.

An oracle written from the protocol's specification (docs/secure-aggregation.md) predicts, for each
dropout pattern, which clients end up in the sum or whether the round must abort; the test checks
the server reaches the same verdict and, when it finishes, the same numbers within the quantization
bound (bit-exact on inputs that quantize exactly).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fedsec.aggregation.base import Aborted, ClientUpdate, Finished, TensorSpec, weighted_mean
from fedsec.aggregation.secagg import ADVERTISE, CONSISTENCY, MASKED_INPUT, PHASES, SHARE, UNMASK, SecAggConfig, SecAggMode
from secagg_harness import Run, context, run_round

SPECS = (TensorSpec("w", (2, 3)), TensorSpec("b", (4,)))


def oracle(run: Run, n: int, drop_at: dict[str, str], required: int) -> set[int] | None:
    """Indices of the contributors the spec says the round ends with, or None if it must abort."""
    server = run.server
    names = server._ctx.participants  # noqa: SLF001 (test oracle reads the public round context)
    t = server.params.local_threshold
    closed = [server.neighbours(i) | {i} for i in range(n)]

    def answering(phase: str) -> set[int]:
        return {i for i, c in enumerate(names) if c not in drop_at or PHASES.index(drop_at[c]) > PHASES.index(phase)}

    def prune(alive: set[int]) -> set[int] | None:
        if len(alive) < required:
            return None
        while thin := {u for u in alive if len(closed[u] & alive) < t}:
            alive = alive - thin
        return alive if len(alive) >= required else None

    u1 = prune(answering(ADVERTISE))
    u2 = prune(u1 & answering(SHARE)) if u1 is not None else None
    if u2 is None:
        return None
    u3 = u2 & answering(MASKED_INPUT)
    if len(u3) < required:
        return None
    u4 = u3 & answering(UNMASK)
    for owner in u2:
        needed = owner in u3 or bool(server.neighbours(owner) & u3)
        holders = closed[owner] & u4 if owner in u3 else (closed[owner] - {owner}) & u4
        if needed and len(holders) < t:
            return None
    return u3


def reference(updates: dict[str, ClientUpdate], who: list[str], clip: float, bound: float):
    clipped = {
        c: ClientUpdate({k: np.clip(v, -clip, clip) for k, v in updates[c].delta.items()}, min(updates[c].weight, bound))
        for c in who
    }
    return weighted_mean(clipped)


# Mostly present: about one client in four drops, at a phase chosen uniformly.
drop_strategy = st.sampled_from([None] * 12 + [ADVERTISE, SHARE, MASKED_INPUT, UNMASK])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(2, 12),  # d, weights, graph, threshold, ring, clip, bound and dropouts drawn too
    graph=st.sampled_from(["complete", 2, 4]),
    threshold=st.sampled_from([0.51, 0.6, 2 / 3, 0.8, 1.0]),
    ring=st.sampled_from([32, 64]),
    clip=st.sampled_from([0.05, 1.0, 10.0]),
    bound=st.sampled_from([None, 1000.0, 5000.0]),
    data=st.data(),
)
def test_unmasked_mean_is_the_survivors_plaintext_mean(n, graph, threshold, ring, clip, bound, data):
    config = SecAggConfig(threshold=threshold, clip_range=clip, ring_bits=ring, neighbours=graph, complete_graph_max=1)
    shape = (data.draw(st.integers(1, 5)), data.draw(st.integers(1, 7)))
    specs = (TensorSpec("w", shape), TensorSpec("b", (data.draw(st.integers(1, 40)),)))
    ctx = context(n, specs, seed=data.draw(st.binary(max_size=4)))
    weights = data.draw(st.lists(st.sampled_from([0.0, 1.0, 7.0, 500.0, 4000.0, 9000.0]), min_size=n, max_size=n))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    updates = {
        c: ClientUpdate({s.name: (rng.standard_normal(s.shape) * clip).astype(np.float32) for s in specs}, w)
        for c, w in zip(ctx.participants, weights)
    }
    drops = data.draw(st.lists(drop_strategy, min_size=n, max_size=n))
    drop_at = {c: p for c, p in zip(ctx.participants, drops) if p is not None}
    mode = SecAggMode(config)
    required = mode.required_survivors(n, 1)
    run = run_round(mode, ctx, updates, drop_at, weight_bound=bound)
    want = oracle(run, n, drop_at, required)
    event(f"outcome: {type(run.outcome).__name__}")
    W = bound if bound is not None else config.weight_bound
    if want is not None and sum(min(updates[ctx.participants[i]].weight, W) for i in want) == 0:
        want = None  # nothing to average: the server must refuse rather than divide by zero
    if want is None:
        assert isinstance(run.outcome, Aborted), run.outcome
        return
    assert isinstance(run.outcome, Finished), run.outcome
    agg = run.outcome.aggregate
    who = [ctx.participants[i] for i in sorted(want)]
    assert agg.contributors == tuple(who)
    ref = reference(updates, who, clip, W)
    fixed = run.server.params.fixed
    q_w = agg.total_weight / W * fixed.unit
    m = len(who)
    assert abs(agg.total_weight - ref.total_weight) <= m / fixed.unit * W * (1 + 1e-9)
    tol = 2 * m * clip / q_w + 1e-6 * clip
    for name, arr in ref.mean_delta.items():
        assert arr.shape == agg.mean_delta[name].shape and agg.mean_delta[name].dtype == np.float32
        assert np.max(np.abs(agg.mean_delta[name].astype(np.float64) - arr)) <= tol


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 10), graph=st.sampled_from(["complete", 2]), data=st.data())
def test_sum_is_bit_exact_on_inputs_that_quantize_exactly(n, graph, data):
    # clip = 1, every weight equal to the bound (factor 1): an input m / 2**frac quantizes to m exactly,
    # so the unmasked ring sum must be exactly sum(m) whatever the dropouts.
    config = SecAggConfig(threshold=0.51, neighbours=graph, complete_graph_max=1)
    ctx = context(n, (TensorSpec("v", (8,)),))
    frac = SecAggMode(config).server(ctx).params.fixed.frac_bits
    ms = {c: np.array(data.draw(st.lists(st.integers(-1000, 1000), min_size=8, max_size=8))) for c in ctx.participants}
    updates = {c: ClientUpdate({"v": (m / 2.0**frac).astype(np.float32)}, 100.0) for c, m in ms.items()}
    drops = data.draw(st.lists(st.sampled_from([None] * 6 + [ADVERTISE, SHARE, MASKED_INPUT, UNMASK]), min_size=n, max_size=n))
    drop_at = {c: p for c, p in zip(ctx.participants, drops) if p is not None}
    mode = SecAggMode(config)
    run = run_round(mode, ctx, updates, drop_at, weight_bound=100.0)
    want = oracle(run, n, drop_at, mode.required_survivors(n, 1))
    if want is None:
        assert isinstance(run.outcome, Aborted)
        return
    assert isinstance(run.outcome, Finished)
    agg = run.outcome.aggregate
    assert agg.total_weight == 100.0 * len(want)
    got = np.rint(agg.mean_delta["v"].astype(np.float64) * len(want) * 2.0**frac)
    assert np.array_equal(got, sum(ms[ctx.participants[i]] for i in want))


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("graph", ["complete", 4])
def test_two_dropouts_at_each_phase_leave_the_others_exact_sum(phase: str, graph) -> None:
    n = 12
    # threshold 0.51: the sparse neighbourhood of 5 then rebuilds from 3, which two dropouts leave.
    config = SecAggConfig(threshold=0.51, neighbours=graph, complete_graph_max=1, clip_range=10.0)
    ctx = context(n, SPECS)
    rng = np.random.default_rng(5)
    updates = {c: ClientUpdate({s.name: rng.standard_normal(s.shape).astype(np.float32) for s in SPECS}, float(10 + i))
               for i, c in enumerate(ctx.participants)}
    dropped = {ctx.participants[3], ctx.participants[8]}
    # A tight public weight bound (the job's secureAggregation.weightBound), the same on both sides.
    run = run_round(SecAggMode(config), ctx, updates, {c: phase for c in dropped}, weight_bound=21.0)
    assert isinstance(run.outcome, Finished), run.outcome
    agg = run.outcome.aggregate
    # Clients that dropped before sending their masked input are out; the rest are in.
    survivors = [c for c in ctx.participants if phase in (CONSISTENCY, UNMASK) or c not in dropped]
    assert agg.contributors == tuple(survivors)
    ref = weighted_mean({c: updates[c] for c in survivors})
    assert agg.total_weight == pytest.approx(ref.total_weight, abs=1e-3)
    for name in ref.mean_delta:
        np.testing.assert_allclose(agg.mean_delta[name], ref.mean_delta[name], atol=1e-5)


@pytest.mark.parametrize("phase", [ADVERTISE, SHARE])
def test_a_client_whose_neighbours_all_vanish_is_left_out_and_the_rest_is_exact(phase: str) -> None:
    # Degree 2: a closed neighbourhood of 3 with a local threshold of 2. When both neighbours of the
    # victim vanish early, its secrets could never be rebuilt, so it is excluded before anything
    # depends on it, and the others' sum is still exact.
    n = 12
    config = SecAggConfig(threshold=0.51, neighbours=2, complete_graph_max=1, clip_range=10.0)
    mode = SecAggMode(config)
    ctx = context(n, SPECS)
    probe = mode.server(ctx)
    victim = 5
    gone = {ctx.participants[v] for v in probe.neighbours(victim)}
    rng = np.random.default_rng(9)
    updates = {c: ClientUpdate({s.name: rng.standard_normal(s.shape).astype(np.float32) for s in SPECS}, 3.0)
               for c in ctx.participants}
    run = run_round(mode, ctx, updates, {c: phase for c in gone}, weight_bound=3.0)
    assert isinstance(run.outcome, Finished), run.outcome
    want = [c for i, c in enumerate(ctx.participants) if c not in gone and i != victim]
    assert run.outcome.aggregate.contributors == tuple(want)
    assert run.clients[ctx.participants[victim]].state == (SHARE if phase == ADVERTISE else MASKED_INPUT)
    ref = weighted_mean({c: updates[c] for c in want})
    for name in ref.mean_delta:
        np.testing.assert_allclose(run.outcome.aggregate.mean_delta[name], ref.mean_delta[name], atol=1e-5)
