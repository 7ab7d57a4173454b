"""The ``fedsec`` command: validate, run, simulate, audit, rollback, completion, and the process entry points.

Exit codes (docs/cli.md): 0 ok, 1 the job failed (or an audit chain is broken), 2 invalid manifests
or configuration, 3 valid manifests that the sites' own terms refuse, 64 a wrong command line, 70 a
bug in fedsec. No input prints a traceback: an unexpected exception is one line and exit 70
(``FEDSEC_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from fedsec.api.errors import ManifestError, SitesRefused
from fedsec.cli import audit, completion, validate
from fedsec.cli.output import print_problems
from fedsec.runtime import exitcodes
from fedsec.runtime.runlock import RunDirInUse

DEBUG_ENV = "FEDSEC_DEBUG"
REFUSED_HEADER = "stop the job: the manifests are valid, but the sites refuse it"


class Parser(argparse.ArgumentParser):
    """argparse that exits USAGE (64), not 2, for a wrong command line: 2 means invalid manifests."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(exitcodes.USAGE, f"{self.prog}: error: {message}\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedsec")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _located(exc: ManifestError, manifests_dir: Path) -> ManifestError:
    """Plan-time errors name objects; give them the files those objects came from."""
    if all(e.source or not e.obj for e in exc.errors):
        return exc
    from fedsec.api import loader

    try:
        return loader.load([manifests_dir]).located(exc)
    except ManifestError:
        return exc


def _manifest_failure(exc: ManifestError | RunDirInUse, manifests_dir: Path | None) -> int:
    if isinstance(exc, RunDirInUse):
        print(exc, file=sys.stderr)
        return exitcodes.CONFIG_ERROR
    if manifests_dir is not None:
        exc = _located(exc, manifests_dir)
    if isinstance(exc, SitesRefused):
        print_problems(exc.errors, REFUSED_HEADER)
        return exitcodes.REFUSED
    print_problems(exc.errors)
    return exitcodes.CONFIG_ERROR


def _run(args: argparse.Namespace) -> int:
    from fedsec.runtime import local
    from fedsec.runtime.progress import Display

    try:
        return local.run(Path(args.dir), run_dir=args.run_dir, job_name=args.job, display=Display(quiet=args.quiet),
                         ledger_dir=args.ledger_dir)
    except (ManifestError, RunDirInUse) as exc:
        return _manifest_failure(exc, Path(args.dir) if Path(args.dir).is_dir() else None)


def _simulate(args: argparse.Namespace) -> int:
    from fedsec.runtime import local
    from fedsec.runtime.progress import Display

    try:
        return local.simulate(Path(args.scenario), run_dir=args.run_dir, display=Display(quiet=args.quiet),
                              ledger_dir=args.ledger_dir)
    except (ManifestError, RunDirInUse) as exc:
        return _manifest_failure(exc, None)


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
            audit_log = AuditLog(run_dir / "audit.jsonl")
            audit_log.append("rollback", sync=True, to_round=args.to_round, new_version=cp.version, reason=args.reason)
            audit_log.close()
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


LEDGER_HELP = "the sites' privacy ledgers (default: ledger/ next to the run directory); a new directory starts from fresh budgets"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="fedsec", description="Secure federated learning: run, check and inspect jobs.",
               epilog="Exit codes: 0 ok, 1 job failed, 2 invalid manifests, 3 refused by the sites, 64 usage, "
               "70 internal error. See docs/cli.md.")
    p.add_argument("--version", action="version", version=f"fedsec {_version()}", help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate.add_parser(sub)

    r = sub.add_parser("run", help="run the job in DIR as local processes on this machine",
                       description="Plan the job in DIR and run it here: one aggregator and one client process per "
                       "admitted site, on loopback.")
    r.add_argument("dir", metavar="DIR", help="directory of FederatedJob and FederatedClient manifests")
    r.add_argument("--run-dir", type=Path, metavar="RUN_DIR",
                   help="where to write results (default: runs/JOB-TIME); an existing one is resumed")
    r.add_argument("--job", metavar="NAME", help="which FederatedJob, if DIR holds several")
    r.add_argument("--quiet", action="store_true", help="print only the summary path")
    r.add_argument("--ledger-dir", type=Path, metavar="DIR", help=LEDGER_HELP)
    r.set_defaults(fn=_run)

    s = sub.add_parser("simulate", help="run a Scenario: the job of its manifests directory with injected faults",
                       description="Run the job of a Scenario's manifests directory with the Scenario's faults injected.")
    s.add_argument("scenario", metavar="SCENARIO", help="Scenario YAML file")
    s.add_argument("--run-dir", type=Path, metavar="RUN_DIR",
                   help="where to write results (default: runs/JOB-TIME); an existing one is resumed")
    s.add_argument("--quiet", action="store_true", help="print only the summary path")
    s.add_argument("--ledger-dir", type=Path, metavar="DIR", help=LEDGER_HELP)
    s.set_defaults(fn=_simulate)

    audit.add_parser(sub)

    rb = sub.add_parser("rollback", help="make an earlier round's model current in a stopped run (lineage kept)",
                        description="Write a new model version holding an earlier round's model into a stopped run "
                        "directory; fedsec run DIR --run-dir RUN_DIR resumes from it.")
    rb.add_argument("run_dir", metavar="RUN_DIR", help="the run directory of a stopped fedsec run or simulate")
    rb.add_argument("--to-round", type=int, required=True, metavar="ROUND",
                    help="the committed round whose model becomes current")
    rb.add_argument("--reason", default="manual rollback", help="why, recorded in the audit log and the lineage")
    rb.set_defaults(fn=_rollback)

    completion.add_parser(sub)

    ag = sub.add_parser("aggregator", help="(process entry point) run an aggregator from its config file")
    ag.add_argument("--config", type=Path, required=True, help="the aggregator's JSON config, written by fedsec run or the operator")
    ag.add_argument("--incarnation", type=int, default=0, help="how many times this process was restarted before")
    ag.add_argument("--listen", help="host:port, overriding the config (the launcher pins the port across restarts)")
    ag.set_defaults(fn=_aggregator, guarded=False)

    op = sub.add_parser("operator", help="run the Kubernetes operator (kopf): FederatedJobs and FederatedClients to pods")
    scope = op.add_mutually_exclusive_group(required=True)
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (sites live in their own)")
    scope.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)")
    op.add_argument("--liveness-port", type=int, default=8080, help="HTTP /healthz for the probes (0: off)")
    op.add_argument("--metrics-port", type=int, default=9091, help="Prometheus /metrics (0: off)")
    op.add_argument("--verbose", action="store_true", help="log at debug level")
    op.set_defaults(fn=_operator, guarded=False)

    cl = sub.add_parser("client", help="(process entry point) run a site's client from its config file")
    cl.add_argument("--config", type=Path, required=True, help="the site client's JSON config, written by fedsec run or the operator")
    cl.add_argument("--incarnation", type=int, default=0, help="how many times this process was restarted before")
    cl.set_defaults(fn=_client, guarded=False)
    return p


def internal_error(exc: BaseException) -> int:
    """A bug, not an input: one line, exit INTERNAL_ERROR; the traceback only when asked for."""
    if os.environ.get(DEBUG_ENV) == "1":
        import traceback

        traceback.print_exception(exc)
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    hint = "" if os.environ.get(DEBUG_ENV) == "1" else f" ({DEBUG_ENV}=1 shows the traceback)"
    print(f"fedsec: internal error: {text}; please report it with the command you ran{hint}", file=sys.stderr)
    return exitcodes.INTERNAL_ERROR


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "guarded", True):
        # A process the launcher or a pod supervises: its log keeps Python's own report of a crash.
        return int(args.fn(args))
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        print("fedsec: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it
    except BrokenPipeError:
        # The reader went away (fedsec validate -o json | head): nothing left to tell it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE
    except Exception as exc:  # noqa: BLE001 - the one place every unexpected error becomes exit 70
        return internal_error(exc)
