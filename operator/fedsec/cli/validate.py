"""``fedsec validate``: the whole plan for what it is given, before anything runs.

Every job is planned with the sites given beside it, as ``fedsec run`` and the operator plan it
(:func:`fedsec.api.plan.plan_job`), and its admitted sites' data and privacy schedules are worked
out as the runtime will (:func:`fedsec.runtime.preflight.check`). What would fail at run time fails
here. A job given without any site is not planned, and that is an error: it cannot run as given
(``--schema-only`` checks each manifest on its own instead, for a job whose sites live elsewhere).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsec.api import loader
from fedsec.api.errors import FieldError, ManifestError, SitesRefused
from fedsec.api.job import FederatedJob
from fedsec.api.plan import JobPlan, plan_job, select_clients
from fedsec.api.scenario import Scenario, check_scenario
from fedsec.cli.output import FORMATS, OutputFormat, emit, error_dict, print_problems, print_warnings
from fedsec.runtime import exitcodes

# A job's or scenario's outcome; NOT_PLANNED (no site given) is an error, SCHEMA_ONLY (asked for) is not.
PLANNED, CHECKED, REFUSED, INVALID = "planned", "checked", "refused", "invalid"
NOT_PLANNED, SCHEMA_ONLY = "not-planned", "schema-only"


@dataclass
class JobReport:
    job: FederatedJob
    source: str
    status: str = PLANNED
    plan: JobPlan | None = None
    sites: dict[str, dict[str, Any]] = field(default_factory=dict)  # admitted site -> rows, privacy schedule
    errors: list[FieldError] = field(default_factory=list)
    warnings: list[FieldError] = field(default_factory=list)  # what this machine cannot check


@dataclass
class ScenarioReport:
    scenario: Scenario
    source: str
    status: str = CHECKED
    errors: list[FieldError] = field(default_factory=list)


@dataclass
class Report:
    paths: list[str]
    manifests: loader.Manifests | None = None
    jobs: list[JobReport] = field(default_factory=list)
    scenarios: list[ScenarioReport] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)  # the manifests' own (nothing planned)
    warnings: list[FieldError] = field(default_factory=list)
    ledger_dir: Path | None = None

    def problems(self) -> list[FieldError]:
        return [*self.errors, *(e for j in self.jobs for e in j.errors), *(e for s in self.scenarios for e in s.errors)]

    def exit_code(self) -> int:
        """Invalid anywhere: CONFIG_ERROR; else refused by the sites anywhere: REFUSED; else OK."""
        statuses = {j.status for j in self.jobs} | {s.status for s in self.scenarios}
        if self.errors or INVALID in statuses or NOT_PLANNED in statuses:
            return exitcodes.CONFIG_ERROR
        if REFUSED in statuses:
            return exitcodes.REFUSED
        return exitcodes.OK


def validate(paths: list[str], *, ledger_dir: Path | None = None, schema_only: bool = False) -> Report:
    report = Report(paths, ledger_dir=ledger_dir)
    try:
        m = loader.load(paths)
    except ManifestError as exc:
        report.errors = exc.errors
        return report
    report.manifests = m
    if schema_only:
        report.jobs = [JobReport(j, m.sources.get(j.ref, ""), SCHEMA_ONLY) for j in m.jobs]
        report.scenarios = [ScenarioReport(s, m.sources.get(s.ref, ""), SCHEMA_ONLY) for s in m.scenarios]
        return report
    spent, reserved, ledger_errors = _standing(m, ledger_dir)
    if ledger_errors:
        report.errors = ledger_errors
        return report
    report.jobs = [_plan(job, m, spent, reserved) for job in m.jobs]
    report.scenarios = [_scenario(s, m) for s in m.scenarios]
    for c in m.clients:  # a warning, not an error: the site may be another job's, given elsewhere
        if not any(select_clients(j, [c]) for j in m.jobs):
            labels = ", ".join(f"{k}={v}" for k, v in sorted(c.metadata.labels.items())) or "none"
            report.warnings.append(FieldError(
                "metadata.labels", f"no FederatedJob given selects this site (its labels: {labels})",
                source=m.sources.get(c.ref, ""), obj=c.ref))
    return report


def _standing(m: loader.Manifests, ledger_dir: Path | None) -> tuple[dict[str, float], dict[str, float], list[FieldError]]:
    """Epsilon other jobs spent (and running ones reserve) at each site, from ``ledger_dir``."""
    if ledger_dir is None:
        return {}, {}, []
    from fedsec.privacy.ledger import SiteLedger, ledger_path

    if not ledger_dir.is_dir():
        return {}, {}, [FieldError("", "--ledger-dir: no such directory", source=str(ledger_dir))]
    spent: dict[str, float] = {}
    reserved: dict[str, float] = {}
    errors: list[FieldError] = []
    for c in m.clients:
        path = ledger_path(ledger_dir, c.metadata.name)
        try:
            s = SiteLedger(path, c.metadata.name).standing()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            errors.append(FieldError("", f"cannot read the site's privacy ledger: {exc}", source=str(path), obj=c.ref))
            continue
        spent[c.metadata.name], reserved[c.metadata.name] = s.spent, s.reserved
    return spent, reserved, errors


def _plan(job: FederatedJob, m: loader.Manifests, spent: dict[str, float], reserved: dict[str, float]) -> JobReport:
    from fedsec.runtime import preflight

    r = JobReport(job, m.sources.get(job.ref, ""))
    if not m.clients:
        r.status = NOT_PLANNED
        r.errors = [FieldError(
            "spec.clients.selector", "not planned: no FederatedClient was given, so no site can be admitted; give "
            "the sites' manifests too (fedsec validate JOB.yaml SITES/), or --schema-only to check each manifest on "
            "its own", source=r.source, obj=job.ref)]
        return r
    try:
        r.plan = plan_job(job, m.clients, spent, reserved=reserved)
    except SitesRefused as exc:
        r.status, r.errors = REFUSED, m.locate(exc.errors)
        return r
    except ManifestError as exc:
        r.status, r.errors = INVALID, m.locate(exc.errors)
        return r
    found = preflight.check(r.plan, m.sources)
    r.sites = {name: facts.as_dict() for name, facts in found.sites.items()}
    if found.errors:
        r.status, r.errors = INVALID, list(found.errors)
    r.warnings = list(found.warnings)
    return r


def _scenario(s: Scenario, m: loader.Manifests) -> ScenarioReport:
    source = m.sources.get(s.ref, "")
    r = ScenarioReport(s, source)
    try:
        r.errors = check_scenario(s, source.partition("#")[0], source=source)
    except SitesRefused as exc:
        r.status, r.errors = REFUSED, list(exc.errors)
        return r
    if r.errors:
        r.status = INVALID
    return r


# -- what it prints ---------------------------------------------------------------------------


def _threshold(plan: JobPlan) -> dict[str, Any] | None:
    """The secure-aggregation threshold in effect: its setting, and the survivors it means for a
    round of every admitted site and for the smallest round the quorum lets commit."""
    sa = plan.job.spec.secure_aggregation
    if sa.mode != "secagg":
        return None
    from fedsec.aggregation.registry import secagg_config
    from fedsec.aggregation.secagg.config import threshold_count
    from fedsec.privacy.admission import least_survivors

    config = secagg_config(sa)
    n = len(plan.admitted)
    try:
        full = threshold_count(config, n)
    except ValueError:  # plan_job refused such a job already; nothing to show
        return None
    _, smallest = least_survivors(plan.job, plan.quorum, n)
    return {"setting": config.threshold, "survivors_full_round": full, "sites": n,
            "least_survivors_any_round": smallest}


def job_dict(r: JobReport) -> dict[str, Any]:
    job = r.job
    out: dict[str, Any] = {"name": job.metadata.name, "namespace": job.metadata.namespace, "file": r.source,
                           "status": r.status}
    p = r.plan
    if p is not None:
        out["admitted"] = list(p.site_names)
        out["refused"] = dict(sorted(p.refused.items()))
        out["quorum"] = p.quorum
        sa = job.spec.secure_aggregation
        out["secure_aggregation"] = {"mode": sa.mode, "threshold": _threshold(p)}
        priv = job.spec.privacy
        privacy: dict[str, Any] = {"mechanism": priv.mechanism}
        if priv.mechanism != "none":
            privacy.update(target_epsilon=priv.target_epsilon, delta=priv.delta, accountant=priv.accountant,
                           clipping_norm=priv.clipping_norm, rounds=job.spec.rounds)
        out["privacy"] = privacy
        out["sites"] = r.sites
    out["errors"] = [error_dict(e) for e in r.errors]
    out["warnings"] = [error_dict(e) for e in r.warnings]
    return out


def report_dict(report: Report) -> dict[str, Any]:
    m = report.manifests
    code = report.exit_code()
    return {
        "ok": code == exitcodes.OK,
        "exit_code": code,
        "paths": report.paths,
        "ledger_dir": None if report.ledger_dir is None else str(report.ledger_dir),
        "manifests": None if m is None else {"FederatedJob": len(m.jobs), "FederatedClient": len(m.clients),
                                             "Scenario": len(m.scenarios)},
        "jobs": [job_dict(j) for j in report.jobs],
        "scenarios": [{"name": s.scenario.metadata.name, "file": s.source, "status": s.status,
                       "errors": [error_dict(e) for e in s.errors]} for s in report.scenarios],
        "errors": [error_dict(e) for e in report.errors],
        "warnings": [error_dict(e) for e in report.warnings],
    }


def _names(names: list[str] | tuple[str, ...]) -> str:
    return ", ".join(names) if names else "none"


def print_job(r: JobReport, d: dict[str, Any]) -> None:
    where = f" ({r.source})" if r.source else ""
    shown = "valid; not planned (--schema-only)" if r.status == SCHEMA_ONLY else r.status
    print(f"{r.job.ref}{where}: {shown}")
    if r.plan is None:
        return
    p, job = r.plan, r.job
    print(f"  admitted ({len(p.admitted)}): {_names(p.site_names)}")
    if p.refused:
        print(f"  refused ({len(p.refused)}):")
        for name, reason in sorted(p.refused.items()):
            print(f"    {name}: {reason}")
    print(f"  quorum: {p.quorum} of the {len(p.admitted)} admitted sites per round")
    t = d["secure_aggregation"]["threshold"]
    sa = job.spec.secure_aggregation
    if t is not None:
        print(f"  secure aggregation: secagg, threshold {t['setting']}: a round of all {t['sites']} sites unmasks "
              f"with at least {t['survivors_full_round']} survivors; no round commits with fewer than "
              f"{t['least_survivors_any_round']}")
    else:
        print(f"  secure aggregation: {sa.mode}" + (" (the aggregator sees each update)" if sa.mode == "none" else ""))
    priv = job.spec.privacy
    if priv.mechanism == "none":
        print("  privacy: none (no differential privacy)")
    else:
        print(f"  privacy: {priv.mechanism}, target epsilon {priv.target_epsilon:g} at each site over "
              f"{job.spec.rounds} rounds, delta {priv.delta:g}, {priv.accountant} accountant, "
              f"clipping norm {priv.clipping_norm:g}")
    rows = [(n, s) for n, s in r.sites.items()]
    if rows:
        private = any("privacy" in s for _, s in rows)
        width = max(len(n) for n, _ in rows)
        header = f"    {'site':<{width}}  {'rows':>6}"
        if private:
            header += f"  {'sampling rate':>13}  {'steps/round':>11}  {'noise multiplier':>16}  {'planned epsilon':>15}"
        print(header)
        for name, s in rows:
            line = f"    {name:<{width}}  {s['training_rows']:>6}"
            q = s.get("privacy")
            if q is not None:
                line += (f"  {q['sample_rate']:>13.4g}  {q['steps_per_round']:>11}  {q['noise_multiplier']:>16.4g}"
                         f"  {q['planned_epsilon']:>15.4f}")
            print(line)


def print_text(report: Report) -> None:
    for r in report.jobs:
        print_job(r, job_dict(r))
    for s in report.scenarios:
        print(f"{s.scenario.ref} ({s.source}): {s.status}")
    warnings = [*report.warnings, *(w for j in report.jobs for w in j.warnings)]
    print_warnings(warnings)
    code = report.exit_code()
    m = report.manifests
    if code == exitcodes.CONFIG_ERROR:
        print_problems(report.problems())
        return
    if code == exitcodes.REFUSED:
        print_problems(report.problems(), "stop the job: the manifests are valid, but the sites refuse it")
        return
    assert m is not None
    n = len(m.jobs) + len(m.clients) + len(m.scenarios)
    refused = sum(len(j.plan.refused) for j in report.jobs if j.plan is not None)
    summary = f"ok: {n} manifest(s) valid ({len(m.jobs)} FederatedJob, {len(m.clients)} FederatedClient, {len(m.scenarios)} Scenario)"
    planned = sum(j.status == PLANNED for j in report.jobs)
    if report.jobs and planned:
        summary += f"; {planned} job(s) planned"
        if refused:
            summary += f", {refused} site(s) refused (the job runs without them)"
    elif report.jobs:
        summary += "; not planned (--schema-only)"
    print(summary)


def command(args: argparse.Namespace) -> int:
    fmt: OutputFormat = args.output
    report = validate(list(args.paths), ledger_dir=args.ledger_dir, schema_only=args.schema_only)
    if fmt == "text":
        print_text(report)
    else:
        emit(report_dict(report), fmt)
    return report.exit_code()


def add_parser(sub: Any) -> None:
    v = sub.add_parser(
        "validate", help="plan the jobs in the manifests without running anything (exit 2 invalid, 3 refused)",
        description="Check manifests and plan every job with the sites given: admitted and refused sites, quorum, "
        "secure-aggregation threshold, privacy schedule per site. Nothing runs.")
    v.add_argument("paths", nargs="+", metavar="PATH",
                   help="YAML or JSON manifest files, directories of them, or - for standard input")
    v.add_argument("-o", "--output", choices=FORMATS, default="text",
                   help="text (default), or the whole report as one json or yaml document on stdout")
    v.add_argument("--ledger-dir", type=Path, metavar="DIR",
                   help="plan against the privacy spend recorded in these site ledgers, as fedsec run --ledger-dir "
                   "would (default: fresh ledgers)")
    v.add_argument("--schema-only", action="store_true",
                   help="check each manifest on its own; do not plan jobs (for a job whose sites are not given)")
    v.set_defaults(fn=command)
