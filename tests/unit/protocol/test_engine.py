"""The round engine, driven event by event with a fake clock: quorum, retries, drops, deadlines."""

from __future__ import annotations

import numpy as np
import pytest

from fedsec.aggregation.base import ClientUpdate, PeerIdentity, TensorSpec
from fedsec.aggregation.plaintext import PlaintextMode
from fedsec.protocol.engine import (
    FAILED,
    SUCCEEDED,
    EngineConfig,
    EngineState,
    DoneView,
    JobFinished,
    RoundCommitted,
    RoundDiscarded,
    RoundEngine,
    RoundStarted,
    ScaleMeasured,
    TaskView,
    WaitView,
)
from fedsec.protocol import stats as fstats
from fedsec.protocol.rejections import Rejected

SPECS = (TensorSpec("w", (3,)),)
SITES = tuple(f"s{i}" for i in range(5))
NOBODY = PeerIdentity("x", b"", lambda d: b"", lambda *a: False)


def make(quorum: int = 3, rounds: int = 2, retries: int = 1, standardize: bool = False,
         features: tuple[str, ...] = ()) -> RoundEngine:
    cfg = EngineConfig(
        job_uid="job",
        sites=SITES,
        rounds=rounds,
        standardize=standardize,
        quorum=quorum,
        round_timeout_s=10.0,
        join_timeout_s=30.0,
        max_retries=retries,
        model_specs=SPECS,
        stats_specs=fstats.moment_specs(2),
        scale_specs=fstats.scale_specs(2),
        feature_names=features,
    )
    return RoundEngine(cfg, PlaintextMode(), EngineState(next_round=0 if standardize else 1), now=0.0)


def site_rows(site: str) -> np.ndarray:
    """Two features per site: one around 5000 with spread 300, one around 0.06 with spread 0.007."""
    rng = np.random.default_rng(int(site[1:]))
    n = 20 + 7 * int(site[1:])
    return np.column_stack([rng.normal(5000, 300, n), rng.normal(0.06, 0.007, n)]).astype(np.float32)


def answer(engine: RoundEngine, site: str, value: float, now: float, weight: float = 1.0,
           rows: dict[str, np.ndarray] | None = None) -> list:
    task, _ = engine.poll(site, 0, now)
    assert isinstance(task, TaskView), task
    X = (rows or {}).get(site, site_rows(site))
    if task.kind == "stats-scale":
        update = ClientUpdate(fstats.site_scale(X), float(len(X)))
    elif task.kind == "stats":
        assert engine._scale is not None  # noqa: SLF001 - the driver sends it in the model
        update = ClientUpdate(fstats.site_moments(X, *engine._scale), float(len(X)))  # noqa: SLF001
    else:
        update = ClientUpdate({s.name: np.full(s.shape, value, np.float32) for s in SPECS}, weight)
    body = PlaintextMode().client(None, NOBODY, update).respond(task.phase, task.request)  # type: ignore[arg-type]
    return engine.contribute(site, task.round_id, task.phase, body, {"auc": value}, False, now)


def test_round_starts_when_all_sites_are_live_and_commits_the_weighted_mean() -> None:
    e = make()
    for s in SITES[:-1]:
        assert e.seen(s, 1.0) == []
    (started,) = e.seen(SITES[-1], 1.0)
    assert isinstance(started, RoundStarted) and started.participants == SITES
    effects = []
    for i, s in enumerate(SITES):
        effects += answer(e, s, float(i), 2.0, weight=i + 1)
    committed = [x for x in effects if isinstance(x, RoundCommitted)]
    assert len(committed) == 1
    expected = sum(i * (i + 1) for i in range(5)) / sum(range(1, 6))
    np.testing.assert_allclose(committed[0].aggregate.mean_delta["w"], expected, rtol=1e-6)
    assert any(isinstance(x, RoundStarted) and x.round_number == 2 for x in effects)


def test_start_grace_then_start_with_quorum_only() -> None:
    e = make(quorum=3)
    for s in SITES[:3]:
        e.seen(s, 0.0)
    assert e.tick(9.9) == []
    (started,) = e.tick(10.0)
    assert isinstance(started, RoundStarted) and started.participants == SITES[:3]
    result, _ = e.poll("s4", 0, 10.5)
    assert isinstance(result, WaitView) and "next one" in result.reason


def test_join_timeout_fails_with_a_reason() -> None:
    e = make(quorum=3)
    e.seen("s0", 0.0)
    (finished,) = e.tick(30.0)
    assert isinstance(finished, JobFinished) and finished.status == FAILED
    assert "only 1 of 5 sites joined" in finished.reason


def test_quorum_miss_retries_under_a_new_round_id_then_fails() -> None:
    e = make(quorum=3, retries=1)
    for s in SITES:
        e.seen(s, 0.0)
    first = e.current_round_id
    answer(e, "s0", 1.0, 1.0)
    answer(e, "s1", 1.0, 1.0)
    effects = e.tick(10.0)  # deadline: 2 of 5 answered, quorum 3
    assert isinstance(effects[0], RoundDiscarded) and "2 of 5" in effects[0].reason
    # the three silent sites are dropped; two are live: below quorum, the retry waits
    assert not any(isinstance(x, RoundStarted) for x in effects)
    effects = e.seen("s2", 11.0)
    # s0, s1, s2 live again -> the retry starts when s2 shows up, under a new round id
    assert any(isinstance(x, RoundStarted) and x.attempt == 2 for x in effects)
    assert e.current_round_id > first
    assert e._attempt is not None and e._attempt.participants == ("s0", "s1", "s2")  # noqa: SLF001
    with pytest.raises(Rejected) as stale:
        e.contribute("s0", first, "update", b"", {}, False, 12.0)
    assert stale.value.reason == "stale-round"
    effects = e.tick(30.0)  # nobody answers the retry either
    assert any(isinstance(x, JobFinished) and x.status == FAILED for x in effects)
    assert "missed its quorum in 2 attempts" in e.state.reason


def test_duplicates_wrong_phase_and_outsiders_are_rejected() -> None:
    e = make()
    for s in SITES:
        e.seen(s, 0.0)
    answer(e, "s0", 1.0, 1.0)
    with pytest.raises(Rejected) as dup:
        e.contribute("s0", e.current_round_id, "update", b"", {}, False, 1.0)
    assert dup.value.reason == "duplicate"
    with pytest.raises(Rejected) as phase:
        e.contribute("s1", e.current_round_id, "share", b"", {}, False, 1.0)
    assert phase.value.reason == "wrong-phase"
    with pytest.raises(Rejected) as unknown:
        e.seen("mallory", 1.0)
    assert unknown.value.reason == "unknown-sender"
    with pytest.raises(Rejected) as garbage:
        e.contribute("s1", e.current_round_id, "update", b"\xff\x00garbage", {}, False, 1.0)
    assert garbage.value.reason == "invalid-update"


def test_full_job_with_stats_round_succeeds_and_then_says_done() -> None:
    e = make(rounds=2, standardize=True)
    for s in SITES:
        e.seen(s, 0.0)
    kinds, finished, committed = [], [], []
    for t in range(4):
        for s in SITES:
            for x in answer(e, s, 1.0, float(t)):
                if isinstance(x, (RoundCommitted, ScaleMeasured)):
                    kinds.append((x.round_number, getattr(x, "kind", "scale-measured")))
                if isinstance(x, RoundCommitted):
                    committed.append(x)
                if isinstance(x, JobFinished):
                    finished.append(x)
    assert kinds == [(0, "scale-measured"), (0, "stats"), (1, "train"), (2, "train")]
    assert [f.status for f in finished] == [SUCCEEDED]
    pooled = np.concatenate([site_rows(s) for s in SITES]).astype(np.float64)
    got = committed[0].standardization
    assert got is not None and (got.clipped_sites == 0).all()
    np.testing.assert_allclose(got.mean, pooled.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(got.std, pooled.std(axis=0), rtol=1e-6)
    result, _ = e.poll("s0", 0, 5.0)
    assert isinstance(result, DoneView) and result.status == SUCCEEDED


def test_the_stats_step_is_bound_to_the_measured_centre_and_the_scale_step_to_nothing() -> None:
    e = make(rounds=1, standardize=True)
    for s in SITES:
        e.seen(s, 0.0)
    assert e._attempt is not None and e._attempt.kind == "stats-scale"  # noqa: SLF001
    for s in SITES:
        answer(e, s, 1.0, 1.0)
    a = e._attempt  # noqa: SLF001
    assert a is not None and a.kind == "stats" and a.round_number == 0 and e._scale is not None  # noqa: SLF001
    assert a.server.ctx.binding == fstats.centre_binding(*e._scale)  # type: ignore[attr-defined]  # noqa: SLF001


def test_a_site_clipping_a_feature_fails_the_job_naming_it() -> None:
    e = make(rounds=2, standardize=True, features=("area", "smoothness"))
    rows = {s: site_rows(s) for s in SITES}
    rows["s3"] = rows["s3"] * np.array([1.0, 1e6], np.float32)  # one hospital's smoothness in other units
    for s in SITES:
        e.seen(s, 0.0)
    effects = []
    for t in range(2):
        for s in SITES:
            effects += answer(e, s, 1.0, float(t), rows=rows)
    assert not any(isinstance(x, RoundCommitted) for x in effects)
    (finished,) = [x for x in effects if isinstance(x, JobFinished)]
    assert finished.status == FAILED
    assert "'smoothness' (1 site(s))" in finished.reason and "'area'" not in finished.reason
    assert "task.featureRanges" in finished.reason


def test_withdrawn_participant_counts_as_dropped_and_round_still_commits() -> None:
    e = make(quorum=3)
    for s in SITES:
        e.seen(s, 0.0)
    rid = e.current_round_id
    e.contribute("s4", rid, "update", b"", {}, True, 1.0)
    effects = []
    for s in SITES[:4]:
        effects += answer(e, s, 2.0, 1.0)
    (c,) = [x for x in effects if isinstance(x, RoundCommitted)]
    assert c.aggregate.contributors == SITES[:4]


def test_restarted_engine_issues_only_newer_round_ids() -> None:
    e = make()
    for s in SITES:
        e.seen(s, 0.0)
    old = e.current_round_id
    restarted = RoundEngine(e.config, PlaintextMode(), EngineState(next_round=1, last_round_id=old), now=100.0)
    for s in SITES:
        restarted.seen(s, 100.0)
    assert restarted.current_round_id == old + 1
