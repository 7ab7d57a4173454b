"""What a site admitted: the reference its client checks every round against. Pure.

A site decides to join a job on the job's spec and the plan (which sites take part, how many a
round needs). From then on the aggregator is the party the protocol protects the site from, so
the site keeps its own copy of what it agreed to and refuses every Task that departs from it
(:mod:`fedsec.protocol.terms`). The job spec itself travels in the client's configuration; this
record adds what the plan decided and a digest that binds the two, so a configuration whose job
was edited after admission is refused at start rather than trained under.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedsec.api.job import FederatedJob


def spec_digest(job: FederatedJob) -> str:
    """SHA-256 of the job's spec in a canonical JSON form (sorted keys, no whitespace)."""
    doc = job.spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class AdmittedPlan(BaseModel):
    """The job plan as one site admitted it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_uid: str = Field(min_length=1)
    spec_digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="spec_digest() of the admitted job")
    roster: tuple[str, ...] = Field(min_length=1, description="every admitted site, sorted: the only possible participants")
    quorum: int = Field(ge=1, description="least contributors a round commits with")

    @field_validator("roster")
    @classmethod
    def _sorted_unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if list(v) != sorted(set(v)):
            raise ValueError("the roster must be sorted and without duplicates")
        return v

    @classmethod
    def of(cls, job: FederatedJob, job_uid: str, roster: list[str] | tuple[str, ...], quorum: int) -> AdmittedPlan:
        return cls(job_uid=job_uid, spec_digest=spec_digest(job), roster=tuple(sorted(roster)), quorum=quorum)

    def matches(self, job: FederatedJob, job_uid: str) -> str | None:
        """Why ``job`` (with ``job_uid``) is not the job this plan admitted; None when it is."""
        if job_uid != self.job_uid:
            return f"the configuration names job uid {job_uid!r}, the site admitted {self.job_uid!r}"
        if spec_digest(job) != self.spec_digest:
            return "the job's spec differs from the spec the site admitted (spec digest mismatch)"
        if self.quorum > len(self.roster):
            return f"the admitted quorum {self.quorum} exceeds the {len(self.roster)} admitted sites"
        return None
