"""``fedsec run`` and ``fedsec simulate``: the same manifests, as local processes on loopback.

The launcher plays the part the operator plays in a cluster, and nothing more: it plans the job,
generates the job's PKI into the run directory (where the operator would write Secrets), writes
each process its config, starts the aggregator and one client process per admitted site, and
restarts crashed processes the way a Deployment and a Job would. It learns what happens from the
aggregator's event stream and from process exits, both delivered to one queue: it never polls.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import IO, Any

from fedsec.api import loader
from fedsec.api.admitted import AdmittedPlan
from fedsec.api.client import FederatedClient
from fedsec.api.errors import FieldError, ManifestError, SitesRefused
from fedsec.api.job import FederatedJob
from fedsec.api.plan import JobPlan, plan_job
from fedsec.api.scenario import Fault, Scenario, check_faults, check_scenario
from fedsec.api.scenario import manifests_dir as scenario_manifests_dir
from fedsec.crypto import keyring, pki
from fedsec.runtime import exitcodes, preflight, runlock
from fedsec.runtime.config import AggregatorConfig, ClientConfig, PkiPaths
from fedsec.runtime.progress import Display
from fedsec.privacy.budget import Standing
from fedsec.privacy.ledger import REFUSED, JobRef, SiteLedger, ledger_path
from fedsec.storage.atomic import write_json_atomic
from fedsec.privacy.report import privacy_section
from fedsec.protocol.key_epochs import RotationPolicy, issued_epochs
from fedsec.runtime.report import SUMMARY
from fedsec.runtime.site_record import read_counts
from fedsec.telemetry.metrics import write_privacy_textfile

MAX_RESTARTS = 3  # like a Job's backoffLimit; a crash loop ends the run instead of spinning
TERMINATE_GRACE_SECONDS = 10.0


@dataclass
class RunLayout:
    run_dir: Path
    job: FederatedJob
    plan: JobPlan
    job_uid: str
    faults: list[Fault] = field(default_factory=list)
    ledger_dir: Path | None = None  # the sites' privacy ledgers (shared by runs)
    sites: tuple[FederatedClient, ...] = ()  # every site the selector matched, admitted or refused
    ca: pki.CA | None = None  # held while the run lasts only when keys rotate

    @property
    def rotation(self) -> RotationPolicy:
        r = self.job.spec.keys.rotation
        return RotationPolicy(r.every_rounds, r.grace_rounds)

    @property
    def participants(self) -> list[str]:
        return [pki.AGGREGATOR, *self.plan.site_names]

    @property
    def pki_dir(self) -> Path:
        return self.run_dir / "pki"

    def pki_paths(self, name: str) -> PkiPaths:
        return PkiPaths.under(self.pki_dir / "ca.crt", self.pki_dir / name)

    @property
    def aggregator_config(self) -> Path:
        return self.run_dir / "aggregator.json"

    def client_config(self, site: str) -> Path:
        return self.run_dir / "sites" / site / "client.json"

    def site_dir(self, name: str) -> Path:
        """A site's own directory in a local run: its audit log and refusal counts."""
        return self.run_dir / "sites" / name

    def log_path(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"


def pick_job(manifests: loader.Manifests, job_name: str | None) -> FederatedJob:
    jobs = manifests.jobs if job_name is None else [j for j in manifests.jobs if j.metadata.name == job_name]
    if len(jobs) != 1:
        names = ", ".join(j.metadata.name for j in manifests.jobs) or "none"
        what = f"no FederatedJob named {job_name!r}" if job_name else f"{len(jobs)} FederatedJobs"
        raise ManifestError([FieldError("", f"found {what} (jobs: {names}); name one with --job")])
    return jobs[0]


def default_ledger_dir(run_dir: Path) -> Path:
    """Next to the run directories, so that every run on this machine shares the sites' ledgers."""
    return run_dir.parent / "ledger"


def prepare(manifests_dir: Path, run_dir: Path | None, job_name: str | None, faults: list[Fault],
            ledger_dir: Path | None = None) -> RunLayout:
    manifests = loader.load([manifests_dir])
    job = pick_job(manifests, job_name)
    if run_dir is None:
        run_dir = Path("runs") / f"{job.metadata.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = run_dir.resolve()
    marker = run_dir / "run.json"
    info: dict[str, Any] = {}
    if marker.exists():  # resume: same job, same identities, same ledgers
        info = json.loads(marker.read_text())
        if info.get("job") != job.metadata.name:
            raise ManifestError([FieldError("", f"{run_dir} holds a run of job {info.get('job')!r}, not {job.metadata.name!r}")])
        job_uid = str(info["job_uid"])
    else:
        job_uid = job.metadata.uid or str(uuid.uuid4())
    if ledger_dir is None:
        ledger_dir = Path(info["ledger_dir"]) if info.get("ledger_dir") else default_ledger_dir(run_dir)
    ledger_dir = ledger_dir.resolve()
    # Admission reads what other jobs spent on each site and what the ones still running reserve
    # (their admitted target: two jobs admitted one after the other must not both count on the
    # same remaining budget); never this job's own spend: a resumed job was admitted for its whole
    # planned spend already, and its site's ledger bounds it by what was admitted.
    standing = {c.metadata.name: SiteLedger(ledger_path(ledger_dir, c.metadata.name), c.metadata.name).standing(excluding=job_uid)
                for c in manifests.clients}
    try:
        plan = plan_job(job, manifests.clients, {n: s.spent for n, s in standing.items()},
                        reserved={n: s.reserved for n, s in standing.items()})
    except SitesRefused as exc:
        raise _with_ledger_hint(exc, standing, ledger_dir) from None
    found = preflight.check(plan, manifests.sources)
    if found.errors or found.warnings:  # what a client would refuse minutes from now; here a missing file is fatal
        raise ManifestError(found.errors + found.warnings)
    _check_faults(faults, plan)
    matched = tuple(c for c in manifests.clients if c.metadata.name in set(plan.site_names) | set(plan.refused))
    layout = RunLayout(run_dir, job, plan, job_uid, faults, ledger_dir, matched)
    if marker.exists():
        _load_run_ca(layout)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        issue_job_pki(layout, pki.new_ca(job.metadata.name))
        write_json_atomic(marker, {"job": job.metadata.name, "job_uid": job_uid, "manifests": str(manifests_dir.resolve()),
                                   "ledger_dir": str(ledger_dir)})
    _record_refusals(layout)
    return layout


def _with_ledger_hint(exc: SitesRefused, standing: Mapping[str, Standing], ledger_dir: Path) -> SitesRefused:
    """A refusal because of spend already in the sites' ledgers says where that spend is kept."""
    spent = {n: s for n, s in sorted(standing.items()) if s.spent > 0 or s.reserved > 0}
    if not spent:
        return exc
    shown = ", ".join(f"{n} {s.spent:.3g}" + (f" (+{s.reserved:.3g} reserved)" if s.reserved else "") for n, s in spent.items())
    hint = FieldError(
        "", f"the sites' privacy ledgers in {ledger_dir} already hold epsilon spent by earlier jobs ({shown}); ledgers "
        "persist across runs on purpose, as a site's would. To run from fresh budgets, pass --ledger-dir NEW_DIR "
        f"(or delete {ledger_dir})", source=str(ledger_dir))
    return SitesRefused([*exc.errors, hint])


def _record_refusals(layout: RunLayout) -> None:
    """The refused site's own record of why (under the operator: its FederatedClient status)."""
    assert layout.ledger_dir is not None
    ref = JobRef(layout.job_uid, layout.job.metadata.name, layout.job.metadata.namespace)
    for name, reason in layout.plan.refused.items():
        SiteLedger(ledger_path(layout.ledger_dir, name), name).set_status(ref, REFUSED, reason)


def release_reservations(layout: RunLayout, status: str) -> None:
    """The job ended (``status`` is final): at every admitted site only its actual spend counts from
    now on. A client normally records this itself when told the job's end; one stopped before it
    could would otherwise reserve the rest of the job's target there for good. An interrupted run
    is not ended (it can be resumed), so it keeps its reservations."""
    if layout.ledger_dir is None or layout.job.spec.privacy.mechanism == "none":
        return
    ref = JobRef(layout.job_uid, layout.job.metadata.name, layout.job.metadata.namespace)
    for name in layout.plan.site_names:
        SiteLedger(ledger_path(layout.ledger_dir, name), name).finish(ref, f"job {status}")


def privacy_snapshot(layout: RunLayout) -> dict[str, Any]:
    assert layout.ledger_dir is not None
    return privacy_section(layout.job, layout.job_uid, layout.sites, layout.plan.refused, layout.ledger_dir)


def _check_faults(faults: list[Fault], plan: JobPlan) -> None:
    # Again with the plan the sites' ledgers allow: fewer admitted sites can strand a fault.
    errors = check_faults(faults, plan)
    if errors:
        raise ManifestError(errors)


CA_KEY = "ca.key"


def issue_job_pki(layout: RunLayout, ca: pki.CA) -> None:
    """Every participant's TLS and identity keys from the job CA (what the operator puts in Secrets).

    Without key rotation the CA key is dropped here: nothing is signed after this. With rotation
    the launcher signs each new epoch's keys as the run goes, so it keeps the CA, and writes its key
    into the run directory (mode 0600, like the operator's CA Secret that no pod mounts) so that a
    resumed run can go on rotating.
    """
    pki.write_public(layout.pki_dir / "ca.crt", ca.cert_pem)
    if layout.rotation.rotates:
        pki.write_private(layout.pki_dir / CA_KEY, pki.ca_key_pem(ca))
        layout.ca = ca
    for name in layout.participants:
        paths = layout.pki_paths(name)
        tls = pki.issue_tls(ca, name, ["localhost", "127.0.0.1"] if name == pki.AGGREGATOR else [])
        pki.write_private(paths.tls_key, tls.key_pem)
        pki.write_public(paths.tls_cert, tls.cert_pem)
        for epoch in issued_epochs(0, layout.rotation):
            for fname, data in keyring.identity_files(ca, name, epoch).items():  # the key file first
                pki.write_private(paths.keys_dir / fname, data)


def rotate_job_keys(layout: RunLayout, current: int) -> None:
    """The aggregator is in key epoch ``current``: every participant gets the next epoch's key and
    loses the ones before ``current`` (the operator does the same to the Secrets)."""
    if layout.ca is None:
        return
    for name in layout.participants:
        keyring.sync_directory(layout.pki_paths(name).keys_dir, layout.ca, name, issued_epochs(current, layout.rotation))


def _load_run_ca(layout: RunLayout) -> None:
    """A resumed run that rotates keys signs with the CA it was started with."""
    key_path = layout.pki_dir / CA_KEY
    if layout.rotation.rotates and key_path.exists():
        layout.ca = pki.load_ca(key_path.read_bytes(), (layout.pki_dir / "ca.crt").read_bytes())


def write_configs(layout: RunLayout, port: int | None) -> None:
    agg_faults = [f for f in layout.faults if f.kind == "aggregator-crash"]
    cfg = AggregatorConfig(
        job=layout.job, job_uid=layout.job_uid, sites=list(layout.plan.site_names), quorum=layout.plan.quorum,
        state_dir=layout.run_dir, pki=layout.pki_paths(pki.AGGREGATOR), faults=agg_faults,
    )
    write_json_atomic(layout.aggregator_config, json.loads(cfg.model_dump_json(by_alias=True)))
    if port is None:
        return
    admitted = AdmittedPlan.of(layout.job, layout.job_uid, list(layout.plan.site_names), layout.plan.quorum)
    for site in layout.plan.admitted:
        name = site.metadata.name
        ccfg = ClientConfig(
            job=layout.job, job_uid=layout.job_uid, site=site, plan=admitted, aggregator=f"127.0.0.1:{port}",
            pki=layout.pki_paths(name), faults=[f for f in layout.faults if f.client == name],
            ledger_dir=layout.ledger_dir, state_dir=layout.site_dir(name),
        )
        write_json_atomic(layout.client_config(name), json.loads(ccfg.model_dump_json(by_alias=True)))


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    incarnation: int


class Launcher:
    def __init__(self, layout: RunLayout, display: Display) -> None:
        self.layout = layout
        self.display = display
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.procs: dict[str, _Proc] = {}
        self.restarts: dict[str, int] = {}
        self.exits: dict[str, list[int]] = {}
        self.port: int | None = None
        self.outcome: dict[str, Any] = {}

    # -- processes --------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], incarnation: int, stdout_events: bool) -> None:
        log_path = self.layout.log_path(name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_fh = open(log_path, "ab")  # noqa: SIM115 - owned by the child's lifetime
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if name == "aggregator":
            # Many RPC threads each get a glibc arena that keeps freed update buffers; two arenas
            # measured 100-450 MB less peak and less CPU at 1e6 parameters (docs/benchmarks.md).
            env.setdefault("MALLOC_ARENA_MAX", "2")
        popen = subprocess.Popen(  # noqa: S603 - argv is ours, no shell
            [sys.executable, "-m", "fedsec", *argv, "--incarnation", str(incarnation)],
            stdout=subprocess.PIPE if stdout_events else log_fh,
            stderr=log_fh,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the launcher, which stops them in order
        )
        log_fh.close()
        self.procs[name] = _Proc(name, popen, incarnation)
        if stdout_events:
            assert popen.stdout is not None
            threading.Thread(target=self._read_events, args=(popen.stdout,), daemon=True).start()
        threading.Thread(target=self._wait_exit, args=(name, popen), daemon=True).start()

    def _read_events(self, stream: IO[bytes]) -> None:
        for line in stream:
            try:
                self.events.put(("event", json.loads(line)))
            except ValueError:
                continue  # not an event line; the aggregator logs to stderr

    def _wait_exit(self, name: str, popen: subprocess.Popen[bytes]) -> None:
        self.events.put(("exit", (name, popen.wait(), popen)))

    def _start_aggregator(self, incarnation: int) -> None:
        argv = ["aggregator", "--config", str(self.layout.aggregator_config)]
        if self.port is not None:
            argv += ["--listen", f"127.0.0.1:{self.port}"]
        self._spawn("aggregator", argv, incarnation, stdout_events=True)

    def _start_client(self, site: str, incarnation: int) -> None:
        self._spawn(site, ["client", "--config", str(self.layout.client_config(site))], incarnation, stdout_events=False)

    # -- supervision ------------------------------------------------------------------------------

    def run(self) -> int:
        write_configs(self.layout, None)
        self.display.start(self.layout)
        self._start_aggregator(0)
        try:
            code = self._supervise()
        except KeyboardInterrupt:
            self.display.note("interrupted: stopping every process; the run directory can be resumed with --run-dir")
            code = 130
        finally:
            self._stop_all()
        return self._finish(code)

    def _supervise(self) -> int:
        while True:
            kind, payload = self.events.get()
            if kind == "event":
                self._on_event(payload)
                continue
            name, code, popen = payload
            if self.procs.get(name) is None or self.procs[name].popen is not popen:
                continue  # an exit we already handled
            self.exits.setdefault(name, []).append(code)
            incarnation = self.procs.pop(name).incarnation
            if name == "aggregator":
                if code in (exitcodes.OK, exitcodes.JOB_FAILED, exitcodes.CONFIG_ERROR):
                    return code
                if self._may_restart(name):
                    self.display.note(f"aggregator exited with code {code}; restarting it (it resumes from its last committed round)")
                    self._start_aggregator(incarnation + 1)
                    continue
                self.display.note(f"aggregator crashed {MAX_RESTARTS + 1} times; giving up")
                return exitcodes.JOB_FAILED
            self._on_client_exit(name, code, incarnation)

    def _on_client_exit(self, name: str, code: int, incarnation: int) -> None:
        if code == exitcodes.OK:
            return
        if code == exitcodes.INJECTED_DROP:
            self.display.note(f"{name} left the job (injected drop)")
            return
        if code == exitcodes.CONFIG_ERROR:
            self.display.note(f"{name} cannot run (exit {code}); see {self.layout.log_path(name)}")
            return
        if self._may_restart(name):
            self.display.note(f"{name} exited with code {code}; restarting it")
            self._start_client(name, incarnation + 1)
        else:
            self.display.note(f"{name} failed {MAX_RESTARTS + 1} times; it stays down (see {self.layout.log_path(name)})")

    def _may_restart(self, name: str) -> bool:
        self.restarts[name] = self.restarts.get(name, 0) + 1
        return self.restarts[name] <= MAX_RESTARTS

    def _on_event(self, ev: dict[str, Any]) -> None:
        if ev.get("event") == "listening":
            first = self.port is None
            self.port = int(ev["port"])
            self.outcome["metrics_port"] = ev.get("metrics_port")
            if first:
                write_configs(self.layout, self.port)
                for site in self.layout.plan.site_names:
                    self._start_client(site, 0)
        if ev.get("event") == "key_epoch":
            rotate_job_keys(self.layout, int(ev["epoch"]))
        self.display.event(ev)
        if ev.get("event") == "round_committed" and self.layout.job.spec.privacy.mechanism != "none":
            section = self._privacy()
            if section is not None:
                self.display.privacy(section)

    def _privacy(self) -> dict[str, Any] | None:
        """The sites' ledgers as the summary and the display show them; also the metrics textfile."""
        try:
            section = privacy_snapshot(self.layout)
            write_privacy_textfile(self.layout.run_dir / "privacy.prom", self.layout.job.metadata.name, section)
            return section
        except (OSError, ValueError) as exc:  # a ledger being replaced mid-read: the next round shows it
            self.display.note(f"could not read the privacy ledgers: {exc}")
            return None

    def _stop_all(self) -> None:
        for proc in list(self.procs.values()):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
        for proc in list(self.procs.values()):
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()

    def _finish(self, code: int) -> int:
        summary_path = self.layout.run_dir / SUMMARY
        summary: dict[str, Any] = {}
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
            # The launcher adds what only it saw: how each process ended and how often it restarted.
            for name, codes in self.exits.items():
                entry = summary.get("clients", {}).get(name) if name != "aggregator" else summary.setdefault("aggregator", {})
                if entry is not None:
                    entry["exit_codes"] = codes
                    entry["restarts"] = self.restarts.get(name, 0)
            # ... what each site refused of the aggregator, from the site's own record (never the
            # aggregator's word) ...
            refusals = {site: read_counts(self.layout.site_dir(site)) for site in self.layout.plan.site_names}
            summary["site_refusals"] = {site: counts for site, counts in refusals.items() if counts}
            # ... and the privacy ledgers of the sites, which it reads as the operator reads their status.
            if summary.get("status") in ("Succeeded", "Failed"):
                try:
                    release_reservations(self.layout, summary["status"])
                except OSError as exc:
                    self.display.note(f"could not end the job's reservations in the ledgers: {exc}")
            section = self._privacy()
            if section is not None:
                summary["privacy"] = section
            write_json_atomic(summary_path, summary)
        self.display.finish(summary, summary_path if summary else None, self.layout.run_dir)
        if not summary:
            return code or exitcodes.JOB_FAILED
        return exitcodes.OK if summary.get("status") == "Succeeded" and code == exitcodes.OK else (code or exitcodes.JOB_FAILED)


def run(manifests_dir: Path, *, run_dir: Path | None = None, job_name: str | None = None,
        faults: list[Fault] | None = None, display: Display, ledger_dir: Path | None = None) -> int:
    layout = prepare(manifests_dir, run_dir, job_name, faults or [], ledger_dir)
    with runlock.hold(layout.run_dir):  # `fedsec rollback` refuses the directory while we run
        return Launcher(layout, display).run()


def simulate(scenario_path: Path, *, run_dir: Path | None = None, display: Display, ledger_dir: Path | None = None) -> int:
    if scenario_path.is_dir():  # its manifests directory is relative to the file: a directory has none
        raise ManifestError([FieldError("", "is a directory; give a Scenario YAML file", source=str(scenario_path))])
    manifests = loader.load([scenario_path])
    if len(manifests.scenarios) != 1 or manifests.jobs or manifests.clients:
        raise ManifestError([FieldError("kind", "a scenario file must hold exactly one Scenario and nothing else", source=str(scenario_path))])
    scenario: Scenario = manifests.scenarios[0]
    # Every fault checked against the job before anything starts: one that can never fire is an error.
    errors = check_scenario(scenario, scenario_path, source=manifests.sources.get(scenario.ref))
    if errors:
        raise ManifestError(errors)
    return run(scenario_manifests_dir(scenario, scenario_path), run_dir=run_dir, faults=list(scenario.spec.faults),
               display=display, ledger_dir=ledger_dir)
