"""The ``fedsec`` command: validate, run, simulate, audit, rollback, and the process entry points."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedsec.api.errors import ManifestError
from fedsec.runtime import exitcodes
from fedsec.runtime.runlock import RunDirInUse


def _validate(args: argparse.Namespace) -> int:
    from fedsec.api import loader
    from fedsec.api.plan import plan_job

    try:
        m = loader.load(args.paths)
        problems = []
        for job in m.jobs:
            if m.clients:  # a job file alone cannot be planned: its sites are elsewhere
                try:
                    plan_job(job, m.clients)
                except ManifestError as exc:
                    problems.extend(exc.errors)
        if problems:
            raise ManifestError(problems)
    except ManifestError as exc:
        print(exc, file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    n = len(m.jobs) + len(m.clients) + len(m.scenarios)
    print(f"ok: {n} manifest(s) valid ({len(m.jobs)} FederatedJob, {len(m.clients)} FederatedClient, {len(m.scenarios)} Scenario)")
    return exitcodes.OK


def _run(args: argparse.Namespace) -> int:
    from fedsec.runtime import local
    from fedsec.runtime.progress import Display

    try:
        return local.run(Path(args.dir), run_dir=args.run_dir, job_name=args.job, display=Display(quiet=args.quiet),
                         ledger_dir=args.ledger_dir)
    except (ManifestError, RunDirInUse) as exc:
        print(exc, file=sys.stderr)
        return exitcodes.CONFIG_ERROR


def _simulate(args: argparse.Namespace) -> int:
    from fedsec.runtime import local
    from fedsec.runtime.progress import Display

    try:
        return local.simulate(Path(args.scenario), run_dir=args.run_dir, display=Display(quiet=args.quiet),
                              ledger_dir=args.ledger_dir)
    except (ManifestError, RunDirInUse) as exc:
        print(exc, file=sys.stderr)
        return exitcodes.CONFIG_ERROR


def _audit_verify(args: argparse.Namespace) -> int:
    from fedsec.telemetry.audit import verify

    path = Path(args.path)
    if path.is_dir():
        path = path / "audit.jsonl"
    result = verify(path)
    if result.ok:
        print(f"ok: {result.entries} entries, head {result.head[:16]}…")
        return exitcodes.OK
    print(f"BROKEN: {path}: entry at line {result.first_bad}: {result.reason} ({result.entries} entries before it verify)", file=sys.stderr)
    return exitcodes.JOB_FAILED


def _rollback(args: argparse.Namespace) -> int:
    from fedsec.runtime import runlock
    from fedsec.runtime.checkpoints import CheckpointError, CheckpointStore
    from fedsec.telemetry.audit import AuditLog

    run_dir = Path(args.run_dir)
    if not (run_dir / "checkpoints").is_dir():
        print(f"{run_dir} holds no checkpoints; give the run directory of a job", file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    store = CheckpointStore(run_dir)
    try:
        # Held until the rollback is on disk: a live run would write versions and audit entries too.
        with runlock.hold(run_dir):
            cp = store.rollback(args.to_round, reason=args.reason)
            audit = AuditLog(run_dir / "audit.jsonl")
            audit.append("rollback", sync=True, to_round=args.to_round, new_version=cp.version, reason=args.reason)
            audit.close()
            engine = store.load_engine()
            if engine is not None:  # a rollback reopens a finished job: the rounds after it are trained again
                store.save_engine({**engine, "status": "Running", "reason": "", "attempt": 0})  # retries start over
    except (CheckpointError, runlock.RunDirInUse) as exc:
        print(exc, file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    print(f"model version {cp.version} now holds round {args.to_round}'s model; resume with: fedsec run DIR --run-dir {run_dir}")
    return exitcodes.OK


def _aggregator(args: argparse.Namespace) -> int:
    from fedsec.runtime import aggregator

    return aggregator.main(Path(args.config), args.incarnation, listen=args.listen)


def _client(args: argparse.Namespace) -> int:
    from fedsec.runtime import client

    return client.main(Path(args.config), args.incarnation)


def _operator(args: argparse.Namespace) -> int:
    from fedsec.controller import operator

    return operator.run(namespaces=[] if args.all_namespaces else args.namespace, liveness_port=args.liveness_port,
                        metrics_port=args.metrics_port, verbose=args.verbose)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedsec", description="Secure federated learning: run, check and inspect jobs.")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check manifests without running anything (exit 2 if invalid)")
    v.add_argument("paths", nargs="+", help="YAML files or directories")
    v.set_defaults(fn=_validate)

    r = sub.add_parser("run", help="run the job in DIR as local processes on this machine")
    r.add_argument("dir", help="directory of FederatedJob and FederatedClient manifests")
    r.add_argument("--run-dir", type=Path, help="where to write results (default: runs/JOB-TIME); an existing one is resumed")
    r.add_argument("--job", help="which FederatedJob, if DIR holds several")
    r.add_argument("--quiet", action="store_true", help="print only the summary path")
    r.add_argument("--ledger-dir", type=Path, help="the sites' privacy ledgers (default: ledger/ next to the run directory)")
    r.set_defaults(fn=_run)

    s = sub.add_parser("simulate", help="run a Scenario: the job of its manifests directory with injected faults")
    s.add_argument("scenario", help="Scenario YAML file")
    s.add_argument("--run-dir", type=Path)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--ledger-dir", type=Path, help="the sites' privacy ledgers (default: ledger/ next to the run directory)")
    s.set_defaults(fn=_simulate)

    a = sub.add_parser("audit", help="audit log tools")
    asub = a.add_subparsers(dest="audit_command", required=True)
    av = asub.add_parser("verify", help="check the hash chain; name the first broken entry")
    av.add_argument("path", help="audit.jsonl, or a run directory")
    av.set_defaults(fn=_audit_verify)

    rb = sub.add_parser("rollback", help="make an earlier round's model current in a stopped run (lineage kept)")
    rb.add_argument("run_dir")
    rb.add_argument("--to-round", type=int, required=True)
    rb.add_argument("--reason", default="manual rollback")
    rb.set_defaults(fn=_rollback)

    ag = sub.add_parser("aggregator", help="(process entry point) run an aggregator from its config file")
    ag.add_argument("--config", required=True)
    ag.add_argument("--incarnation", type=int, default=0)
    ag.add_argument("--listen", help="host:port, overriding the config (the launcher pins the port across restarts)")
    ag.set_defaults(fn=_aggregator)

    op = sub.add_parser("operator", help="run the Kubernetes operator (kopf): FederatedJobs and FederatedClients to pods")
    scope = op.add_mutually_exclusive_group(required=True)
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (sites live in their own)")
    scope.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)")
    op.add_argument("--liveness-port", type=int, default=8080, help="HTTP /healthz for the probes (0: off)")
    op.add_argument("--metrics-port", type=int, default=9091, help="Prometheus /metrics (0: off)")
    op.add_argument("--verbose", action="store_true")
    op.set_defaults(fn=_operator)

    cl = sub.add_parser("client", help="(process entry point) run a site's client from its config file")
    cl.add_argument("--config", required=True)
    cl.add_argument("--incarnation", type=int, default=0)
    cl.set_defaults(fn=_client)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args))
