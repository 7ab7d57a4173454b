"""From validated manifests to a plan: which sites join a job, and how many a round needs.

Pure: no I/O. The local runner and the operator both call :func:`plan_job`, so the admission and
quorum rules live here once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedsec.api.client import FederatedClient
from fedsec.api.errors import FieldError, ManifestError, SitesRefused
from fedsec.api.job import FederatedJob
from fedsec.api.support import unsupported_in_job
from fedsec.crypto.pki import AGGREGATOR, OPERATOR

RESERVED_SITE_NAMES = frozenset({AGGREGATOR, OPERATOR})


@dataclass(frozen=True)
class JobPlan:
    job: FederatedJob
    admitted: tuple[FederatedClient, ...]  # sorted by name
    refused: dict[str, str]  # site name -> reason, for sites the selector matched but that cannot join
    quorum: int  # least updates a round commits with
    aggregator_image: str | None = None  # the image the sites admitted the aggregator under (None: local run)

    @property
    def site_names(self) -> tuple[str, ...]:
        return tuple(c.metadata.name for c in self.admitted)


def select_clients(job: FederatedJob, clients: Sequence[FederatedClient]) -> list[FederatedClient]:
    return sorted(
        (c for c in clients if job.spec.clients.selector.matches(c.metadata.labels)),
        key=lambda c: c.metadata.name,
    )


def plan_job(
    job: FederatedJob, clients: Sequence[FederatedClient], spent: Mapping[str, float] | None = None,
    *, aggregator_image: str | None = None, reserved: Mapping[str, float] | None = None,
) -> JobPlan:
    """Admit the selected sites and check the job can run with them; raise ManifestError if not.

    A selected site whose terms the job does not meet (its policy, including the images it lets
    run the aggregator, given ``aggregator_image``; or its privacy budget given ``spent``: epsilon
    other jobs already spent on each site, from the sites' ledgers, and ``reserved``: what other jobs
    still running there may yet spend, their admitted target less their spend) is refused with the
    reason in ``JobPlan.refused``; the quorum is computed over the admitted sites.
    """
    from fedsec.privacy.admission import refusal

    errors: list[FieldError] = list(unsupported_in_job(job))
    refusals: list[FieldError] = []  # what fails only because sites refused: valid manifests, a refused job
    errors.extend(_privacy_consistency(job))
    matched = select_clients(job, clients)
    refused: dict[str, str] = {}
    if matched:
        q_matched = job.spec.quorum.required(len(matched))
        for c in matched:
            reason = refusal(job, c, spent_elsewhere=(spent or {}).get(c.metadata.name, 0.0),
                             reserved_elsewhere=(reserved or {}).get(c.metadata.name, 0.0),
                             quorum=q_matched, sites=len(matched), aggregator_image=aggregator_image)
            if reason is not None:
                refused[c.metadata.name] = reason
    selected = [c for c in matched if c.metadata.name not in refused]
    if matched and not selected:
        refusals.append(
            FieldError(
                "spec.clients.selector",
                "every selected site refused the job: "
                + "; ".join(f"{n}: {r}" for n, r in sorted(refused.items())),
                obj=job.ref,
            )
        )
    if not matched:
        errors.append(
            FieldError(
                "spec.clients.selector",
                f"selects none of the {len(clients)} FederatedClient(s); check their labels",
                obj=job.ref,
            )
        )
    names = [c.metadata.name for c in selected]
    for c in matched:
        if c.metadata.name in RESERVED_SITE_NAMES:
            # A site's certificate carries its name: one named like the aggregator or the operator
            # could answer for it.
            errors.append(FieldError("metadata.name", f"{c.metadata.name!r} is reserved (the job's own "
                                     f"{'aggregator' if c.metadata.name == AGGREGATOR else 'operator'} uses it); "
                                     "rename the site", obj=c.ref))
    if len(set(names)) != len(names):
        errors.append(
            FieldError("spec.clients.selector", "selects two sites with the same name in different namespaces", obj=job.ref)
        )
    quorum = job.spec.quorum.required(len(selected)) if selected else 0
    if selected and quorum > len(selected):
        why = (
            f" ({len(refused)} refused: " + "; ".join(f"{n}: {r}" for n, r in sorted(refused.items())) + ")"
            if refused else ""
        )
        (refusals if refused and job.spec.quorum.required(len(matched)) <= len(matched) else errors).append(
            FieldError(
                "spec.quorum.minClients",
                f"the quorum needs {quorum} clients but the selector admits only {len(selected)}{why}",
                obj=job.ref,
            )
        )
    errors.extend(_holdout_overlap(job, selected))
    errors.extend(_shard_overlap(selected))
    errors.extend(_columns_of_builtin_data(job, selected))
    if selected and quorum <= len(selected):
        errors.extend(_secagg_consistency(job, quorum, len(selected)))
    if errors:
        raise ManifestError(errors + refusals)
    if refusals:
        raise SitesRefused(refusals)
    return JobPlan(job=job, admitted=tuple(selected), refused=refused, quorum=quorum, aggregator_image=aggregator_image)


def _privacy_consistency(job: FederatedJob) -> list[FieldError]:
    """What a private job must not do: release unprotected feature statistics, or add distributed
    noise without secure aggregation (the noise shares would be visible one by one)."""
    s, errors = job.spec, []
    ranges = s.task.feature_ranges
    if ranges is not None and len(ranges) != s.model.input_dim:
        errors.append(FieldError("spec.task.featureRanges", f"gives {len(ranges)} ranges for {s.model.input_dim} features (spec.model.inputDim)", obj=job.ref))
    if ranges is not None and s.task.standardize:
        errors.append(FieldError("spec.task.standardize", "featureRanges already scale the inputs; set standardize: false", obj=job.ref))
    mech = s.privacy.mechanism
    if mech == "none":
        return errors
    if s.task.standardize:
        errors.append(
            FieldError(
                "spec.task.standardize",
                f"under privacy.mechanism {mech!r} the feature-statistics round would release each site's feature "
                "means without noise; set standardize: false and scale inputs with task.featureRanges (public "
                "per-feature [low, high]), see docs/privacy.md",
                obj=job.ref,
            )
        )
    if mech == "distributed-gaussian" and s.secure_aggregation.mode != "secagg":
        errors.append(
            FieldError(
                "spec.privacy.mechanism",
                "distributed-gaussian adds each site's share of the noise under secure aggregation; "
                "set secureAggregation.mode: secagg (or use dp-sgd)",
                obj=job.ref,
            )
        )
    return errors


def _holdout_overlap(job: FederatedJob, sites: Sequence[FederatedClient]) -> list[FieldError]:
    """A builtin holdout must not share rows with the sites' partitions of the same dataset, and
    must be the dataset the sites train on: a model scored on other data says nothing."""
    holdout = job.spec.evaluation.holdout
    if holdout is None or holdout.builtin is None:
        return []
    errors = []
    for c in sites:
        b = c.spec.data.builtin
        if b is not None and b.name != holdout.builtin.name:
            errors.append(FieldError(
                "spec.data.builtin.name",
                f"the site holds {b.name!r} but the job's holdout (spec.evaluation.holdout) is {holdout.builtin.name!r}; "
                "a job's sites and its holdout must be the same dataset", obj=c.ref))
            continue
        if b is None:
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


def _columns_of_builtin_data(job: FederatedJob, sites: Sequence[FederatedClient]) -> list[FieldError]:
    """``task.features`` and ``task.target`` name columns of file data; a builtin dataset has its own
    label and uses all its features, so a job that sets them for builtin sites would have them ignored."""
    # The API server writes the CRD's defaults into every stored job (target: "target"), so a field counts
    # as given when it differs from its default, not when it is present.
    task = job.spec.task
    given = {n for n in ("features", "target") if getattr(task, n) != type(task).model_fields[n].default}
    builtin = [c.metadata.name for c in sites if c.spec.data.builtin is not None]
    if not given or not builtin:
        return []
    return [FieldError(
        f"spec.task.{name}", f"names columns of file data, but {', '.join(builtin)} hold builtin datasets, which have "
        "their own label and use all their features; remove the field (or give those sites file data)", obj=job.ref)
        for name in sorted(given)]


def _shard_overlap(sites: Sequence[FederatedClient]) -> list[FieldError]:
    """Demo sites of one builtin dataset split it one way, each taking its own shard.

    Shards of different splits (another seed, scheme, alpha or shard count), or a site holding the
    whole dataset beside others, share rows: the same patient would be counted at two sites.
    """
    errors: list[FieldError] = []
    by_dataset: dict[str, list[FederatedClient]] = {}
    for c in sites:
        if c.spec.data.builtin is not None:
            by_dataset.setdefault(c.spec.data.builtin.name, []).append(c)
    for name, group in sorted(by_dataset.items()):
        if len(group) < 2:
            continue
        parted = [c for c in group if c.spec.data.builtin is not None and c.spec.data.builtin.partition is not None]
        first = parted[0] if parted else group[0]
        split = _split_of(first)
        shards: dict[int, str] = {}
        for c in group:
            b = c.spec.data.builtin
            assert b is not None
            if b.partition is None:
                errors.append(FieldError(
                    "spec.data.builtin.partition",
                    f"holds all of {name!r} while {len(group) - 1} other selected site(s) hold parts of it: their rows "
                    "overlap; give every site a partition (the same scheme, shards and seed, its own shard)", obj=c.ref))
                continue
            if _split_of(c) != split:
                errors.append(FieldError(
                    "spec.data.builtin",
                    f"splits {name!r} as {_describe(c)} but {first.ref} splits it as {_describe(first)}: shards of "
                    "different splits overlap; use one split (scheme, alpha, shards, seed, holdoutFraction) for every site",
                    obj=c.ref))
                continue
            shard = b.partition.shard
            if shard in shards:
                errors.append(FieldError(
                    "spec.data.builtin.partition.shard",
                    f"shard {shard} of {name!r} is also held by {shards[shard]}: two sites would train on the same rows; "
                    f"give each site its own shard (0..{b.partition.shards - 1})", obj=c.ref))
            else:
                shards[shard] = c.ref
    return errors


def _split_of(c: FederatedClient) -> tuple[object, ...]:
    b = c.spec.data.builtin
    assert b is not None
    p = b.partition
    if p is None:
        return (b.holdout_fraction, b.seed)
    # alpha shapes only a Dirichlet split
    return (b.holdout_fraction, b.seed, p.scheme, p.shards, p.seed, p.alpha if p.scheme == "dirichlet" else None)


def _describe(c: FederatedClient) -> str:
    b = c.spec.data.builtin
    assert b is not None and b.partition is not None
    p = b.partition
    alpha = f", alpha {p.alpha}" if p.scheme == "dirichlet" else ""
    return f"{p.scheme}{alpha}, {p.shards} shards, seed {p.seed}, holdoutFraction {b.holdout_fraction}, holdout seed {b.seed}"


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
