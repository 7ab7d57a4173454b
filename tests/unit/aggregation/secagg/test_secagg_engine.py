"""SecAggMode under the real round engine: phases, a dropout at the deadline, the committed mean."""

from __future__ import annotations

import numpy as np

from fedsec.aggregation.base import ClientUpdate, RoundContext, TensorSpec, weighted_mean
from fedsec.aggregation.secagg import MASKED_INPUT, PHASES, SecAggClient, SecAggMode
from fedsec.protocol.engine import EngineConfig, EngineState, RoundCommitted, RoundEngine, TaskView
from secagg_harness import identities, names

SPECS = (TensorSpec("w", (3, 2)),)


def test_a_round_under_the_engine_commits_the_survivors_mean() -> None:
    sites = names(6)
    mode = SecAggMode()
    cfg = EngineConfig("job", sites, rounds=1, standardize=False, quorum=4, round_timeout_s=10.0,
                       join_timeout_s=30.0, max_retries=0, model_specs=SPECS, stats_specs=())
    engine = RoundEngine(cfg, mode, EngineState(next_round=1), now=0.0)
    for s in sites:
        engine.seen(s, 1.0)
    rng = np.random.default_rng(2)
    updates = {s: ClientUpdate({"w": (rng.standard_normal((3, 2)) * 0.1).astype(np.float32)}, 50.0 + i)
               for i, s in enumerate(sites)}
    clients: dict[str, SecAggClient] = {}
    quitter = sites[2]  # crashes before sending its masked input
    effects: list = []
    now = 2.0
    for phase in PHASES:
        for s in sites:
            task, _ = engine.poll(s, 0, now)
            if not isinstance(task, TaskView) or (s == quitter and phase == MASKED_INPUT):
                continue
            assert task.phase == phase
            if s not in clients:
                ctx = RoundContext("job", task.round_id, task.participants, task.min_survivors, SPECS, task.seed)
                clients[s] = mode.client(ctx, identities()[s], updates[s])
            body = clients[s].respond(task.phase, task.request)
            effects += engine.contribute(s, task.round_id, task.phase, body, {}, False, now)
        if phase == MASKED_INPUT:
            now += 11.0  # the quitter never answers: the phase ends at its deadline
            effects += engine.tick(now)
    committed = [e for e in effects if isinstance(e, RoundCommitted)]
    assert len(committed) == 1, effects
    agg = committed[0].aggregate
    survivors = [s for s in sites if s != quitter]
    assert agg.contributors == tuple(survivors)
    ref = weighted_mean({s: updates[s] for s in survivors})
    np.testing.assert_allclose(agg.mean_delta["w"], ref.mean_delta["w"], atol=1e-5)
    assert abs(agg.total_weight - ref.total_weight) < 0.01
