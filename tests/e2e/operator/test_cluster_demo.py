"""`make cluster-demo`'s script (tests/cluster/demo.py), driven to Succeeded against the session's cluster.

The demo installs the chart through the same function as the session fixture (operator_install.install_operator:
release `fedsec` in `fedsec-system`, same values), so here its install is an upgrade of the session's release to
the same manifest: one operator, never two reconciling the same jobs. The test gives the demo a namespace and a
study label of its own (the example's label would also select the hospitals of test_operator.py's example run)
and 3 rounds instead of 20; the install, apply, watch and hints are the demo's own code.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster_fixtures import ClusterInfo, Kubectl
from operator_install import Release, operator_pod_ready

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "tests" / "cluster" / "demo.py"


@pytest.fixture
def demo_namespace(kubectl: Kubectl) -> Iterator[str]:
    ns = f"demo-{uuid.uuid4().hex[:6]}"
    try:
        yield ns
    finally:
        kubectl("delete", "namespace", ns, "--wait=false", check=False)


def demo(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([sys.executable, str(DEMO), *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"demo.py {' '.join(args)} did not finish within {timeout:.0f}s:\n{e.stdout}") from e


@pytest.mark.slow
def test_the_demo_installs_the_chart_applies_the_example_and_watches_it_to_succeeded(
        operator_release: Release, cluster: ClusterInfo, kubectl: Kubectl, demo_namespace: str) -> None:
    ns = demo_namespace
    r = demo("up", "--kubeconfig", str(cluster.kubeconfig), "--namespace", ns, "--study", ns, "--rounds", "3",
             "--timeout", "420", timeout=540)
    assert r.returncode == 0, f"demo.py up exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    out = r.stdout

    # Progress: a line per change, rounds counted up to the last, the AUC once there is one.
    progress = re.findall(rf"{ns}/breast-cancer\s+(\w+)\s+round (\d+)/(\S+)(?:\s+auc (\S+))?", out)
    assert progress, out
    assert progress[-1][0] == "Succeeded" and progress[-1][1:3] == ("3", "3"), progress
    assert float(progress[-1][3]) >= 0.9, progress[-1]
    assert "Running" in [p[0] for p in progress], progress
    assert "note: FederatedClients outside" not in out, out
    # The hints name this cluster, this namespace, the results' directory and the way down.
    assert f"export KUBECONFIG={cluster.kubeconfig} PATH={cluster.bindir}:$PATH" in out
    assert f"kubectl describe fj -n {ns} breast-cancer" in out
    assert "make cluster-demo-down" in out
    results = re.search(r"^  ls (\S+)\s+# the checkpoint volume", out, re.M)
    assert results and (Path(results[1]) / "summary.json").is_file(), out
    aggregator_log = re.search(r"^  cat (\S+)\s+# the aggregator's log", out, re.M)
    assert aggregator_log, out
    assert "job Succeeded" in Path(aggregator_log[1]).read_text(), aggregator_log[1]
    # Every kubectl command it suggests works as printed, on the finished job.
    hints = [shlex.split(line.split("#", 1)[0]) for line in out.splitlines() if line.startswith("  kubectl ")]
    assert len(hints) >= 5, out
    for argv in hints:
        r = kubectl.run(argv, timeout=60)
        assert r.stdout.strip(), (argv, r.stderr)

    s = kubectl.json("get", "fj", "breast-cancer", "-n", ns)["status"]
    assert s["phase"] == "Succeeded" and s["round"] == 3 and len(s["admitted"]) == 12, s
    # The demo's install upgraded the session's release in place: still exactly one operator, Ready.
    pods = kubectl.json("get", "pods", "-A", "-l", "app.kubernetes.io/name=fedsec-operator")["items"]
    assert {p["metadata"]["namespace"] for p in pods if not p["metadata"].get("deletionTimestamp")} == \
        {operator_release.namespace}
    assert operator_pod_ready(kubectl, operator_release.namespace)

    r = demo("down", "--kubeconfig", str(cluster.kubeconfig), "--namespace", ns, "--keep-operator", timeout=360)
    assert r.returncode == 0, f"demo.py down exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert kubectl("get", "namespace", ns, check=False).returncode != 0
    assert kubectl.run(["helm", "status", operator_release.name, "-n", operator_release.namespace]).returncode == 0

