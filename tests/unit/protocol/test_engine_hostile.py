"""The engine against a protocol that breaks or is broken by a participant: the attempt is lost,
the engine (and so the aggregator's serving threads) lives on; blamed sites sit out the retries;
an unusable aggregate is never committed; the round's terms are the ones sites derive."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from fedsec.aggregation.base import Aborted, Aggregate, ClientProtocol, Finished, PhaseOutcome, ServerProtocol
from fedsec.aggregation.plaintext import PlaintextMode
from fedsec.protocol.engine import (
    EngineState,
    RoundCommitted,
    RoundDiscarded,
    RoundEngine,
    RoundStarted,
    SitesBlamed,
    TaskView,
)
from fedsec.protocol.rejections import Rejected
from fedsec.protocol.terms import round_seed
from test_engine import SITES, SPECS, answer, make


class _Scripted(ServerProtocol):
    """One phase, ``update``; ``fail`` names where it raises, ``outcome`` what it ends with."""

    def __init__(self, participants: tuple[str, ...], fail: str = "", outcome: PhaseOutcome | None = None,
                 blame: Mapping[str, str] | None = None) -> None:
        self._waiting = set(participants)
        self._n = len(participants)
        self._fail, self._outcome, self._blame = fail, outcome, dict(blame or {})

    @property
    def phase(self) -> str:
        return "update"

    def expected(self) -> frozenset[str]:
        return frozenset(self._waiting)

    def survivors(self) -> int:
        return self._n  # an answer does not make a participant less able to contribute

    def request_for(self, client_id: str) -> bytes | None:
        if self._fail == "request":
            raise KeyError("a bug in building a request")
        return b"go"

    def receive(self, client_id: str, body: bytes) -> None:
        if self._fail == "receive":
            raise ValueError("an input no check foresaw")
        self._waiting.discard(client_id)

    def close_phase(self) -> PhaseOutcome:
        if self._fail == "close":
            raise ValueError("low-order point in the last step")
        assert self._outcome is not None
        return self._outcome

    def blamed(self) -> dict[str, str]:
        return self._blame


class _Mode(PlaintextMode):
    def __init__(self, **kw: object) -> None:
        self.kw = kw
        self.contexts: list = []

    def server(self, ctx):  # type: ignore[no-untyped-def]
        self.contexts.append(ctx)
        return _Scripted(ctx.participants, **self.kw)  # type: ignore[arg-type]

    def client(self, ctx, identity, update) -> ClientProtocol:  # type: ignore[no-untyped-def]
        raise AssertionError("not used")


def _engine(**kw: object) -> tuple[RoundEngine, _Mode]:
    mode = _Mode(**kw)
    e = RoundEngine(make(quorum=3, retries=3).config, mode, EngineState(next_round=1), now=0.0)
    for s in SITES:
        e.seen(s, 0.0)
    return e, mode


def _all_answer(e, now: float = 1.0) -> list:  # type: ignore[no-untyped-def]
    effects = []
    for s in SITES:
        task, _ = e.poll(s, 0, now)
        if isinstance(task, TaskView):
            effects += e.contribute(s, task.round_id, task.phase, b"x", {}, False, now)
    return effects


def test_a_protocol_error_closing_a_phase_discards_the_attempt_and_the_engine_goes_on() -> None:
    e, _ = _engine(fail="close")
    effects = _all_answer(e)
    (discarded,) = [x for x in effects if isinstance(x, RoundDiscarded)]
    assert "internal error in the aggregation protocol while closing a phase: ValueError" in discarded.reason
    assert any(isinstance(x, RoundStarted) and x.attempt == 2 for x in effects)  # the retry is under way


def test_a_protocol_error_on_an_answer_refuses_it_and_the_driver_gets_the_discard() -> None:
    e, _ = _engine(fail="receive")
    task, _ = e.poll("s0", 0, 1.0)
    assert isinstance(task, TaskView)
    with pytest.raises(Rejected) as exc:
        e.contribute("s0", task.round_id, task.phase, b"x", {}, False, 1.0)
    assert exc.value.reason == "invalid-update"
    pending = e.take_pending()
    assert any(isinstance(x, RoundDiscarded) and "ValueError" in x.reason for x in pending)
    assert e.take_pending() == []


def test_a_protocol_error_building_a_request_ends_the_attempt_not_the_poll() -> None:
    e, _ = _engine(fail="request")
    result, effects = e.poll("s0", 0, 1.0)
    assert not isinstance(result, TaskView)
    assert any(isinstance(x, RoundDiscarded) and "building a request" in x.reason for x in effects)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_aggregate_is_never_committed(bad: float) -> None:
    agg = Aggregate({"w": np.array([0.0, bad, 0.0], np.float32)}, 5.0, SITES)
    e, _ = _engine(outcome=Finished(agg))
    effects = _all_answer(e)
    assert not any(isinstance(x, RoundCommitted) for x in effects)
    (discarded,) = [x for x in effects if isinstance(x, RoundDiscarded)]
    assert "unusable" in discarded.reason and "NaN or infinity" in discarded.reason


def test_blamed_sites_sit_out_the_round_s_retries_then_come_back() -> None:
    e, mode = _engine(outcome=Aborted("secure aggregation: shares did not open"), blame={"s4": "bad_key"})
    effects = _all_answer(e)
    assert [x.blamed for x in effects if isinstance(x, SitesBlamed)] == [{"s4": "bad_key"}]
    (retry,) = [x for x in effects if isinstance(x, RoundStarted)]
    assert "s4" not in retry.participants and retry.participants == SITES[:4]
    # the retry commits without it; the next round has it back
    mode.kw = {"outcome": Finished(Aggregate({"w": np.zeros(3, np.float32)}, 4.0, SITES[:4]))}
    e._attempt.server = _Scripted(retry.participants, **mode.kw)  # type: ignore[union-attr]  # noqa: SLF001
    effects = _all_answer(e, 2.0)
    assert any(isinstance(x, RoundCommitted) for x in effects)
    nxt = [x for x in effects if isinstance(x, RoundStarted)]
    assert nxt and nxt[-1].participants == SITES


def test_the_round_seed_is_the_one_sites_derive() -> None:
    e = make()
    for s in SITES:
        e.seen(s, 0.0)
    task, _ = e.poll("s0", 0, 0.5)
    assert isinstance(task, TaskView) and task.seed == round_seed("job", task.round_id)
    assert task.min_survivors == 3  # the quorum: plaintext has no threshold of its own
    answer(e, "s0", 1.0, 1.0)
