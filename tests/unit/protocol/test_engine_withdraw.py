"""A participant that withdraws from a multi-phase round (a site whose privacy budget ran out) is
counted out once: the round goes on with the others when they still meet the quorum."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fedsec.aggregation.base import ClientUpdate, RoundContext, TensorSpec
from fedsec.aggregation.secagg import SecAggMode
from fedsec.protocol.engine import EngineConfig, EngineState, RoundCommitted, RoundDiscarded, RoundEngine, TaskView

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "aggregation" / "secagg"))
from secagg_harness import identities, names  # noqa: E402

SPECS = (TensorSpec("w", (2,)),)


def test_withdrawal_in_the_first_phase_of_a_secagg_round_is_not_counted_again_later() -> None:
    sites = names(4)
    mode = SecAggMode()
    cfg = EngineConfig("job", sites, rounds=1, standardize=False, quorum=3, round_timeout_s=10.0,
                       join_timeout_s=30.0, max_retries=0, model_specs=SPECS, stats_specs=())
    engine = RoundEngine(cfg, mode, EngineState(next_round=1), now=0.0)
    for s in sites:
        engine.seen(s, 1.0)
    quitter = sites[3]
    clients = {}
    effects: list = []
    for _ in range(8):  # enough polls for every phase
        for s in sites:
            task, _ = engine.poll(s, 0, 2.0)
            if not isinstance(task, TaskView):
                continue
            if s == quitter:
                effects += engine.contribute(s, task.round_id, task.phase, b"", {}, True, 2.0)
                continue
            if s not in clients:
                ctx = RoundContext("job", task.round_id, task.participants, task.min_survivors, SPECS, task.seed)
                clients[s] = mode.client(ctx, identities()[s], ClientUpdate({"w": np.ones(2, np.float32)}, 1.0))
            effects += engine.contribute(s, task.round_id, task.phase, clients[s].respond(task.phase, task.request), {}, False, 2.0)
    assert not [e for e in effects if isinstance(e, RoundDiscarded)], effects
    (c,) = [e for e in effects if isinstance(e, RoundCommitted)]
    assert c.aggregate.contributors == tuple(sites[:3])
