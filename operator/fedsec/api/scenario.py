"""Scenario: a run of a manifests directory with injected faults (``fedsec simulate``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedsec.api.meta import API_VERSION, ObjectMeta, Spec

CLIENT_FAULTS = ("drop", "crash", "slow")


class Fault(Spec):
    """One injected fault.

    - ``drop``: the client leaves for good when it reaches ``round`` and ``phase``.
    - ``crash``: the client process dies there and is restarted (as a Job's pod would be).
    - ``slow``: the client waits ``delaySeconds`` before answering in ``round`` (every round if unset).
    - ``aggregator-crash``: the aggregator dies in ``round`` after ``afterUpdates`` accepted
      answers and is restarted; it resumes from its last committed round. It dies once, unless
      ``everyIncarnation`` is true: then every restarted aggregator dies there too (a crash loop),
      and the job must end Failed once the round's ``maxRetries`` attempts are used up.

    ``phase`` is ``train`` (after receiving the round's task, before answering) or the name of an
    aggregation phase (``update`` in plaintext mode), meaning just after the client answered it.
    """

    kind: Literal["drop", "crash", "slow", "aggregator-crash"]
    client: str | None = None
    round: int | None = Field(None, ge=0)
    phase: str = "train"
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
        return self


class ScenarioSpec(Spec):
    manifests: str = Field(min_length=1, description="manifests directory, relative to this file")
    faults: list[Fault] = Field(default_factory=list, max_length=1000)


class Scenario(Spec):
    api_version: Literal["fedsec.io/v1alpha1"] = Field(API_VERSION)
    kind: Literal["Scenario"] = "Scenario"
    metadata: ObjectMeta
    spec: ScenarioSpec

    @property
    def ref(self) -> str:
        return f"Scenario/{self.metadata.name}"
