"""From validated manifests to a plan: which sites join a job, and how many a round needs.

Pure: no I/O. The local runner and the operator both call :func:`plan_job`, so the admission and
quorum rules live here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedsec.api.client import FederatedClient
from fedsec.api.errors import FieldError, ManifestError
from fedsec.api.job import FederatedJob
from fedsec.api.support import unsupported_in_client, unsupported_in_job


@dataclass(frozen=True)
class JobPlan:
    job: FederatedJob
    admitted: tuple[FederatedClient, ...]  # sorted by name
    refused: dict[str, str]  # site name -> reason, for sites the selector matched but that cannot join
    quorum: int  # least updates a round commits with

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(c.metadata.name for c in self.admitted)


def select_clients(job: FederatedJob, clients: Sequence[FederatedClient]) -> list[FederatedClient]:
    return sorted(
        (c for c in clients if job.spec.clients.selector.matches(c.metadata.labels)),
        key=lambda c: c.metadata.name,
    )


def plan_job(job: FederatedJob, clients: Sequence[FederatedClient]) -> JobPlan:
    """Admit the selected sites and check the job can run with them; raise ManifestError if not."""
    errors: list[FieldError] = list(unsupported_in_job(job))
    selected = select_clients(job, clients)
    for c in selected:
        errors.extend(unsupported_in_client(c))
    if not selected:
        errors.append(
            FieldError(
                "spec.clients.selector",
                f"selects none of the {len(clients)} FederatedClient(s); check their labels",
                obj=job.ref,
            )
        )
    names = [c.metadata.name for c in selected]
    if len(set(names)) != len(names):
        errors.append(
            FieldError("spec.clients.selector", "selects two sites with the same name in different namespaces", obj=job.ref)
        )
    quorum = job.spec.quorum.required(len(selected)) if selected else 0
    if selected and quorum > len(selected):
        errors.append(
            FieldError(
                "spec.quorum.minClients",
                f"the quorum needs {quorum} clients but the selector admits only {len(selected)}",
                obj=job.ref,
            )
        )
    errors.extend(_holdout_overlap(job, selected))
    if selected and quorum <= len(selected):
        errors.extend(_secagg_consistency(job, quorum, len(selected)))
    if errors:
        raise ManifestError(errors)
    return JobPlan(job=job, admitted=tuple(selected), refused={}, quorum=quorum)


def _holdout_overlap(job: FederatedJob, sites: Sequence[FederatedClient]) -> list[FieldError]:
    """A builtin holdout must not share rows with the sites' partitions of the same dataset."""
    holdout = job.spec.evaluation.holdout
    if holdout is None or holdout.builtin is None:
        return []
    errors = []
    for c in sites:
        b = c.spec.data.builtin
        if b is None or b.name != holdout.builtin.name:
            continue
        if (b.holdout_fraction, b.seed) != (holdout.builtin.holdout_fraction, holdout.builtin.seed):
            errors.append(
                FieldError(
                    "spec.data.builtin",
                    f"holdoutFraction/seed ({b.holdout_fraction}, {b.seed}) differ from the job's holdout "
                    f"({holdout.builtin.holdout_fraction}, {holdout.builtin.seed}): the site's rows could "
                    "overlap the holdout; use the same values",
                    obj=c.ref,
                )
            )
    return errors


def _secagg_consistency(job: FederatedJob, quorum: int, sites: int) -> list[FieldError]:
    """One story for quorum and threshold: every round size the quorum allows must be unmaskable."""
    sa = job.spec.secure_aggregation
    if sa.mode != "secagg":
        return []
    from fedsec.aggregation.registry import secagg_config
    from fedsec.aggregation.secagg.config import check_consistency

    try:
        check_consistency(secagg_config(sa), quorum=quorum, max_participants=sites)
    except ValueError as exc:
        field, _, message = str(exc).partition(": ")
        path = {
            "threshold": "spec.secureAggregation.threshold",
            "quorum": "spec.quorum",
            "quantization_bits": "spec.secureAggregation.quantizationBits",
            "clip_range": "spec.secureAggregation.clipRange",
            "neighbours": "spec.secureAggregation.neighbours",
        }.get(field, "spec.secureAggregation")
        return [FieldError(path, message or str(exc), obj=job.ref)]
    return []
