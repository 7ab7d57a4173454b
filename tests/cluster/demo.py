"""`make cluster-demo`: the operator end to end on the project's test control plane.

    python tests/cluster/demo.py up     # cluster up, chart installed, examples/breast-cancer applied, watched to Succeeded
    python tests/cluster/demo.py down   # delete the demo's namespace, uninstall the chart (`make cluster-demo-down`
                                        # then stops the cluster)

`up` starts the test control plane (tests/cluster/clusterctl.py, as `make cluster-up` does: it stays up),
or uses the cluster of `--kubeconfig`. It installs the chart exactly as the e2e tests do (one function,
tests/e2e/operator/operator_install.py: same release `fedsec` in `fedsec-system`, same values), so a demo
and a test session on one cluster share one operator instead of running two that would both reconcile every
job. The example goes into one namespace (`--namespace`, default breast-cancer-demo; an earlier demo's
namespace is deleted first, so every `up` is a fresh run) and the job's status is printed as it changes, until
Succeeded (exit 0) or Failed (exit 1).

`--rounds` and `--study` exist for the test that drives this script (tests/e2e/operator/test_cluster_demo.py):
fewer rounds, and a study label of its own so that its job selects only its own hospitals. Without them the
example's manifests are applied as they are.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "e2e" / "operator")]

from cluster_fixtures import ClusterInfo, Kubectl, wait_until  # noqa: E402
from operator_install import RELEASE, RELEASE_NAMESPACE, install_operator, uninstall_operator  # noqa: E402

EXAMPLE = ROOT / "examples" / "breast-cancer"
DEFAULT_NAMESPACE = "breast-cancer-demo"
STUDY_LABEL = "fedsec.io/study"
# The example runs 20 rounds of 12 hospitals; on 2 cores under the node agent that is a few minutes.
DEFAULT_TIMEOUT = 1200.0
# RFC 1123 label (namespace names) and a label value, as the API server checks them.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


class DemoError(Exception):
    """A step of the demo failed; the message says which and what to look at."""


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- arguments, checked at the boundary -----------------------------------------------------------
def namespace_arg(value: str) -> str:
    if not DNS_LABEL.match(value):
        raise argparse.ArgumentTypeError(
            f"{value!r}: a namespace name is 1-63 lower-case letters, digits and '-', "
            "starting and ending with a letter or digit")
    if value == RELEASE_NAMESPACE:
        raise argparse.ArgumentTypeError(f"{value!r}: that is the operator's namespace; choose another")
    return value


def rounds_arg(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 1000:
        raise argparse.ArgumentTypeError(f"{value!r}: a whole number of rounds from 1 to 1000")
    return n


def study_arg(value: str) -> str:
    if not value or not LABEL_VALUE.match(value):
        raise argparse.ArgumentTypeError(
            f"{value!r}: a label value is 1-63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit")
    return value


def timeout_arg(value: str) -> float:
    try:
        t = float(value)
    except ValueError:
        t = 0.0
    if not 0 < t <= 24 * 3600:
        raise argparse.ArgumentTypeError(f"{value!r}: seconds, more than 0 and at most 86400")
    return t


def kubeconfig_arg(value: str) -> Path:
    p = Path(value)
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{value!r}: no such file")
    return p.resolve()


# ---- the cluster --------------------------------------------------------------------------------
def bindir() -> Path:
    out = subprocess.run(["bash", str(HERE / "build.sh"), "--print-bindir"], capture_output=True, text=True,
                         timeout=30, check=True)
    return Path(out.stdout.strip())


def cluster_up() -> Path:
    """Starts the test control plane, or joins the running one, the way `make cluster-up` does (it stays up)."""
    say("starting the test control plane (tests/cluster/clusterctl.py up; cold: builds first)")
    # clusterctl's progress goes to stderr, which stays the user's; its last stdout line is the kubeconfig.
    r = subprocess.run([sys.executable, str(HERE / "clusterctl.py"), "up"], stdout=subprocess.PIPE, text=True)
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        raise DemoError(f"the test control plane did not start (clusterctl.py up exited {r.returncode}); "
                        "its errors are above, and its logs in the directory `make -s cluster-up` names")
    return Path(lines[-1])


def connect(kubeconfig: Path) -> Kubectl:
    where = bindir()
    missing = [b for b in ("kubectl", "helm") if not (where / b).is_file()]
    if missing:
        raise DemoError(f"no {' or '.join(missing)} in {where}: build the test control plane's binaries first "
                        "(make cluster-build)")
    return Kubectl(ClusterInfo(kubeconfig, where, "fedsec-node", "", "", None))


# ---- the example ----------------------------------------------------------------------------------
def example_manifests(study: str | None, rounds: int | None) -> list[dict[str, Any]]:
    """examples/breast-cancer's manifests, with the test's overrides if given (none: exactly as written)."""
    docs = [d for p in sorted(EXAMPLE.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    jobs = [d for d in docs if d.get("kind") == "FederatedJob"]
    if len(jobs) != 1:
        raise DemoError(f"{EXAMPLE}: expected one FederatedJob, found {len(jobs)}")
    if study is None and rounds is None:
        return docs
    docs = copy.deepcopy(docs)
    for d in docs:
        if d.get("kind") == "FederatedClient" and study is not None:
            d["metadata"].setdefault("labels", {})[STUDY_LABEL] = study
        elif d.get("kind") == "FederatedJob":
            if study is not None:
                d["spec"]["clients"] = {"selector": {"matchLabels": {STUDY_LABEL: study}}}
            if rounds is not None:
                d["spec"]["rounds"] = rounds
    return docs


def job_name(docs: list[dict[str, Any]]) -> str:
    return next(d["metadata"]["name"] for d in docs if d.get("kind") == "FederatedJob")


def study_of(docs: list[dict[str, Any]]) -> str:
    job = next(d for d in docs if d.get("kind") == "FederatedJob")
    return str(job["spec"]["clients"]["selector"]["matchLabels"][STUDY_LABEL])


def namespace_phase(kubectl: Kubectl, ns: str) -> str:
    """'absent', 'terminating' or 'active'."""
    r = kubectl("get", "namespace", ns, "-o", "json", check=False)
    if r.returncode != 0:
        return "absent"
    return "terminating" if json.loads(r.stdout)["metadata"].get("deletionTimestamp") else "active"


def remove_namespace(kubectl: Kubectl, ns: str, why: str) -> None:
    """Deletes the namespace and waits until it is gone (the operator, still running, removes its finalizers)."""
    if namespace_phase(kubectl, ns) == "absent":
        return
    say(f"deleting namespace {ns}{why} and waiting until it is gone")
    kubectl("delete", "namespace", ns, "--wait=false", check=False)
    wait_until(f"namespace {ns} to be gone", lambda: namespace_phase(kubectl, ns) == "absent", 300, 1.0)


def describe(status: dict[str, Any]) -> str:
    phase = status.get("phase", "Pending")
    planned = status.get("roundsPlanned")
    parts = [f"{phase:<16}", f"round {status.get('round', 0)}" + (f"/{planned}" if planned else "")]
    auc = (status.get("metrics") or {}).get("auc")
    if auc is not None:
        parts.append(f"auc {auc:.4f}")
    if status.get("quorum"):
        parts.append(f"quorum {status['quorum']}")
    if phase in ("Failed", "WaitingForQuorum") and status.get("message"):
        parts.append(str(status["message"]))
    return "  ".join(parts)


def watch(kubectl: Kubectl, ns: str, name: str, timeout: float) -> dict[str, Any]:
    """Prints the job's status each time its phase or round changes; returns it once Succeeded or Failed."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        r = kubectl("get", "fj", name, "-n", ns, "-o", "json", check=False)
        if r.returncode == 0:
            status = json.loads(r.stdout).get("status") or {}
            line = describe(status)
            if line != last:
                say(f"{ns}/{name}  {line}")
                last = line
            if status.get("phase") in ("Succeeded", "Failed"):
                return status
        time.sleep(1.0)
    raise DemoError(f"FederatedJob {ns}/{name} did not finish within {timeout:.0f}s "
                    f"(last: {last or 'no status'}); look with `kubectl describe fj -n {ns} {name}`")


def results_dir(kubectl: Kubectl, ns: str, name: str) -> str | None:
    """Where the node agent keeps the job's checkpoint volume: summary.json, metrics.png, the audit log."""
    r = kubectl("get", "pvc", f"{name}-checkpoints", "-n", ns, "-o", "jsonpath={.spec.volumeName}", check=False)
    pv = r.stdout.strip()
    if r.returncode != 0 or not pv:
        return None
    r = kubectl("get", "pv", pv, "-o", "jsonpath={.spec.hostPath.path}", check=False)
    return r.stdout.strip() or None


def up(args: argparse.Namespace) -> int:
    kubeconfig = args.kubeconfig or cluster_up()
    kubectl = connect(kubeconfig)
    say(f"installing the chart: helm upgrade --install {RELEASE} charts/fedsec-operator -n {RELEASE_NAMESPACE} "
        "(the e2e tests' values)")
    install_operator(kubectl)
    say("the operator pod is Ready")
    ns = args.namespace
    remove_namespace(kubectl, ns, " (an earlier demo's)")
    kubectl("create", "namespace", ns)
    docs = example_manifests(args.study, args.rounds)
    name, study = job_name(docs), study_of(docs)
    kubectl.apply(yaml.safe_dump_all(docs), ns)
    say(f"applied {EXAMPLE.relative_to(ROOT)}/ into namespace {ns}: FederatedJob {name} and "
        f"{sum(d['kind'] == 'FederatedClient' for d in docs)} FederatedClients")
    # The job selects its sites by label in every namespace: hospitals of another study with the same
    # label (a test's, or a demo in another namespace) would join it too.
    others = [f"{c['metadata']['namespace']}/{c['metadata']['name']}" for c in
              kubectl.json("get", "fc", "-A", "-l", f"{STUDY_LABEL}={study}")["items"]
              if c["metadata"]["namespace"] != ns]
    if others:
        say(f"note: FederatedClients outside {ns} carry {STUDY_LABEL}={study} and will join this job too: "
            + ", ".join(others[:5]) + (" ..." if len(others) > 5 else ""))
    status = watch(kubectl, ns, name, args.timeout)
    env = f"export KUBECONFIG={kubeconfig} PATH={kubectl.info.bindir}:$PATH"
    print(f"""
Look around:
  {env}
  kubectl get fj,fc -n {ns}   # phase, round, the AUC in the METRIC column
  kubectl describe fj -n {ns} {name}   # conditions and Events
  kubectl get pods,jobs,deploy,svc,netpol -n {ns}
  kubectl logs -n {RELEASE_NAMESPACE} -l app.kubernetes.io/name=fedsec-operator""")
    jobs = kubectl("get", "jobs", "-n", ns, "-o", "name", check=False).stdout.split()
    if jobs:
        print(f"  kubectl logs -n {ns} {jobs[0]}   # one hospital's client")
    # A finished job's aggregator is scaled to 0, so `kubectl logs` has no pod to read; the node agent of
    # the test control plane keeps every pod's log in its state directory, beside the kubeconfig.
    # An earlier demo's aggregator logs stay there too: name this run's, the newest.
    logs = sorted((kubeconfig.parent / "logs" / "pods").glob(f"{ns}_{name}-aggregator-*/aggregator/*.log"),
                  key=lambda p: p.stat().st_mtime)
    if logs:
        print(f"  cat {logs[-1]}   # the aggregator's log")
    where = results_dir(kubectl, ns, name)
    if where:
        print(f"  ls {where}   # the checkpoint volume: summary.json, metrics.png, audit log")
    print("Tear down: make cluster-demo-down   (the demo's namespace and the chart, then the cluster)")
    if status.get("phase") != "Succeeded":
        raise DemoError(f"FederatedJob {ns}/{name} failed: {status.get('message', 'no message')}")
    say(f"done: {describe(status)}")
    return 0


def down(args: argparse.Namespace) -> int:
    if args.kubeconfig is None:
        r = subprocess.run([sys.executable, str(HERE / "clusterctl.py"), "status"], capture_output=True, text=True)
        if r.returncode != 0 or not r.stdout.strip():
            say("the test control plane is not running: nothing to remove")
            return 0
        kubeconfig = Path(r.stdout.strip().splitlines()[-1])
    else:
        kubeconfig = args.kubeconfig
    kubectl = connect(kubeconfig)
    remove_namespace(kubectl, args.namespace, "")
    if args.keep_operator:
        say(f"kept the chart's release {RELEASE} in {RELEASE_NAMESPACE} (--keep-operator)")
    else:
        say(f"uninstalling {RELEASE} from {RELEASE_NAMESPACE}")
        uninstall_operator(kubectl)
    say("demo removed")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up", "down"])
    ap.add_argument("--kubeconfig", type=kubeconfig_arg,
                    help="use this cluster instead of starting the test control plane")
    ap.add_argument("--namespace", type=namespace_arg, default=DEFAULT_NAMESPACE,
                    help=f"the example's namespace (default {DEFAULT_NAMESPACE})")
    ap.add_argument("--rounds", type=rounds_arg, help="override the example's spec.rounds (the test uses 3)")
    ap.add_argument("--study", type=study_arg,
                    help=f"override the example's {STUDY_LABEL} label on the job's selector and its clients")
    ap.add_argument("--timeout", type=timeout_arg, default=DEFAULT_TIMEOUT,
                    help=f"seconds to wait for the job to finish (default {DEFAULT_TIMEOUT:.0f})")
    ap.add_argument("--keep-operator", action="store_true", help="down: leave the chart's release installed")
    args = ap.parse_args(argv)
    try:
        return up(args) if args.command == "up" else down(args)
    except (DemoError, AssertionError) as e:
        # AssertionError is how the shared kubectl helpers report a failed or timed-out command.
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (subprocess.SubprocessError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: whatever was applied stays in the cluster; remove it with `make cluster-demo-down`",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
