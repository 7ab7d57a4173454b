"""Scenario: a run of a manifests directory with injected faults (``fedsec simulate``).

A Scenario is checked like a manifest, and then against the job it runs (:func:`check_scenario`):
a fault that names a site the job does not admit, a round or phase the job never has, an answer
count a round never reaches, or a moment an earlier fault has already made impossible is refused
before any process starts. A fault that silently never fires would make a scenario test nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from fedsec.api.errors import FieldError, ManifestError, SitesRefused
from fedsec.api.meta import API_VERSION, ObjectMeta, Spec

if TYPE_CHECKING:
    from fedsec.api.job import FederatedJob
    from fedsec.api.plan import JobPlan

CLIENT_FAULTS = ("drop", "crash", "slow")
TRAIN_PHASE = "train"  # not an aggregation phase: the moment a site has the round's task, before it answers


class Fault(Spec):
    """One injected fault.

    - ``drop``: the client leaves for good when it reaches ``round`` and ``phase``.
    - ``crash``: the client process dies there and is restarted (as a Job's pod would be). A site
      crashes at most once in a run: its restarted client carries on.
    - ``slow``: the client waits ``delaySeconds`` before each answer in ``round`` (every round if unset).
    - ``aggregator-crash``: the aggregator dies in ``round`` after ``afterUpdates`` accepted
      answers (counted over all the round's phases) and is restarted; it resumes from its last
      committed round. It dies once, unless ``everyIncarnation`` is true: then every restarted
      aggregator dies there too (a crash loop), and the job must end Failed once the round's
      ``maxRetries`` attempts are used up.

    ``phase`` (drop and crash only) is ``train`` (after receiving the round's task, before answering)
    or the name of a phase of the job's aggregation mode (``update`` in plaintext mode; ``advertise``,
    ``share``, ``masked-input``, ``consistency``, ``unmask`` under secure aggregation), meaning just
    after the client answered it.
    """

    kind: Literal["drop", "crash", "slow", "aggregator-crash"]
    client: str | None = Field(None, min_length=1, max_length=253)
    round: int | None = Field(None, ge=0)
    phase: str = Field(TRAIN_PHASE, min_length=1, max_length=63)
    delay_seconds: float = Field(0.0, ge=0.0, le=3600.0)
    after_updates: int = Field(0, ge=0)
    every_incarnation: bool = Field(
        False, description="aggregator-crash only: crash in every incarnation, not just the first"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Fault:
        if self.kind in CLIENT_FAULTS and not self.client:
            raise ValueError(f"a {self.kind!r} fault needs 'client'")
        if self.kind == "aggregator-crash" and self.client:
            raise ValueError("an 'aggregator-crash' fault takes no 'client'")
        if self.every_incarnation and self.kind != "aggregator-crash":
            raise ValueError("'everyIncarnation' applies to 'aggregator-crash' faults only")
        if self.kind in ("drop", "crash", "aggregator-crash") and self.round is None:
            raise ValueError(f"a {self.kind!r} fault needs 'round'")
        if self.kind == "slow" and self.delay_seconds <= 0:
            raise ValueError("a 'slow' fault needs delaySeconds > 0")
        # A field the kind ignores would be a promise the run does not keep (a 'slow' fault with a
        # phase is slow in every phase of its round). Compared with the defaults, not by whether the
        # field was written: the run's own config files carry every field of a fault.
        if self.phase != TRAIN_PHASE and self.kind not in ("drop", "crash"):
            raise ValueError(f"'phase' applies to 'drop' and 'crash' faults only, not {self.kind!r}")
        if self.delay_seconds != 0.0 and self.kind != "slow":
            raise ValueError(f"'delaySeconds' applies to 'slow' faults only, not {self.kind!r}")
        if self.after_updates != 0 and self.kind != "aggregator-crash":
            raise ValueError(f"'afterUpdates' applies to 'aggregator-crash' faults only, not {self.kind!r}")
        return self


class ScenarioSpec(Spec):
    manifests: str = Field(min_length=1, max_length=4096, description="manifests directory, relative to this file")
    faults: list[Fault] = Field(default_factory=list, max_length=1000)


class Scenario(Spec):
    api_version: Literal["fedsec.io/v1alpha1"] = Field(API_VERSION)
    kind: Literal["Scenario"] = "Scenario"
    metadata: ObjectMeta
    spec: ScenarioSpec

    @property
    def ref(self) -> str:
        return f"Scenario/{self.metadata.name}"


def manifests_dir(scenario: Scenario, path: str | Path) -> Path:
    """The directory ``scenario`` (read from the file ``path``) runs: relative to that file, so a
    scenario works from any current directory."""
    return (Path(path).parent / scenario.spec.manifests).resolve()


def check_scenario(scenario: Scenario, path: str | Path, *, source: str | None = None) -> list[FieldError]:
    """Everything wrong with ``scenario``, read from the file ``path``, and with the job it runs.

    Loads and plans the manifests directory (``spec.manifests``, relative to ``path``) as
    ``fedsec run`` would, without the sites' ledgers; their own errors come back naming their own
    files. Then every fault is checked against that plan (:func:`check_faults`). Errors about the
    scenario name ``source`` (default ``path``; pass the loader's ``file#N`` for a multi-document file).

    Raises :class:`SitesRefused` when nothing is wrong but the sites' own terms refuse the job, as
    :func:`fedsec.api.plan.plan_job` does; the faults are then checked as far as they can be without
    knowing which sites would be admitted.
    """
    from fedsec.api import loader  # the loader reads Scenarios: imported here, not at module load
    from fedsec.api.plan import plan_job

    src, ref = source or str(path), scenario.ref
    target = manifests_dir(scenario, path)
    if not target.is_dir():
        what = "does not exist" if not target.exists() else "is not a directory"
        return [FieldError("spec.manifests", f"{scenario.spec.manifests!r} ({target}) {what}; it must name a "
                           "directory of FederatedJob and FederatedClient manifests, relative to this file",
                           source=src, obj=ref)]
    try:
        m = loader.load([target])
    except ManifestError as exc:
        return [FieldError("spec.manifests", f"the manifests in {target} are invalid (each problem follows, "
                           "with its own file)", source=src, obj=ref), *exc.errors]
    if len(m.jobs) != 1:
        names = ", ".join(sorted(j.metadata.name for j in m.jobs))
        held = f"{len(m.jobs)} FederatedJobs ({names})" if m.jobs else "no FederatedJob"
        return [FieldError("spec.manifests", f"{target} holds {held}; a Scenario runs the one FederatedJob of "
                           "its manifests directory: keep exactly one there", source=src, obj=ref)]
    job = m.jobs[0]
    try:
        plan = plan_job(job, m.clients)
    except SitesRefused as exc:
        refusals = m.locate(exc.errors)
        errors = _job_fault_errors(scenario.spec.faults, job, src, ref)
        if errors:
            return errors + refusals
        raise SitesRefused(refusals) from None
    except ManifestError as exc:
        return m.locate(exc.errors)
    return check_faults(scenario.spec.faults, plan, source=src, obj=ref)


# -- the faults against the plan -------------------------------------------------------------------


@dataclass(frozen=True)
class _Rounds:
    """Which rounds a job has and which phases each goes through, from the job's own modes."""

    job: FederatedJob

    @property
    def first(self) -> int:
        # Round 0 is the feature-statistics round, run only when the job standardises its inputs.
        return 0 if self.job.spec.task.standardize else 1

    @property
    def last(self) -> int:
        return self.job.spec.rounds

    def allowed(self) -> str:
        if self.first == 0:
            return f"0 (the feature-statistics round) to {self.last}"
        return f"1 to {self.last} (round 0, the feature-statistics round, runs only when task.standardize is true)"

    def phases(self, number: int) -> tuple[str, ...]:
        """The aggregation phases of round ``number``, as its mode names them."""
        from fedsec.aggregation.registry import mode_for  # aggregation sits above api: imported when used

        return mode_for(self.job.spec.secure_aggregation, for_stats=number == 0).info.phases

    def position(self, fault: Fault) -> int:
        """Where in its round a drop or crash fires: 0 for train, k for just after the k-th phase."""
        assert fault.round is not None
        phases = self.phases(fault.round)
        return 0 if fault.phase == TRAIN_PHASE else phases.index(fault.phase) + 1


def _job_fault_errors(faults: Sequence[Fault], job: FederatedJob, source: str, obj: str) -> list[FieldError]:
    """What is wrong with each fault's round and phase, which the job alone decides."""
    rounds, errors = _Rounds(job), []
    for i, f in enumerate(faults):
        err = _round_error(i, f, rounds, source, obj) or _phase_error(i, f, rounds, source, obj)
        if err is not None:
            errors.append(err)
    return errors


def _round_error(i: int, f: Fault, rounds: _Rounds, source: str, obj: str) -> FieldError | None:
    if f.round is None or rounds.first <= f.round <= rounds.last:
        return None
    return FieldError(f"spec.faults[{i}].round", f"round {f.round} never happens: {rounds.job.ref} has "
                      f"{rounds.last} rounds (spec.rounds); allowed: {rounds.allowed()}", source=source, obj=obj)


def _phase_error(i: int, f: Fault, rounds: _Rounds, source: str, obj: str) -> FieldError | None:
    if f.kind not in ("drop", "crash") or f.round is None:
        return None
    phases = rounds.phases(f.round)
    if f.phase == TRAIN_PHASE or f.phase in phases:
        return None
    mode = rounds.job.spec.secure_aggregation.mode
    return FieldError(
        f"spec.faults[{i}].phase",
        f"{f.phase!r} is not a phase of {rounds.job.ref}: under secureAggregation.mode {mode!r} its rounds go "
        f"through {', '.join(phases)}; allowed: {TRAIN_PHASE} (after receiving the round's task, before answering) "
        f"or one of those (just after answering it)", source=source, obj=obj)


def check_faults(faults: Sequence[Fault], plan: JobPlan, *, source: str = "", obj: str = "") -> list[FieldError]:
    """Every fault that cannot fire in a run of ``plan``, each error naming ``spec.faults[i]``.

    A fault can never fire when it names a site the plan does not admit, a round or phase the job
    does not have, more answers than its round can bring, or a moment another fault has already
    ruled out: after its site dropped for good, a second crash of one site (a restarted client does
    not crash again), a second aggregator crash without everyIncarnation (nor any after a crash
    loop began), or a round the job cannot reach because a crash loop or too few remaining sites
    (fewer than the quorum) ends it first. The run's own fault code is what this reasons about.
    """
    rounds = _Rounds(plan.job)
    errors: dict[int, FieldError] = {}  # one error per fault: its first reason

    def refuse(i: int, field: str, message: str) -> None:
        errors.setdefault(i, FieldError(f"spec.faults[{i}].{field}", message, source=source, obj=obj))

    for i, f in enumerate(faults):
        if f.client is not None and f.client not in plan.site_names:
            admitted = ", ".join(plan.site_names) or "none"
            why = (f"is refused by {plan.job.ref} ({plan.refused[f.client]})" if f.client in plan.refused
                   else f"is not a site {plan.job.ref} admits")
            refuse(i, "client", f"{f.client!r} {why}; allowed: an admitted site ({admitted})")
        found = _round_error(i, f, rounds, source, obj) or _phase_error(i, f, rounds, source, obj)
        if found is not None:
            errors.setdefault(i, found)
    valid = [(i, f) for i, f in enumerate(faults) if i not in errors]

    # A site gone for good takes part in nothing after its first drop.
    drops: dict[str, tuple[int, int, int]] = {}  # site -> (round, position, fault index) of its first drop
    for i, f in valid:
        if f.kind == "drop" and f.client is not None and f.round is not None:
            at = (f.round, rounds.position(f), i)
            drops[f.client] = min(drops.get(f.client, at), at)
    first_crash: dict[str, tuple[int, int, int]] = {}
    for i, f in sorted(valid, key=lambda p: _client_order(p, rounds)):
        if f.client is None:
            continue
        gone = drops.get(f.client)
        if gone is not None and gone[2] != i and _after_drop(f, i, gone, rounds):
            refuse(i, "round", f"can never fire: spec.faults[{gone[2]}] drops {f.client} for good in round "
                   f"{gone[0]} ({_moment(faults[gone[2]])}), before this fault's {_moment(f)}")
        elif f.kind == "crash" and f.client in first_crash:
            j = first_crash[f.client][2]
            refuse(i, "round", f"can never fire: spec.faults[{j}] crashes {f.client} first ({_moment(faults[j])}), "
                   "and a site crashes at most once in a run (its restarted client carries on); allowed: "
                   "one crash fault per site")
        elif f.kind == "crash":
            assert f.round is not None
            first_crash[f.client] = (f.round, rounds.position(f), i)

    # Fewer live sites than the quorum: the round cannot commit, and the job ends Failed in it.
    last, why_last = rounds.last, ""
    for number in range(rounds.first, rounds.last + 1):
        left = [s for s in plan.site_names if s not in drops or drops[s][0] >= number]
        if len(left) < plan.quorum:
            gone = ", ".join(f"spec.faults[{drops[s][2]}]" for s in plan.site_names if s not in left)
            last, why_last = number, (
                f"after the drops of {gone} only {len(left)} of {len(plan.site_names)} admitted sites are left in "
                f"round {number}, fewer than the quorum of {plan.quorum}, so the job ends Failed there")
            break
    for i, f in valid:
        if f.round is not None and f.round > last:
            refuse(i, "round", f"can never fire: the job cannot get past round {last}: {why_last}")

    # The aggregator: only the first crash in a run fires, unless crashes repeat in every incarnation.
    for i, f in valid:
        if f.kind == "aggregator-crash" and i not in errors:
            bound, why = _answers_in(f.round or 0, plan, drops, rounds)
            if max(f.after_updates, 1) > bound:
                refuse(i, "afterUpdates", f"can never fire: round {f.round} brings at most {bound} accepted "
                       f"answer(s) ({why}); allowed: 0 to {bound}" if bound else
                       f"can never fire: no site is left to answer in round {f.round} ({why})")
    crashes = sorted((f.round or 0, f.after_updates, i) for i, f in valid
                     if f.kind == "aggregator-crash" and i not in errors)
    loop: tuple[int, int, int] | None = None  # the first crash loop: (round, afterUpdates, fault index)
    for n, (r, a, i) in enumerate(crashes):
        if loop is not None:
            refuse(i, "round", f"can never fire: spec.faults[{loop[2]}] crashes every aggregator in round "
                   f"{loop[0]} after {loop[1]} answer(s) first, so the job ends Failed there")
        elif n > 0 and not faults[i].every_incarnation:
            r0, a0, j = crashes[0]
            refuse(i, "round", f"can never fire: spec.faults[{j}] crashes the aggregator first (round {r0}, after "
                   f"{a0} answer(s)), and a restarted aggregator crashes again only at an everyIncarnation "
                   "fault; allowed: one aggregator-crash, or set everyIncarnation")
        elif faults[i].every_incarnation:
            loop = (r, a, i)
    if loop is not None:
        for i, f in valid:
            if f.round is not None and f.round > loop[0]:
                refuse(i, "round", f"can never fire: the job cannot get past round {loop[0]}: spec.faults[{loop[2]}] "
                       f"crashes every aggregator there, so the job ends Failed in it")
    return [errors[i] for i in sorted(errors)]


def _client_order(p: tuple[int, Fault], rounds: _Rounds) -> tuple[int, float, int]:
    """When in the run a client fault fires: (round, position in it, list order)."""
    i, f = p
    if f.kind == "slow":
        # before each answer of its round: after the train moment, before the first phase's answer
        return (rounds.first if f.round is None else f.round, 0.5, i)
    return (f.round or 0, rounds.position(f), i)


def _after_drop(f: Fault, i: int, drop: tuple[int, int, int], rounds: _Rounds) -> bool:
    """Whether fault ``f`` (index ``i``) would fire only after its site's first drop ``drop``."""
    at = _client_order((i, f), rounds)
    return (at[0], at[1]) > (drop[0], drop[1]) or ((at[0], at[1]) == (drop[0], drop[1]) and i > drop[2])


def _moment(f: Fault) -> str:
    if f.kind == "slow":
        return "every round" if f.round is None else f"round {f.round}"
    if f.kind == "aggregator-crash":
        return f"round {f.round} after {f.after_updates} answer(s)"
    moment = "on receiving its task" if f.phase == TRAIN_PHASE else f"after answering {f.phase}"
    return f"round {f.round}, {moment}"


def _answers_in(number: int, plan: JobPlan, drops: dict[str, tuple[int, int, int]], rounds: _Rounds) -> tuple[int, str]:
    """The most answers the aggregator can accept in one attempt of round ``number``, and how that
    comes about: every live site answers every phase; a site dropped in the round, those before its drop."""
    phases = rounds.phases(number)
    total, lost = 0, []
    for s in plan.site_names:
        d = drops.get(s)
        if d is None or d[0] > number:
            total += len(phases)
        else:
            total += d[1] if d[0] == number else 0
            lost.append(f"spec.faults[{d[2]}]")
    why = f"{len(plan.site_names)} admitted site(s) x {len(phases)} phase(s): {', '.join(phases)}"
    if lost:
        why += f"; fewer after the drops of {', '.join(lost)}"
    return total, why
