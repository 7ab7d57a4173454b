"""What would fail at run time, found before anything runs: each site's data against the model,
the holdout, and each private site's privacy schedule.

``plan_job`` judges the manifests alone (it is pure: the operator calls it too, far from any site's
data). This reads what the local machine can read — builtin datasets, files that are here — with the
very functions the client and the aggregator use, so ``fedsec validate`` and ``fedsec run`` refuse
up front what a client would otherwise refuse minutes later, and report what each site will train on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from pathlib import Path

from fedsec.api.client import FederatedClient
from fedsec.api.errors import FieldError
from fedsec.api.plan import JobPlan
from fedsec.runtime.datasets import load_holdout, site_split
from fedsec.training.data import DataError

if TYPE_CHECKING:
    from fedsec.privacy.calibration import Schedule


@dataclass(frozen=True)
class SiteFacts:
    """What one admitted site will train on, and what it will spend."""

    rows: int  # training rows, after the site's validation split
    validation_rows: int
    schedule: Schedule | None = None  # the privacy schedule, for a private job

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"training_rows": self.rows, "validation_rows": self.validation_rows}
        if self.schedule is not None:
            s = self.schedule
            out["privacy"] = {
                "noise_multiplier": s.noise_multiplier, "sample_rate": s.sample_rate,
                "steps_per_round": s.steps_per_round, "planned_rounds": s.planned_rounds,
                "planned_epsilon": s.planned_epsilon(), "target_epsilon": s.target_epsilon, "delta": s.delta,
            }
        return out


@dataclass
class Preflight:
    errors: list[FieldError] = field(default_factory=list)  # would fail at run time
    warnings: list[FieldError] = field(default_factory=list)  # cannot be checked on this machine
    sites: dict[str, SiteFacts] = field(default_factory=dict)  # admitted sites whose data could be read


def _where(obj: str, sources: Mapping[str, str]) -> str:
    return sources.get(obj, "")


def _data_path(site: FederatedClient) -> str:
    return "spec.data.file.path" if site.spec.data.file is not None else "spec.data.builtin"


def _weight_capped(plan: JobPlan, rows: int) -> str:
    """Under secagg a site's FedAvg weight (its training rows) is divided by the public weightBound
    and capped at it: a larger site would silently count as a smaller one."""
    sa = plan.job.spec.secure_aggregation
    if sa.mode != "secagg":
        return ""
    from fedsec.aggregation.registry import secagg_config

    bound = secagg_config(sa).weight_bound
    if rows <= bound:
        return ""
    return (f"{rows} training rows, above the weight bound {bound:g}: the site's weight would be capped at the "
            f"bound and its rows undercounted; set spec.secureAggregation.weightBound to at least {rows}")


def check(plan: JobPlan, sources: Mapping[str, str] | None = None) -> Preflight:
    """Read every admitted site's data and the holdout as the runtime will; calibrate privacy."""
    src = sources or {}
    out = Preflight()
    job = plan.job
    seen: dict[str, list[str]] = {}
    failed: list[tuple[str, FederatedClient]] = []
    for site in plan.admitted:
        f = site.spec.data.file
        if f is not None:
            if not Path(f.path).is_file():
                # Under the operator the path is read inside the site's pod (its claim or image);
                # here only `fedsec run` would read it.
                out.warnings.append(FieldError(
                    "spec.data.file.path", f"{f.path!r} is not a file on this machine: `fedsec run` would fail here "
                    "(under the operator the path is read in the site's pod, not checked here)",
                    source=_where(site.ref, src), obj=site.ref))
                continue
        try:
            train, val = site_split(job, site)
        except DataError as exc:
            same = str(exc).replace(site.metadata.name, "{site}")
            if same in seen:  # one line for a mismatch every site shares (an inputDim off by one)
                seen[same].append(site.metadata.name)
            else:
                seen[same] = [site.metadata.name]
                failed.append((same, site))
            continue
        capped = _weight_capped(plan, len(train))
        if capped:
            out.errors.append(FieldError("spec.secureAggregation.weightBound", f"at {site.metadata.name}: {capped}",
                                         source=_where(job.ref, src), obj=job.ref))
        schedule = None
        p, t = job.spec.privacy, job.spec.task
        if p.mechanism != "none" and p.target_epsilon is not None:
            # Opacus (and torch with it) only for a private job: validating any other costs no torch import.
            from fedsec.privacy.calibration import CalibrationError, distributed_schedule, dp_sgd_schedule

            try:
                if p.mechanism == "dp-sgd":
                    schedule = dp_sgd_schedule(
                        target_epsilon=p.target_epsilon, delta=p.delta, accountant=p.accountant,
                        rounds=job.spec.rounds, n_train=len(train), batch_size=t.batch_size,
                        local_epochs=t.local_epochs)
                else:
                    schedule = distributed_schedule(target_epsilon=p.target_epsilon, delta=p.delta,
                                                    accountant=p.accountant, rounds=job.spec.rounds)
            except CalibrationError as exc:
                out.errors.append(FieldError("spec.privacy.targetEpsilon", f"at {site.metadata.name}: {exc}",
                                             source=_where(job.ref, src), obj=job.ref))
        out.sites[site.metadata.name] = SiteFacts(len(train), len(val), schedule)
    for same, site in failed:
        names = seen[same]
        msg = same.replace("{site}", site.metadata.name)
        if len(names) > 1:
            msg += f" (the same for {len(names) - 1} other site(s): {', '.join(names[1:])})"
        out.errors.append(FieldError(_data_path(site), msg, source=_where(site.ref, src), obj=site.ref))
    h = job.spec.evaluation.holdout
    if h is not None and h.file is not None:
        if not Path(h.file.path).is_file():
            out.warnings.append(FieldError(
                "spec.evaluation.holdout.file.path", f"{h.file.path!r} is not a file on this machine: `fedsec run` "
                "would fail here", source=_where(job.ref, src), obj=job.ref))
            return out
    try:
        load_holdout(job)
    except DataError as exc:
        out.errors.append(FieldError("spec.evaluation.holdout", str(exc), source=_where(job.ref, src), obj=job.ref))
    return out
