"""The operator against the API server alone: time to a job's client Jobs, and CPU/memory at rest.

Runs ``fedsec operator`` as a local process on this machine against the test control plane
(``make cluster-up``; docs/test-cluster.md), scoped with ``--namespace`` to namespaces this run
creates (one job namespace and ``--site-namespaces`` site namespaces, with a random suffix), so an
operator someone else installed with Helm is not disturbed. Everything it made is deleted at the end,
also on Ctrl-C or an error (the FederatedJob first, while the operator still runs: its finalizer).

Scenario A (``--clients`` FederatedClients, 50 by default, spread over the site namespaces; one
FederatedJob selecting them, made like examples/breast-cancer/): from ``kubectl apply`` of the job
until every client batch Job exists, and until the aggregator Deployment exists. Side by side, the
baseline: the same client Jobs, Secrets and ConfigMaps (rendered by ``fedsec.controller.children``,
keys issued beforehand) applied with one ``kubectl apply``: the API server's share; once grouped
(all Secrets, then ConfigMaps, then Jobs) and once per site in the operator's order (Secret,
ConfigMap, Job of one site after the other), since a Job made early starts the job controller and
the scheduler while the rest is still being created. Repetitions alternate (operator, grouped,
per site, operator, ...); the table gives medians. The sites' first job also creates their ledger
PVCs (later jobs find them): the operator's repetition that did is shown on its own, not in the
median. Arrival times come from a
watch on the Jobs (and on the Deployment); the operator's CPU time comes from /proc.

To keep the measurement on the control plane, only ``--runnable`` sites (5 by default, the job's
quorum via ``minClients``) have client pods this node can run; the others carry a ``nodeSelector``
no node has, so their Jobs are created but their pods stay Pending (the node has 2 cores: beyond
about 18 pods at 100m it leaves them Pending anyway, and 50 torch processes would swamp it). The
job is deleted as soon as the aggregator Deployment exists.

Scenario B (``--idle-clients`` FederatedClients, 200 by default, no job): a fresh operator first idles
with 0 FederatedClients (the baseline), then the FederatedClients are created in one burst, then it
idles again. CPU (% of one core) and RSS (VmRSS; the burst's peak from VmHWM) are sampled from /proc
every second.

    .venv/bin/python benchmarks/operator_bench.py                          # A: 50 clients x 3; B: 200 clients, 60 s idle
    .venv/bin/python benchmarks/operator_bench.py --reps 5 --wait-alone 120  # the run in docs/benchmarks.md
    .venv/bin/python benchmarks/operator_bench.py --clients 50 --idle-clients 200 --reps 3 --idle-seconds 60
    .venv/bin/python benchmarks/operator_bench.py --skip-idle --reps 1     # scenario A only, once

Writes every figure to ``--json`` (default: operator_bench.json beside this file).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from kubernetes import client, config, watch  # noqa: E402

from fedsec.controller import children as ch  # noqa: E402
from fedsec.controller.names import ROLE_CLIENT, JobNames  # noqa: E402
from fedsec.controller.reconcile import parse_client, parse_job  # noqa: E402
from fedsec.api.meta import API_VERSION  # noqa: E402
from fedsec.api.plan import plan_job  # noqa: E402
from fedsec.crypto import keyring, pki  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
UNSCHEDULABLE = {"fedsec.io/bench": "no-such-node"}
now = time.monotonic
BASELINE_RENDER_CPU: list[float] = []


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the cluster -----------------------------------------------------------------------------------


def cluster() -> tuple[str, str]:
    kubeconfig = subprocess.run(["make", "-s", "cluster-up"], cwd=ROOT, check=True, capture_output=True,
                                text=True, timeout=900).stdout.strip().splitlines()[-1]
    bindir = subprocess.run(["bash", "tests/cluster/build.sh", "--print-bindir"], cwd=ROOT, check=True,
                            capture_output=True, text=True, timeout=60).stdout.strip().splitlines()[-1]
    return kubeconfig, bindir


class Kubectl:
    def __init__(self, kubeconfig: str, bindir: str) -> None:
        self.env = {**os.environ, "KUBECONFIG": kubeconfig, "PATH": f"{bindir}:{os.environ.get('PATH', '')}"}
        self.bin = str(Path(bindir) / "kubectl")

    def __call__(self, *args: str, input: str | None = None, timeout: float = 120, check: bool = True) -> str:
        p = subprocess.run([self.bin, *args], input=input, capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {p.stderr.strip()}")
        return p.stdout

    def timed_apply(self, path: Path, timeout: float = 300) -> float:
        """Wall seconds of ``kubectl apply -f path`` (its CPU: :func:`child_cpu` around the call)."""
        t0 = now()
        p = subprocess.Popen([self.bin, "apply", "-f", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=self.env)
        out, err = p.communicate(timeout=timeout)
        wall = now() - t0
        if p.returncode != 0:
            raise RuntimeError(f"kubectl apply -f {path}: {err.strip()}")
        return wall


def child_cpu() -> float:
    r = os.times()
    return r.children_user + r.children_system


# -- the operator process --------------------------------------------------------------------------


class Proc:
    """CPU and memory of one process from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime

    def mem(self) -> dict[str, float]:
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024  # MiB
        return out

    def reset_peak(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS

    def sample(self, seconds: float, interval: float = 1.0, until: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Sample for ``seconds`` (or until ``until()`` is true, checked each interval, at most ``seconds``)."""
        t0, c0 = now(), self.cpu()
        rows = []
        prev_t, prev_c = t0, c0
        while True:
            time.sleep(interval)
            t, c, m = now(), self.cpu(), self.mem()
            rows.append({"t": round(t - t0, 2), "cpu_pct": round(100 * (c - prev_c) / (t - prev_t), 2),
                         "rss_mib": round(m["VmRSS"], 1), "hwm_mib": round(m["VmHWM"], 1)})
            prev_t, prev_c = t, c
            if (until is not None and until()) or t - t0 >= seconds:
                break
        wall, cpu_s = prev_t - t0, prev_c - c0
        rss = [r["rss_mib"] for r in rows]
        return {"seconds": round(wall, 2), "cpu_s": round(cpu_s, 3), "cpu_pct": round(100 * cpu_s / wall, 2),
                "cpu_pct_max_1s": max(r["cpu_pct"] for r in rows), "rss_mib_first": rss[0], "rss_mib_last": rss[-1],
                "rss_mib_median": statistics.median(rss), "rss_mib_max": max(rss),
                "hwm_mib": max(r["hwm_mib"] for r in rows), "samples": rows}


class Operator:
    def __init__(self, namespaces: list[str], kube_env: dict[str, str], logfile: Path) -> None:
        cmd = [str(ROOT / ".venv/bin/fedsec"), "operator", "--liveness-port", "0", "--metrics-port", "0"]
        for ns in namespaces:
            cmd += ["--namespace", ns]
        env = {**kube_env, "FEDSEC_RUNTIME_IMAGE": "fedsec", "FEDSEC_OPERATOR_NAMESPACE": "default"}
        self.logfile = logfile
        self._log = open(logfile, "ab")
        self.p = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.proc = Proc(self.p.pid)
        log(f"operator started, pid {self.p.pid}, log {logfile}")

    def alive(self) -> bool:
        return self.p.poll() is None

    def wait_started(self, timeout: float = 60) -> float:
        """Until kopf's watches are up (its log says so), returns the seconds it took."""
        t0 = now()
        while now() - t0 < timeout:
            if not self.alive():
                raise RuntimeError(f"the operator exited with {self.p.returncode}; see {self.logfile}")
            text = self.logfile.read_text(errors="replace")
            if "fedsec operator:" in text and ("Starting the watch-stream" in text or now() - t0 > 8):
                return now() - t0
            time.sleep(0.2)
        raise TimeoutError(f"the operator did not start within {timeout:.0f} s; see {self.logfile}")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(40)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self._log.close()


# -- watching what appears -------------------------------------------------------------------------


class Arrivals:
    """When each object matching a label selector first shows up (ADDED on a watch)."""

    def __init__(self, list_fn: Callable[..., Any], label_selector: str, **kw: Any) -> None:
        self.list_fn, self.selector, self.kw = list_fn, label_selector, kw
        self.times: dict[tuple[str, str], float] = {}
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._w = watch.Watch()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        if not self.ready.wait(30):
            raise TimeoutError("the watch did not start")

    def _run(self) -> None:
        try:
            first = self.list_fn(label_selector=self.selector, **self.kw)
            for o in first.items:
                self.times.setdefault((o.metadata.namespace, o.metadata.name), now())
            rv = first.metadata.resource_version
            self.ready.set()
            for ev in self._w.stream(self.list_fn, label_selector=self.selector, resource_version=rv,
                                     timeout_seconds=900, **self.kw):
                o = ev["object"]
                if ev["type"] == "ADDED":
                    self.times.setdefault((o.metadata.namespace, o.metadata.name), now())
        except BaseException as exc:  # noqa: BLE001 - reported to the waiter
            self.error = exc
            self.ready.set()

    def wait(self, n: int, timeout: float) -> list[float]:
        t0 = now()
        while len(self.times) < n:
            if self.error is not None:
                raise RuntimeError(f"watch failed: {self.error}")
            if now() - t0 > timeout:
                raise TimeoutError(f"{len(self.times)} of {n} objects ({self.selector}) after {timeout:.0f} s")
            time.sleep(0.02)
        return sorted(self.times.values())

    def stop(self) -> None:
        self._w.stop()


def wait_until(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.5) -> float:
    t0 = now()
    while not check():
        if now() - t0 > timeout:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(interval)
    return now() - t0


# -- manifests -------------------------------------------------------------------------------------


def load_example(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples/breast-cancer" / name).read_text())


def site_manifests(sfx: str, study: str, n: int, namespaces: list[str], runnable: int) -> list[dict[str, Any]]:
    """n FederatedClients like hospital-01, partition shards=n, spread round-robin over namespaces."""
    base = load_example("hospital-01.yaml")
    out = []
    for i in range(n):
        fc = json.loads(json.dumps(base))
        fc["metadata"] = {"name": f"site-{sfx}-{i:03d}", "namespace": namespaces[i % len(namespaces)],
                          "labels": {"fedsec.io/study": study}}
        part = fc["spec"]["data"]["builtin"]["partition"]
        part["shards"], part["shard"] = n, i
        if i >= runnable:
            fc["spec"]["nodeSelector"] = dict(UNSCHEDULABLE)
        out.append(fc)
    return out


def job_manifest(name: str, namespace: str, study: str, quorum: int) -> dict[str, Any]:
    job = load_example("job.yaml")
    job["metadata"] = {"name": name, "namespace": namespace}
    job["spec"]["clients"]["selector"]["matchLabels"] = {"fedsec.io/study": study}
    # The example's minFraction 0.8 would need 40 running client pods; this node runs about 18 at
    # 100m, and only --runnable sites are schedulable here (see the module's docstring).
    job["spec"]["quorum"] = {**job["spec"]["quorum"], "minClients": quorum}
    job["spec"]["quorum"].pop("minFraction", None)
    return job


def baseline_manifests(job: dict[str, Any], fcs: list[dict[str, Any]], name: str,
                       order: str = "grouped") -> list[dict[str, Any]]:
    """What the operator makes per site (Secret with TLS + signing keys, ConfigMap, batch Job), for a
    job of another name and a made-up uid, rendered here with the operator's own code. ``grouped``:
    all Secrets, then all ConfigMaps, then all Jobs; ``per-site``: Secret, ConfigMap, Job of one
    site after the other, as the operator's pass makes them."""
    uid = str(uuid.uuid4())
    body = json.loads(json.dumps(job))
    body["metadata"] = {**body["metadata"], "name": name, "uid": uid, "generation": 1}
    fj = parse_job(body)
    names = JobNames(name, uid)
    settings = ch.Settings(runtime_image="fedsec", operator_namespace="default")
    c0 = time.process_time()
    ca = pki.new_ca(f"{fj.metadata.namespace}/{name}")
    secrets_, cms, jobs = [], [], []
    for fc in fcs:
        site = parse_client(fc)
        s, sns = site.metadata.name, site.metadata.namespace
        owner = ch.Owner(API_VERSION, "FederatedClient", s, fc["metadata"]["uid"])
        labels = names.labels(ROLE_CLIENT, s)
        tls = pki.issue_tls(ca, s, [])
        secrets_.append(ch.secret(names.site_secret(s), sns, labels, owner,
                                  {"ca.crt": ca.cert_pem, "tls.crt": tls.cert_pem, "tls.key": tls.key_pem,
                                   **keyring.identity_files(ca, s, 0)}, immutable=False))
        cms.append(ch.config_map(names.site(s), sns, labels, owner,
                                 {ch.CLIENT_CONFIG: ch.client_config(fj, uid, site, names, settings)}))
        jobs.append(ch.client_job(names, site, owner, settings))
    BASELINE_RENDER_CPU.append(time.process_time() - c0)
    if order == "per-site":
        return [o for trio in zip(secrets_, cms, jobs) for o in trio]
    return secrets_ + cms + jobs


def keygen_cpu(n: int) -> float:
    """CPU seconds to issue what the operator issues per site (TLS + signing keys) n times, in process."""
    ca = pki.new_ca("bench/keys")
    c0 = time.process_time()
    for i in range(n):
        pki.issue_tls(ca, f"site-{i}", [])
        pki.issue_signing(ca, f"site-{i}", epoch=0)
    return time.process_time() - c0


# -- the run ---------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        kubeconfig, bindir = cluster()
        self.kubectl = Kubectl(kubeconfig, bindir)
        config.load_kube_config(kubeconfig)
        self.api = client.ApiClient()
        self.batch = client.BatchV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.sfx = secrets.token_hex(3)
        self.job_ns = f"opbench-{self.sfx}-jobs"
        self.site_ns = [f"opbench-{self.sfx}-s{k}" for k in range(args.site_namespaces)]
        self.workdir = Path(tempfile.mkdtemp(prefix=f"opbench-{self.sfx}-"))
        self.operator: Operator | None = None
        self.live_jobs: list[str] = []
        self.result: dict[str, Any] = {}

    @property
    def namespaces(self) -> list[str]:
        return [self.job_ns, *self.site_ns]

    def apply(self, objs: list[dict[str, Any]], tag: str) -> Path:
        path = self.workdir / f"{tag}.json"
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
        self.kubectl("apply", "-f", str(path), timeout=300)
        return path

    def start_operator(self, tag: str) -> Operator:
        op = Operator(self.namespaces, self.kubectl.env, self.workdir / f"operator-{tag}.log")
        self.operator = op
        op.wait_started()
        return op

    def stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.stop()
            self.operator = None

    def other_operators(self) -> int:
        pods = self.core.list_pod_for_all_namespaces(label_selector="app.kubernetes.io/name=fedsec-operator").items
        return sum(1 for p in pods if p.status.phase in ("Pending", "Running") and not p.metadata.deletion_timestamp)

    def wait_alone(self) -> float:
        """An operator installed with Helm for all namespaces (other engineers' e2e tests) would
        reconcile this run's job too: wait until none runs (at most --wait-alone seconds)."""
        t0 = now()
        while self.other_operators() and now() - t0 < self.args.wait_alone:
            time.sleep(2)
        if now() - t0 > 1:
            log(f"waited {now() - t0:.0f} s for other fedsec operators to go")
        return now() - t0

    def fc_list(self, study: str) -> list[dict[str, Any]]:
        items = []
        for ns in self.site_ns:
            items += self.custom.list_namespaced_custom_object("fedsec.io", "v1alpha1", ns, "federatedclients",
                                                               label_selector=f"fedsec.io/study={study}")["items"]
        return items

    def label_pods_gone(self, selector: str) -> bool:
        return not self.core.list_pod_for_all_namespaces(label_selector=selector).items

    # -- scenario A --

    def scenario_a(self) -> None:
        a = self.args
        self.start_operator("a")
        study = f"opbench-{self.sfx}-a"
        fcs = site_manifests(self.sfx, study, a.clients, self.site_ns, a.runnable)
        self.apply(fcs, "clients-a")
        # The operator has seen them all once its status is on each: its watches are up.
        wait_until("the operator to write every FederatedClient's status",
                   lambda: sum(1 for f in self.fc_list(study) if (f.get("status") or {}).get("phase")) == a.clients, 180)
        fcs = self.fc_list(study)  # with their uids
        # The operator would refuse a job that fails planning (it writes why into status and makes
        # nothing): check here, so a bad --runnable fails at once instead of after --timeout.
        probe = job_manifest(f"bench-{self.sfx}-probe", self.job_ns, study, a.runnable)
        probe["metadata"]["uid"] = str(uuid.uuid4())
        plan_job(parse_job(probe), [parse_client(f) for f in fcs], {})
        time.sleep(a.settle)
        runs: list[dict[str, Any]] = []
        for rep in range(a.reps):
            runs.append(self.a_operator(rep, study, fcs))
            runs.append(self.a_baseline(rep, study, fcs, "grouped"))
            runs.append(self.a_baseline(rep, study, fcs, "per-site"))
        self.stop_operator()
        ops = [r for r in runs if r["kind"] == "operator" and not r["other_operators"]] \
            or [r for r in runs if r["kind"] == "operator"]
        bases = [r for r in runs if r["kind"] == "baseline"]
        bases_p = [r for r in runs if r["kind"] == "baseline-per-site"]
        med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
        # The sites' first job also creates their ledger volumes (50 more objects, which the next
        # jobs find): that repetition is shown on its own; the medians are over the others.
        first = [r for r in ops if r["ledger_pvcs_before"] < a.clients]
        ops = [r for r in ops if r["ledger_pvcs_before"] >= a.clients] or ops
        summary = {
            "operator_reps_in_median": len(ops),
            "operator_first_job_of_new_sites_all_jobs_s": first[0]["all_jobs_s"] if first else None,
            "operator_first_job_of_new_sites_cpu_s": first[0]["operator_cpu_s"] if first else None,
            "operator_all_jobs_s": med(ops, "all_jobs_s"), "operator_first_job_s": med(ops, "first_job_s"),
            "operator_aggregator_s": med(ops, "aggregator_s"), "operator_cpu_to_all_jobs_s": med(ops, "operator_cpu_s"),
            "baseline_all_jobs_s": med(bases, "all_jobs_s"), "baseline_first_job_s": med(bases, "first_job_s"),
            "baseline_kubectl_wall_s": med(bases, "kubectl_wall_s"), "baseline_kubectl_cpu_s": med(bases, "kubectl_cpu_s"),
            "baseline_per_site_all_jobs_s": med(bases_p, "all_jobs_s"),
            "baseline_per_site_first_job_s": med(bases_p, "first_job_s"),
            "baseline_per_site_kubectl_cpu_s": med(bases_p, "kubectl_cpu_s"),
        }
        summary["ratio_all_jobs_per_site"] = round(summary["operator_all_jobs_s"] / summary["baseline_per_site_all_jobs_s"], 2)
        summary["keygen_cpu_s"] = round(keygen_cpu(a.clients), 3)
        summary["baseline_render_cpu_s"] = round(statistics.median(BASELINE_RENDER_CPU), 3)
        summary["ratio_all_jobs"] = round(summary["operator_all_jobs_s"] / summary["baseline_all_jobs_s"], 2)
        self.result["scenario_a"] = {"clients": a.clients, "runnable": a.runnable, "site_namespaces": a.site_namespaces,
                                     "reps": a.reps, "summary": summary, "runs": runs}

    def a_operator(self, rep: int, study: str, fcs: list[dict[str, Any]]) -> dict[str, Any]:
        a = self.args
        assert self.operator is not None
        waited = self.wait_alone()
        others = self.other_operators()
        name = f"bench-{self.sfx}-{rep}"
        sel = f"fedsec.io/job={name}"
        jobs = Arrivals(self.batch.list_job_for_all_namespaces, sel)
        deps = Arrivals(self.apps.list_namespaced_deployment, sel, namespace=self.job_ns)
        ledgers = sum(len(self.core.list_namespaced_persistent_volume_claim(
            ns, label_selector="app.kubernetes.io/managed-by=fedsec-operator").items) for ns in self.site_ns)
        manifest = job_manifest(name, self.job_ns, study, a.runnable)
        path = self.workdir / f"{name}.json"
        path.write_text(json.dumps(manifest))
        load = os.getloadavg()[0]
        c0, t0 = self.operator.proc.cpu(), now()
        self.live_jobs.append(name)
        wall = self.kubectl.timed_apply(path)
        times = jobs.wait(a.clients, timeout=a.timeout)
        c1 = self.operator.proc.cpu()
        agg = deps.wait(1, timeout=a.timeout)[0]
        c2 = self.operator.proc.cpu()
        jobs.stop(), deps.stop()
        others = max(others, self.other_operators())
        row = {"kind": "operator", "rep": rep, "name": name, "kubectl_wall_s": round(wall, 3),
               "first_job_s": round(times[0] - t0, 3), "all_jobs_s": round(times[-1] - t0, 3),
               "aggregator_s": round(agg - t0, 3), "operator_cpu_s": round(c1 - c0, 3),
               "operator_cpu_to_aggregator_s": round(c2 - c0, 3), "load1": round(load, 2), "other_operators": others,
               "waited_for_other_operator_s": round(waited, 1),
               "ledger_pvcs_before": ledgers}
        if others:
            log("another fedsec operator (all namespaces) ran during this repetition: it may have made some children")
        log(f"operator rep {rep}: first Job {row['first_job_s']} s, all {a.clients} Jobs {row['all_jobs_s']} s, "
            f"aggregator Deployment {row['aggregator_s']} s, operator CPU {row['operator_cpu_s']} s (load {load:.1f})")
        self.delete_job(name)
        return row

    def delete_job(self, name: str) -> None:
        self.kubectl("delete", "federatedjob", name, "-n", self.job_ns, "--wait=false", "--ignore-not-found")
        wait_until(f"FederatedJob {name} to go (the operator removes its finalizer)",
                   lambda: not self.custom.list_namespaced_custom_object(
                       "fedsec.io", "v1alpha1", self.job_ns, "federatedjobs",
                       field_selector=f"metadata.name={name}")["items"], 180)
        self.live_jobs.remove(name)
        sel = f"fedsec.io/job={name}"
        wait_until(f"the client Jobs and pods of {name} to go",
                   lambda: not self.batch.list_job_for_all_namespaces(label_selector=sel).items
                   and self.label_pods_gone(sel), 240, interval=1.0)

    def a_baseline(self, rep: int, study: str, fcs: list[dict[str, Any]], order: str) -> dict[str, Any]:
        a = self.args
        name = f"base{'p' if order == 'per-site' else ''}-{self.sfx}-{rep}"
        sel = f"fedsec.io/job={name}"
        job = job_manifest(name, self.job_ns, study, a.runnable)
        objs = baseline_manifests(job, fcs, name, order)
        path = self.workdir / f"{name}.json"
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
        jobs = Arrivals(self.batch.list_job_for_all_namespaces, sel)
        load = os.getloadavg()[0]
        k0, t0 = child_cpu(), now()
        wall = self.kubectl.timed_apply(path)
        kcpu = child_cpu() - k0
        times = jobs.wait(a.clients, timeout=a.timeout)
        jobs.stop()
        row = {"kind": "baseline" if order == "grouped" else "baseline-per-site", "rep": rep, "name": name, "objects": len(objs), "kubectl_wall_s": round(wall, 3),
               "kubectl_cpu_s": round(kcpu, 3), "first_job_s": round(times[0] - t0, 3),
               "all_jobs_s": round(times[-1] - t0, 3), "load1": round(load, 2)}
        log(f"baseline ({order}) rep {rep}: {len(objs)} objects, kubectl {row['kubectl_wall_s']} s, all {a.clients} Jobs "
            f"{row['all_jobs_s']} s (load {load:.1f})")
        for ns in self.site_ns:
            self.kubectl("delete", "jobs,configmaps,secrets", "-n", ns, "-l", sel, "--wait=false", "--ignore-not-found")
        wait_until(f"the baseline's Jobs and pods {name} to go",
                   lambda: not self.batch.list_job_for_all_namespaces(label_selector=sel).items
                   and self.label_pods_gone(sel), 240, interval=1.0)
        return row

    # -- scenario B --

    def scenario_b(self) -> None:
        a = self.args
        self.wait_alone()
        op = self.start_operator("b")
        time.sleep(a.settle)
        log(f"idle with 0 FederatedClients for {a.idle_seconds} s")
        idle0 = op.proc.sample(a.idle_seconds)
        idle0["load1"] = round(os.getloadavg()[0], 2)
        idle0["other_operators"] = self.other_operators()
        study = f"opbench-{self.sfx}-b"
        fcs = site_manifests(self.sfx, study, a.idle_clients, self.site_ns, runnable=a.idle_clients)
        path = self.workdir / "clients-b.json"
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": fcs}))
        op.proc.reset_peak()
        log(f"creating {a.idle_clients} FederatedClients")
        done = {"t": None}
        t0 = now()

        def all_have_status() -> bool:
            n = sum(1 for f in self.fc_list(study) if (f.get("status") or {}).get("phase"))
            if n == a.idle_clients and done["t"] is None:
                done["t"] = now() - t0
            return done["t"] is not None

        applier = threading.Thread(target=self.kubectl.timed_apply, args=(path,), daemon=True)
        applier.start()
        quiet = {"n": 0, "c": op.proc.cpu()}

        def settled() -> bool:
            # every FederatedClient has its status, and the operator used no CPU for 2 s
            c = op.proc.cpu()
            quiet["n"] = quiet["n"] + 1 if c == quiet["c"] else 0
            quiet["c"] = c
            return not applier.is_alive() and all_have_status() and quiet["n"] >= 4

        burst = op.proc.sample(300, interval=0.5, until=settled)
        burst["all_status_s"] = round(done["t"], 2) if done["t"] is not None else None
        burst["load1"] = round(os.getloadavg()[0], 2)
        burst["other_operators"] = self.other_operators()
        log(f"burst: every FederatedClient has its status after {burst['all_status_s']} s; settling {a.settle} s")
        time.sleep(a.settle)
        log(f"idle with {a.idle_clients} FederatedClients for {a.idle_seconds} s")
        idle1 = op.proc.sample(a.idle_seconds)
        idle1["load1"] = round(os.getloadavg()[0], 2)
        idle1["other_operators"] = self.other_operators()
        for ns in self.site_ns:
            self.kubectl("delete", "federatedclients", "-n", ns, "-l", f"fedsec.io/study={study}", "--wait=true",
                         timeout=180)
        self.stop_operator()
        self.result["scenario_b"] = {"clients": a.idle_clients, "idle_seconds": a.idle_seconds,
                                     "idle_0_clients": idle0, "burst": burst, "idle_n_clients": idle1}

    # -- set-up and clean-up --

    def setup(self) -> None:
        for ns in self.namespaces:
            self.kubectl("create", "namespace", ns)
        for ns in self.namespaces:
            wait_until(f"namespace {ns}'s default ServiceAccount",
                       lambda ns=ns: bool(self.core.list_namespaced_service_account(ns).items), 60)

    def cleanup(self) -> None:
        try:
            if self.live_jobs and self.operator is None:
                self.operator = Operator(self.namespaces, self.kubectl.env, self.workdir / "operator-cleanup.log")
            for name in list(self.live_jobs):
                try:
                    self.delete_job(name)
                except Exception as exc:  # noqa: BLE001
                    log(f"clean-up: {exc}")
        finally:
            self.stop_operator()
            for ns in self.namespaces:
                self.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)


def table(res: dict[str, Any]) -> str:
    lines = []
    if "scenario_a" in res:
        s = res["scenario_a"]
        m = s["summary"]
        n = s["clients"]
        lines += [f"Scenario A: one FederatedJob with {n} clients, s from kubectl apply; medians of {s['reps']} "
                  f"(operator: of the {m['operator_reps_in_median']} repetitions whose sites had their ledger volumes)", "",
                  "| | first client Job | all client Jobs | aggregator Deployment | CPU s to all Jobs |",
                  "|---|---|---|---|---|",
                  f"| operator | {m['operator_first_job_s']:.2f} | {m['operator_all_jobs_s']:.2f} | "
                  f"{m['operator_aggregator_s']:.2f} | {m['operator_cpu_to_all_jobs_s']:.2f} (operator) |",
                  f"| baseline: one kubectl apply of {n} Secrets, then ConfigMaps, then Jobs | {m['baseline_first_job_s']:.2f} | "
                  f"{m['baseline_all_jobs_s']:.2f} | - | {m['baseline_kubectl_cpu_s']:.2f} (kubectl) |",
                  f"| baseline, per site: Secret, ConfigMap, Job of one site after the other | "
                  f"{m['baseline_per_site_first_job_s']:.2f} | {m['baseline_per_site_all_jobs_s']:.2f} | - | "
                  f"{m['baseline_per_site_kubectl_cpu_s']:.2f} (kubectl) |",
                  f"| operator, the sites' first job (creates {n} ledger PVCs too) | | "
                  f"{m['operator_first_job_of_new_sites_all_jobs_s']} | | {m['operator_first_job_of_new_sites_cpu_s']} (operator) |",
                  f"| ratio operator / baseline (grouped; per site) | | {m['ratio_all_jobs']:.2f}; "
                  f"{m['ratio_all_jobs_per_site']:.2f} | | |", "",
                  f"In process, issuing the {n} sites' keys (TLS + signing) takes {m['keygen_cpu_s']:.3f} CPU s; "
                  f"rendering the baseline's {3 * n} objects, keys included, {m['baseline_render_cpu_s']:.3f} CPU s.", "",
                  "| run | kind | first Job s | all Jobs s | aggregator s | CPU s | ledger PVCs before | load1 | other operators |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in s["runs"]:
            cpu = r.get("operator_cpu_s", r.get("kubectl_cpu_s"))
            lines.append(f"| {r['rep']} | {r['kind']} | {r['first_job_s']:.2f} | {r['all_jobs_s']:.2f} | "
                         f"{r.get('aggregator_s', '-')} | {cpu:.2f} | {r.get('ledger_pvcs_before', '-')} | {r['load1']} | "
                         f"{r.get('other_operators', '-')} |")
        lines.append("")
    if "scenario_b" in res:
        s = res["scenario_b"]
        lines += [f"Scenario B: the operator with no job, {s['clients']} FederatedClients", "",
                  "| phase | seconds | CPU s | CPU % of a core | max CPU % (one sample) | RSS median MiB | RSS max MiB | peak (VmHWM) MiB | load1 | other operators |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for k, label in (("idle_0_clients", "idle, 0 clients (baseline)"),
                         ("burst", f"creating {s['clients']} (until all have status and 2 s quiet)"),
                         ("idle_n_clients", f"idle, {s['clients']} clients")):
            p = s[k]
            lines.append(f"| {label} | {p['seconds']:.1f} | {p['cpu_s']:.2f} | {p['cpu_pct']:.2f} | {p['cpu_pct_max_1s']:.1f} | "
                         f"{p['rss_mib_median']:.1f} | {p['rss_mib_max']:.1f} | {p['hwm_mib']:.1f} | {p['load1']} | {p['other_operators']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=50, help="FederatedClients of the job in scenario A (default 50)")
    ap.add_argument("--idle-clients", type=int, default=200, help="FederatedClients in scenario B (default 200)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of scenario A and of its baseline (median)")
    ap.add_argument("--site-namespaces", type=int, default=5, help="namespaces the sites are spread over (default 5)")
    ap.add_argument("--runnable", type=int, default=5,
                    help="sites whose pods can run here; also the job's quorum (minClients; default 5)")
    ap.add_argument("--idle-seconds", type=float, default=60.0, help="idle sampling in scenario B (default 60)")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds to let the operator settle (default 10)")
    ap.add_argument("--timeout", type=float, default=300.0, help="limit of each wait in scenario A (default 300)")
    ap.add_argument("--wait-alone", type=float, default=300.0,
                    help="before each operator repetition, wait this long at most for other fedsec operators "
                         "(a Helm install watching all namespaces) to go (default 300)")
    ap.add_argument("--skip-jobs", action="store_true", help="no scenario A")
    ap.add_argument("--skip-idle", action="store_true", help="no scenario B")
    ap.add_argument("--json", type=Path, default=Path(__file__).with_name("operator_bench.json"),
                    help="write every figure here (default: operator_bench.json beside this file)")
    args = ap.parse_args()

    bench = Bench(args)
    res = bench.result
    res["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    res["machine"] = {"cpus": os.cpu_count(), "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
                      "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                               text=True).stdout.strip()}
    res["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    log(f"namespaces {', '.join(bench.namespaces)}; work dir {bench.workdir}")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        bench.setup()
        if not args.skip_idle:
            bench.scenario_b()
        if not args.skip_jobs:
            bench.scenario_a()
    finally:
        bench.cleanup()
    res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    res["machine"]["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(table(res))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=1))
    log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
