"""Round 0's two statistics steps under real secure aggregation and the real engine, in memory: the
federated mean and std of breast cancer split over twelve sites against the exact pooled ones, and
a site handed a different centre than the others cannot take part in the round."""

from __future__ import annotations

import numpy as np

from fedsec.aggregation.base import ClientUpdate, ProtocolRejection, RoundContext
from fedsec.aggregation.registry import mode_for
from fedsec.aggregation.secagg import PHASES, SecAggClient
from fedsec.api.job import SecureAggregationSpec
from fedsec.protocol import stats as fstats
from fedsec.protocol.engine import (
    EngineConfig,
    EngineState,
    JobFinished,
    RoundCommitted,
    RoundDiscarded,
    RoundEngine,
    ScaleMeasured,
    SitesBlamed,
    TaskView,
)
from fedsec.training.data import load_builtin, partition
from secagg_harness import identities, names

SITES = names(12)


def site_tables() -> dict[str, np.ndarray]:
    table = load_builtin("breast-cancer")
    parts = partition(table, scheme="dirichlet", shards=len(SITES), alpha=0.5, seed=42)
    return {s: table.take(p).X for s, p in zip(SITES, parts, strict=True)}


def engine_for(sites: tuple[str, ...], dim: int) -> RoundEngine:
    mode = mode_for(SecureAggregationSpec(mode="secagg", threshold=0.67), for_stats=True)
    cfg = EngineConfig("job", sites, rounds=1, standardize=True, quorum=len(sites) - 2, round_timeout_s=10.0,
                       join_timeout_s=30.0, max_retries=1, model_specs=(), stats_specs=fstats.moment_specs(dim),
                       scale_specs=fstats.scale_specs(dim))
    engine = RoundEngine(cfg, mode, EngineState(next_round=0), now=0.0, stats_mode=mode)
    for s in sites:
        engine.seen(s, 0.0)
    return engine


def run_step(engine: RoundEngine, X: dict[str, np.ndarray],
             centres: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> list:
    """One statistics step: every site answers every phase as the client runtime does. ``centres``:
    the (centre, scale) each site was sent (default: the engine's own, as the driver sends it)."""
    clients: dict[str, SecAggClient] = {}
    effects: list = []
    refused: set[str] = set()
    for phase in PHASES:
        for s in engine.config.sites:
            task, _ = engine.poll(s, 0, 1.0)
            if not isinstance(task, TaskView):
                continue
            assert task.phase == phase
            if s not in clients:
                binding = b""
                if task.kind == "stats":
                    c, sc = (centres or {}).get(s) or engine._scale  # noqa: SLF001 - what the model carries
                    update = ClientUpdate(fstats.site_moments(X[s], c, sc), float(len(X[s])))
                    specs, binding = fstats.moment_specs(c.size), fstats.centre_binding(c, sc)
                else:
                    update = ClientUpdate(fstats.site_scale(X[s]), float(len(X[s])))
                    specs = fstats.scale_specs(X[s].shape[1])
                ctx = RoundContext("job", task.round_id, task.participants, task.min_survivors, specs, task.seed,
                                   binding)
                clients[s] = engine.stats_mode.client(ctx, identities()[s], update)  # type: ignore[assignment]
            try:
                body, withdraw = clients[s].respond(task.phase, task.request), False
            except ProtocolRejection:  # the client runtime refuses the round and withdraws
                body, withdraw = b"", True
                refused.add(s)
            effects += engine.contribute(s, task.round_id, task.phase, body, {}, withdraw, 1.0)
    return effects + [("refused", sorted(refused))]


def test_federated_statistics_of_the_example_match_the_exact_pooled_ones() -> None:
    X = site_tables()
    engine = engine_for(SITES, 30)
    scaled = run_step(engine, X)
    assert [type(e) for e in scaled if isinstance(e, (ScaleMeasured, RoundCommitted))] == [ScaleMeasured]
    (committed,) = [e for e in run_step(engine, X) if isinstance(e, RoundCommitted)]
    got = committed.standardization
    assert got is not None and committed.kind == "stats" and committed.round_number == 0
    pooled = np.concatenate(list(X.values())).astype(np.float64)
    mean, std = pooled.mean(axis=0), pooled.std(axis=0)
    # The documented precision (docs/secure-aggregation.md): 1e-6 of the feature's std, for both.
    assert (np.abs(got.mean - mean) <= 1e-6 * std).all(), np.abs(got.mean - mean) / std
    assert (np.abs(got.std - std) <= 1e-6 * std).all(), np.abs(got.std - std) / std
    assert (got.clipped_sites == 0).all()
    # "worst area" (column 23): the single clipped round of the past gave a std of about 168 here
    assert abs(got.std[23] - std[23]) < 1e-3 and std[23] > 500


def test_a_site_handed_another_centre_cannot_join_the_others_round() -> None:
    X = site_tables()
    engine = engine_for(SITES, 30)
    run_step(engine, X)
    assert engine._scale is not None  # noqa: SLF001
    centre, scale = engine._scale  # noqa: SLF001
    victim = SITES[4]
    # An aggregator that centres one site far away (to read its moments out of the sum) is refused
    # by the protocol: the victim's keys and signatures are bound to a centre no peer shares.
    effects = run_step(engine, X, {victim: (centre + 1000 * scale, scale)})
    (blamed,) = [e for e in effects if isinstance(e, SitesBlamed)]
    (committed,) = [e for e in effects if isinstance(e, RoundCommitted)]
    assert list(blamed.blamed) == [victim] and blamed.blamed[victim].startswith("bad_signature")
    assert ("refused", [victim]) in effects  # the victim itself finds no peer with its centre
    others = [s for s in SITES if s != victim]
    assert committed.aggregate.contributors == tuple(others)
    pooled = np.concatenate([X[s] for s in others]).astype(np.float64)
    got = committed.standardization
    assert got is not None
    assert (np.abs(got.mean - pooled.mean(axis=0)) <= 1e-6 * pooled.std(axis=0)).all()
