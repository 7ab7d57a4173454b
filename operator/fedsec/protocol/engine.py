"""The round engine: who takes part, when a round starts and ends, quorum, retries. Pure.

The engine consumes events (a client joined, polled, answered; time passed) and returns what the
driver must do (start a round, commit an aggregate, discard an attempt, finish the job). It never
touches sockets, files or clocks; ``now`` is always passed in. The aggregation protocol of the
round (plaintext, secagg, ...) is a :class:`~fedsec.aggregation.base.ServerProtocol` the engine
drives phase by phase.

Rules, each in one place here:
- A *round* is a logical step of training (number 0 is the feature-statistics round when the job
  standardises inputs, then 1..rounds). Round 0 has two steps (:mod:`fedsec.protocol.stats`):
  ``stats-scale``, whose aggregate only yields the public centre and scale (kept in memory, never
  committed: after a restart round 0 starts again from it), then ``stats``, bound to that centre
  and scale, whose aggregate is committed as round 0 with the standardisation it gives. A ``stats``
  aggregate in which some site clipped a feature fails the job, naming the feature: a retry would
  clip the same data again. An *attempt* of a round has a fresh round id; ids only
  grow, also across restarts, so a message of an earlier attempt is always stale.
- An attempt starts once the quorum of sites is live and either every site is live or the start
  grace (the round timeout) has passed since it could have started. At the grace's end it starts
  with whoever is live; below the quorum it is discarded at once.
- A phase ends when every expected participant answered (or withdrew), or at its deadline; a
  participant that did not answer is marked dropped until it shows up again.
- A round commits only with at least ``required`` contributors (the quorum, raised by the mode's
  threshold; :func:`fedsec.protocol.terms.required_survivors`) and only with a finite aggregate;
  otherwise the attempt is discarded and retried under a new id. After ``max_retries`` retries of
  the same round the job fails with the reason of the last attempt.
- The round seed is :func:`fedsec.protocol.terms.round_seed` of (job uid, round id), which every
  site re-derives; the weight bound is the mode's public one, never a participant's declaration.
- Sites the protocol blames for an attempt (an invalid key, shares that do not open) sit out the
  retries of that round; they are back for the next round.
- An error inside the aggregation protocol (a bug, or input no check foresaw) aborts the attempt
  with the error as its reason; it never escapes to the driver, whose serving thread must live on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fedsec.aggregation.base import (
    Aborted,
    Aggregate,
    AggregationMode,
    Finished,
    NextPhase,
    ProtocolRejection,
    RoundContext,
    ServerProtocol,
    TensorSpec,
)
from fedsec.protocol import stats as fstats
from fedsec.protocol.rejections import Rejected
from fedsec.protocol.terms import SCALE, STATS, TRAIN, required_survivors, round_seed
RUNNING, SUCCEEDED, FAILED = "Running", "Succeeded", "Failed"


@dataclass(frozen=True)
class EngineConfig:
    job_uid: str
    sites: tuple[str, ...]
    rounds: int
    standardize: bool
    quorum: int
    round_timeout_s: float
    join_timeout_s: float
    max_retries: int
    model_specs: tuple[TensorSpec, ...]
    stats_specs: tuple[TensorSpec, ...]  # the second statistics step (``stats``)
    scale_specs: tuple[TensorSpec, ...] = ()  # the first (``stats-scale``)
    feature_names: tuple[str, ...] = ()  # to name a clipped feature in the job's failure reason


@dataclass
class EngineState:
    """What must survive a restart. The driver persists it whenever an effect says so."""

    next_round: int  # logical round to run next
    last_round_id: int = 0  # highest id ever issued
    attempt: int = 0  # attempts of next_round so far
    attempts_total: int = 0
    status: str = RUNNING
    reason: str = ""


# --- effects: what the driver must do -----------------------------------------------------------


@dataclass(frozen=True)
class RoundStarted:
    round_id: int
    round_number: int
    kind: str
    participants: tuple[str, ...]
    attempt: int


@dataclass(frozen=True)
class RoundCommitted:
    round_id: int
    round_number: int
    kind: str
    aggregate: Aggregate
    participants: tuple[str, ...]
    site_metrics: dict[str, dict[str, float]]
    seconds: float
    standardization: fstats.Standardization | None = None  # a ``stats`` round: what to set input_norm to


@dataclass(frozen=True)
class ScaleMeasured:
    """Round 0's first step finished: the driver puts ``centre`` and ``scale`` in the model's
    ``input_norm`` before the second step's first task leaves (it carries them to the sites)."""

    round_id: int
    round_number: int
    centre: np.ndarray
    scale: np.ndarray
    contributors: tuple[str, ...]
    seconds: float


@dataclass(frozen=True)
class RoundDiscarded:
    round_id: int
    round_number: int
    attempt: int
    reason: str


@dataclass(frozen=True)
class SitesBlamed:
    """The protocol blamed these sites (site -> why) in an attempt; they sit out the round's retries."""

    round_id: int
    round_number: int
    blamed: Mapping[str, str]


@dataclass(frozen=True)
class JobFinished:
    status: str
    reason: str


Effect = RoundStarted | RoundCommitted | ScaleMeasured | RoundDiscarded | SitesBlamed | JobFinished


# --- what a poll gets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskView:
    """The engine's half of a Task; the driver adds the model bytes on a round's first phase."""

    round_id: int
    round_number: int
    kind: str
    phase: str
    first_phase: bool
    request: bytes
    seed: bytes
    participants: tuple[str, ...]
    min_survivors: int


@dataclass(frozen=True)
class WaitView:
    reason: str


@dataclass(frozen=True)
class DoneView:
    status: str
    reason: str


PollResult = TaskView | WaitView | DoneView


@dataclass
class _Attempt:
    round_id: int
    round_number: int
    kind: str
    participants: tuple[str, ...]
    server: ServerProtocol
    required: int
    started_at: float
    phase_deadline: float
    first_phase: str
    seed: bytes
    answered: set[str] = field(default_factory=set)  # answered the current phase
    withdrawn: set[str] = field(default_factory=set)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def _unsound(agg: Aggregate) -> str:
    """Why an aggregate must not be committed ('' when it may): a non-finite weight or coordinate
    would poison the model for every later round."""
    if not (np.isfinite(agg.total_weight) and agg.total_weight > 0):
        return f"total weight {agg.total_weight}"
    for name, arr in agg.mean_delta.items():
        if not np.isfinite(arr).all():
            return f"tensor {name!r} holds NaN or infinity"
    return ""


class _FailedServer(ServerProtocol):
    """Stands in for a protocol that could not start a round: the round ends at once with why."""

    def __init__(self, reason: str) -> None:
        self._reason = reason

    @property
    def phase(self) -> str:
        return "failed"

    def expected(self) -> frozenset[str]:
        return frozenset()

    def request_for(self, client_id: str) -> bytes | None:
        return None

    def receive(self, client_id: str, body: bytes) -> None:
        raise ProtocolRejection("not_expected", "the round could not start")

    def close_phase(self) -> Aborted:
        return Aborted(self._reason)


class RoundEngine:
    def __init__(
        self,
        config: EngineConfig,
        mode: AggregationMode,
        state: EngineState,
        now: float,
        stats_mode: AggregationMode | None = None,
    ) -> None:
        if config.quorum > len(config.sites):
            raise ValueError(f"quorum {config.quorum} exceeds the {len(config.sites)} sites")
        self.config = config
        self.mode = mode
        self.stats_mode = stats_mode or mode
        self.state = state
        self._excluded: dict[str, str] = {}  # blamed in an attempt of the current round: site -> why
        self._sites = frozenset(config.sites)
        self._live: set[str] = set()
        self._dropped: set[str] = set()
        self._created_at = now
        self._gathering = True  # until the first attempt starts
        self._quorum_since: float | None = None
        self._pending_since: float | None = None
        self._attempt: _Attempt | None = None
        self._pending_effects: list[Effect] = []
        self._finished_effect_sent = state.status != RUNNING
        self._scale: tuple[np.ndarray, np.ndarray] | None = None  # round 0's centre and scale, once measured

    # -- queries --------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.state.status != RUNNING

    @property
    def current_round_id(self) -> int:
        return self._attempt.round_id if self._attempt else self.state.last_round_id

    @property
    def current_round_number(self) -> int:
        """The round under way, or the next to start."""
        return self._attempt.round_number if self._attempt else self.state.next_round

    @property
    def live_sites(self) -> frozenset[str]:
        return frozenset(self._live - self._dropped)

    def site_states(self) -> dict[str, str]:
        """Each site as the engine sees it now: live, dropped (silent since it missed a phase), unseen."""
        return {
            s: "dropped" if s in self._dropped else "live" if s in self._live else "unseen"
            for s in sorted(self._sites)
        }

    def next_deadline(self, now: float) -> float | None:
        """When ``tick`` next has something to do (None: only an event can change anything)."""
        if self.finished:
            return None
        if self._attempt is not None:
            return self._attempt.phase_deadline
        if not self._gathering:
            return (self._pending_since or now) + self.config.round_timeout_s
        join_deadline = self._created_at + self.config.join_timeout_s
        if self._quorum_since is not None:
            return min(join_deadline, self._quorum_since + self.config.round_timeout_s)
        return join_deadline

    # -- events ---------------------------------------------------------------------------------

    def seen(self, site: str, now: float) -> list[Effect]:
        """Any authenticated message from ``site``: it is live again."""
        if site not in self._sites:
            raise Rejected("unknown-sender", f"{site!r} is not one of this job's {len(self._sites)} admitted sites")
        self._live.add(site)
        self._dropped.discard(site)
        return self.tick(now)

    def poll(self, site: str, last_round_id: int, now: float) -> tuple[PollResult, list[Effect]]:
        effects = self.seen(site, now)
        if self.finished:
            return DoneView(self.state.status, self.state.reason), effects
        a = self._attempt
        if a is None:
            return WaitView(self._wait_reason()), effects
        if site not in a.participants:
            return WaitView(f"round {a.round_number} is under way without this site; it joins the next one"), effects
        if site in a.answered or site in a.withdrawn or site not in a.server.expected():
            return WaitView(f"waiting for the other participants of round {a.round_number}"), effects
        try:
            request = a.server.request_for(site)
        except Exception as exc:  # noqa: BLE001 - a protocol bug must end this attempt, not the server
            return WaitView(f"round {a.round_number} was aborted"), effects + self._protocol_failed(now, "building a request", exc)
        if request is None:
            return WaitView(f"nothing to do in phase {a.server.phase}"), effects
        return (
            TaskView(
                round_id=a.round_id,
                round_number=a.round_number,
                kind=a.kind,
                phase=a.server.phase,
                first_phase=a.server.phase == a.first_phase,
                request=request,
                seed=a.seed,
                participants=a.participants,
                min_survivors=a.required,
            ),
            effects,
        )

    def contribute(
        self,
        site: str,
        round_id: int,
        phase: str,
        response: bytes,
        metrics: dict[str, float],
        withdraw: bool,
        now: float,
    ) -> list[Effect]:
        """An answer to the current phase. Raises :class:`Rejected`; protocol errors included."""
        effects = self.seen(site, now)
        if self.finished:
            raise Rejected("job-finished", f"the job has finished ({self.state.status})")
        a = self._attempt
        if a is None or round_id != a.round_id:
            current = f"round id {a.round_id}" if a else "no round"
            raise Rejected("stale-round", f"answer is for round id {round_id}; the current is {current}")
        if site not in a.participants:
            raise Rejected("not-participant", f"{site!r} is not a participant of round {a.round_number}")
        if phase != a.server.phase:
            raise Rejected("wrong-phase", f"answer is for phase {phase!r}; the current is {a.server.phase!r}")
        if site in a.answered or site in a.withdrawn or site not in a.server.expected():
            raise Rejected("duplicate", f"{site!r} already answered phase {phase!r} of round {a.round_number}")
        if withdraw:
            a.withdrawn.add(site)
        else:
            try:
                a.server.receive(site, response)
            except ProtocolRejection as exc:
                raise Rejected("invalid-update", exc.detail) from None
            except Exception as exc:  # noqa: BLE001 - see _protocol_failed
                self._pending_effects = effects + self._protocol_failed(now, f"taking {site!r}'s answer", exc)
                raise Rejected("invalid-update", f"the aggregation protocol failed on this answer ({type(exc).__name__})") from None
            a.answered.add(site)
            if metrics and phase == a.first_phase:
                a.metrics[site] = dict(metrics)
        return effects + self._maybe_close_phase(now)

    def take_pending(self) -> list[Effect]:
        """Effects that arose while a call ended in :class:`Rejected` (an attempt aborted by a
        protocol error in :meth:`contribute`); the driver carries them out after the refusal."""
        pending, self._pending_effects = self._pending_effects, []
        return pending

    def tick(self, now: float) -> list[Effect]:
        """Let time pass: start a round, close a phase at its deadline, or give up on joining."""
        if self.finished:
            return self._finish_once()
        if self._attempt is not None:
            if now >= self._attempt.phase_deadline:
                return self._close_phase(now, deadline=True)
            return []
        return self._maybe_start(now)

    def fail(self, reason: str) -> list[Effect]:
        """The driver hit an error it cannot recover from (e.g. the aggregate is unusable)."""
        self._attempt = None
        self.state.status, self.state.reason = FAILED, reason
        return self._finish_once()

    # -- internals ------------------------------------------------------------------------------

    def _wait_reason(self) -> str:
        live = len(self.live_sites)
        if live < self.config.quorum:
            return f"{live} of {len(self._sites)} sites are live; round {self.state.next_round} needs {self.config.quorum}"
        return f"round {self.state.next_round} starts when every site is live or the start grace ends"

    def _maybe_start(self, now: float) -> list[Effect]:
        live = self.live_sites - self._excluded.keys()
        enough = len(live) >= self.config.quorum
        if self._gathering:
            # Fresh or restarted: give late sites the start grace once the quorum is there.
            if not enough:
                self._quorum_since = None
                if now >= self._created_at + self.config.join_timeout_s:
                    return self.fail(
                        f"only {len(live)} of {len(self._sites)} sites joined within "
                        f"{self.config.join_timeout_s:g}s; the quorum needs {self.config.quorum}. "
                        "Check that the clients run and can reach the aggregator (address, certificates)."
                    )
                return []
            if self._quorum_since is None:
                self._quorum_since = now
            if live == self._sites - self._excluded.keys() or now >= self._quorum_since + self.config.round_timeout_s:
                return self._start(now, tuple(sorted(live)))
            return []
        if enough:
            return self._start(now, tuple(sorted(live)))
        if self._pending_since is None:
            self._pending_since = now
        if now >= self._pending_since + self.config.round_timeout_s:
            # Participants did not come back in time: this attempt of the round is lost too.
            return self._discard_without_start(
                now, f"only {len(live)} of {len(self._sites)} sites were live; the quorum is {self.config.quorum}"
            )
        return []

    def _start(self, now: float, participants: tuple[str, ...]) -> list[Effect]:
        number = self.state.next_round
        kind, specs, mode = TRAIN, self.config.model_specs, self.mode
        if self.config.standardize and number == 0:
            kind = SCALE if self._scale is None else STATS
            specs = self.config.scale_specs if kind == SCALE else self.config.stats_specs
            mode = self.stats_mode
        binding = fstats.centre_binding(*self._scale) if kind == STATS and self._scale is not None else b""
        self.state.last_round_id += 1
        self.state.attempt += 1
        self.state.attempts_total += 1
        round_id = self.state.last_round_id
        # May exceed the participants (e.g. a secagg threshold the round cannot meet): then the
        # round ends at once below and its protocol says why.
        required = required_survivors(mode, len(participants), self.config.quorum)
        seed = round_seed(self.config.job_uid, round_id)
        ctx = RoundContext(
            job_uid=self.config.job_uid,
            round_id=round_id,
            participants=participants,
            min_survivors=min(required, len(participants)),
            tensor_specs=specs,
            seed=seed,
            binding=binding,
        )
        try:
            server = mode.server(ctx)
        except Exception as exc:  # noqa: BLE001 - a round the protocol cannot set up is lost, the job is not
            server = _FailedServer(f"the aggregation protocol could not start the round: {type(exc).__name__}: {exc}")
        self._attempt = _Attempt(
            round_id=round_id,
            round_number=number,
            kind=kind,
            participants=participants,
            server=server,
            required=required,
            started_at=now,
            phase_deadline=now + self.config.round_timeout_s,
            first_phase=server.phase,
            seed=seed,
        )
        self._gathering = False
        self._quorum_since = self._pending_since = None
        effects: list[Effect] = [RoundStarted(round_id, number, kind, participants, self.state.attempt)]
        if len(participants) < required or isinstance(server, _FailedServer):
            effects += self._close_phase(now, deadline=True)
        return effects

    def _maybe_close_phase(self, now: float) -> list[Effect]:
        a = self._attempt
        if a is None:
            return []
        try:
            waiting = a.server.expected() - a.answered - a.withdrawn
            # Withdrawn sites still count among the protocol's survivors only in the phase they withdrew
            # from (they are still expected there); in later phases the protocol has dropped them itself.
            short = a.server.survivors() - len(a.withdrawn & a.server.expected()) < a.required
        except Exception as exc:  # noqa: BLE001 - see _protocol_failed
            return self._protocol_failed(now, "counting survivors", exc)
        if not waiting:
            return self._close_phase(now, deadline=False)
        if short:
            return self._close_phase(now, deadline=True)
        return []

    def _close_phase(self, now: float, deadline: bool) -> list[Effect]:
        a = self._attempt
        assert a is not None
        try:
            missing = a.server.expected() - a.answered
            if deadline:
                self._dropped |= missing  # silent until they show up again
            outcome = a.server.close_phase()
        except Exception as exc:  # noqa: BLE001 - see _protocol_failed
            return self._protocol_failed(now, "closing a phase", exc)
        if isinstance(outcome, NextPhase):
            a.answered.clear()
            a.phase_deadline = now + self.config.round_timeout_s
            return self._maybe_close_phase(now)
        self._attempt = None
        effects = self._blame(a)
        if isinstance(outcome, Finished):
            agg = outcome.aggregate
            if len(agg.contributors) < a.required:
                return effects + self._discard(a, now, f"{len(agg.contributors)} contributors; the quorum is {a.required}")
            unsound = _unsound(agg)
            if unsound:
                return effects + self._discard(a, now, f"the aggregate is unusable ({unsound}); nothing was committed")
            if a.kind == SCALE:
                return effects + self._scale_measured(a, agg, now)
            standardization = None
            if a.kind == STATS:
                assert self._scale is not None  # a stats step starts only once the scale is measured
                standardization = fstats.pooled_moments(agg.mean_delta, agg.total_weight, *self._scale)
                clipped = fstats.clipping_reason(standardization, self.config.feature_names)
                if clipped:
                    return effects + self.fail(f"round 0: {clipped}")
            self.state.next_round += 1
            self.state.attempt = 0
            self._excluded.clear()
            effects += [
                RoundCommitted(
                    a.round_id,
                    a.round_number,
                    a.kind,
                    agg,
                    a.participants,
                    {k: v for k, v in a.metrics.items() if k in agg.contributors},
                    now - a.started_at,
                    standardization,
                )
            ]
            if self.state.next_round > self.config.rounds:
                self.state.status = SUCCEEDED
                self.state.reason = f"trained {self.config.rounds} rounds"
                effects += self._finish_once()
            else:
                effects += self._maybe_start(now)
            return effects
        assert isinstance(outcome, Aborted)
        return effects + self._discard(a, now, outcome.reason)

    def _scale_measured(self, a: _Attempt, agg: Aggregate, now: float) -> list[Effect]:
        """Round 0's first step is done: keep its centre and scale for the second, which starts now.
        The round's retries start over (the first step succeeded); the round is not committed."""
        self._scale = fstats.pooled_scale(agg.mean_delta)
        self.state.attempt = 0
        self._excluded.clear()
        effect = ScaleMeasured(a.round_id, a.round_number, *self._scale, agg.contributors, now - a.started_at)
        return [effect, *self._maybe_start(now)]

    def _blame(self, a: _Attempt) -> list[Effect]:
        try:
            blamed = {s: r for s, r in a.server.blamed().items() if s in a.participants}
        except Exception:  # noqa: BLE001 - blame is advice; an attempt's outcome must not depend on it
            return []
        if not blamed:
            return []
        self._excluded.update(blamed)
        return [SitesBlamed(a.round_id, a.round_number, dict(blamed))]

    def _protocol_failed(self, now: float, what: str, exc: Exception) -> list[Effect]:
        """The aggregation protocol raised where it must not: end the attempt with the error as its
        reason (the driver audits it) and carry on with a retry, as for any aborted attempt."""
        a = self._attempt
        if a is None:
            return []
        self._attempt = None
        return self._discard(a, now, f"internal error in the aggregation protocol while {what}: "
                                     f"{type(exc).__name__}: {exc}"[:500])

    def _discard(self, a: _Attempt, now: float, reason: str) -> list[Effect]:
        effects: list[Effect] = [RoundDiscarded(a.round_id, a.round_number, self.state.attempt, reason)]
        return effects + self._after_discard(now, a.round_number, reason)

    def _discard_without_start(self, now: float, reason: str) -> list[Effect]:
        self.state.last_round_id += 1
        self.state.attempt += 1
        self.state.attempts_total += 1
        effects: list[Effect] = [
            RoundDiscarded(self.state.last_round_id, self.state.next_round, self.state.attempt, reason)
        ]
        return effects + self._after_discard(now, self.state.next_round, reason)

    def _after_discard(self, now: float, number: int, reason: str) -> list[Effect]:
        if self.state.attempt > self.config.max_retries:
            return self.fail(
                f"round {number} missed its quorum in {self.state.attempt} attempts "
                f"(maxRetries is {self.config.max_retries}); last attempt: {reason}"
            )
        self._pending_since = now
        return self._maybe_start(now)

    def _finish_once(self) -> list[Effect]:
        if self._finished_effect_sent:
            return []
        self._finished_effect_sent = True
        return [JobFinished(self.state.status, self.state.reason)]
