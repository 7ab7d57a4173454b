"""kstatus (sigs.k8s.io/cli-utils), whose rules Flux's health checks use, reads FederatedJob statuses as
intended: a running job is InProgress, a finished one Current, a failed one Failed, and a status that
has not yet observed the latest spec is InProgress.

No operator runs here: the test writes each status shape through the status subresource itself and
runs the real kstatus code (tests/cluster/modules/kstatus, built by tests/cluster/build.sh) on the
object as the API server returns it (`kubectl ... -o json`: the answer to the write itself, so an
operator that another test session runs on a shared cluster cannot rewrite the status in between). The shapes the issue specifies come from one function, `job_status`; the
operator's own status builder (`fedsec.controller.status.job_status`) is checked the same way.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster_fixtures import ClusterInfo, Kubectl, wait_until

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.cluster

JOB = yaml.safe_load((ROOT / "examples" / "breast-cancer" / "job.yaml").read_text())
NAME = JOB["metadata"]["name"]
CRD_NAMES = ("federatedjobs.fedsec.io", "federatedclients.fedsec.io")
NOW = "2026-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def crds(kubectl: Kubectl) -> None:
    # As tests/e2e/operator/test_crds.py installs them. A CRD that an earlier module deleted may still be
    # terminating: wait until it is gone, or the apply below would be undone by the pending deletion.
    def settled() -> bool:
        for name in CRD_NAMES:
            r = kubectl("get", f"crd/{name}", "-o", "json", check=False)
            if r.returncode == 0 and json.loads(r.stdout)["metadata"].get("deletionTimestamp"):
                return False
        return True

    wait_until("terminating fedsec CRDs to go", settled, 120)
    kubectl("apply", "-f", str(ROOT / "crds"))
    for name in CRD_NAMES:
        kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s", timeout=90)
    # Not deleted afterwards: the cluster may be shared with concurrent sessions whose jobs need them,
    # and applying the committed CRDs again is idempotent.


@pytest.fixture(scope="module")
def kstatus(cluster: ClusterInfo) -> Path:
    binary = cluster.bindir / "kstatus"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run `bash tests/cluster/build.sh` (it builds tests/cluster/modules/kstatus)")
    return binary


def _condition(type_: str, status: bool | None, reason: str, message: str, generation: int) -> dict[str, Any]:
    return {
        "type": type_,
        "status": {True: "True", False: "False", None: "Unknown"}[status],
        "reason": reason,
        "message": message,
        "lastTransitionTime": NOW,
        "observedGeneration": generation,
    }


def job_status(shape: str, generation: int) -> dict[str, Any]:
    """The FederatedJob status the operator writes for a running, succeeded or failed job.

    Conditions in the metav1.Condition shape: the design's Ready, QuorumMet, KeysReady, Degraded,
    RolledBack, plus kstatus's Reconciling and Stalled.
    """
    g = generation
    common = [
        _condition("KeysReady", True, "KeysIssued", "key epoch 0 issued", g),
        _condition("Degraded", False, "AllSitesHealthy", "no site quarantined", g),
        _condition("RolledBack", False, "NoRollback", "no round rolled back", g),
    ]
    if shape == "running":
        phase, rnd = "Running", 7
        conditions = [
            _condition("Ready", False, "Training", "round 7 of 20 in progress", g),
            _condition("QuorumMet", True, "QuorumMet", "10 of 12 sites joined (10 required)", g),
            _condition("Reconciling", True, "Training", "round 7 of 20 in progress", g),
            _condition("Stalled", False, "Training", "round 7 of 20 in progress", g),
        ]
    elif shape == "succeeded":
        phase, rnd = "Succeeded", 20
        conditions = [
            _condition("Ready", True, "Succeeded", "20 rounds committed; model version 20", g),
            _condition("QuorumMet", True, "QuorumMet", "10 of 12 sites joined (10 required)", g),
            _condition("Reconciling", False, "Succeeded", "20 rounds committed", g),
            _condition("Stalled", False, "Succeeded", "20 rounds committed", g),
        ]
    elif shape == "failed":
        phase, rnd = "Failed", 4
        message = "round 5 missed quorum 4 times (maxRetries 3): 6 of 12 sites joined, 10 required"
        conditions = [
            _condition("Ready", False, "QuorumNotMet", message, g),
            _condition("QuorumMet", False, "QuorumNotMet", message, g),
            _condition("Reconciling", False, "QuorumNotMet", message, g),
            _condition("Stalled", True, "QuorumNotMet", message, g),
        ]
    else:
        raise ValueError(f"unknown status shape {shape!r}")
    return {
        "phase": phase,
        "round": rnd,
        "observedGeneration": g,
        "conditions": conditions + common,
    }


@pytest.fixture
def job(crds: None, kubectl: Kubectl, namespace: str) -> str:
    """The example job, created in a fresh namespace; returns the namespace."""
    kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(JOB))
    return namespace


def _generation(kubectl: Kubectl, namespace: str) -> int:
    return int(kubectl.json("get", "fj", NAME, "-n", namespace)["metadata"]["generation"])


def _set_status(kubectl: Kubectl, namespace: str, status: dict[str, Any]) -> str:
    """Writes the whole status; returns the object the API server stored, as JSON."""
    return kubectl("patch", "fj", NAME, "-n", namespace, "--subresource=status", "--type=merge",
                   "-p", json.dumps({"status": status}), "-o", "json").stdout


def _kstatus(kstatus: Path, obj: str) -> dict[str, str]:
    r = subprocess.run([str(kstatus)], input=obj, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize(("shape", "expected", "message"), [
    ("running", "InProgress", "round 7 of 20 in progress"),        # Reconciling=True
    ("succeeded", "Current", "Resource is Ready"),                  # Ready=True, neither abnormal condition
    ("failed", "Failed", "round 5 missed quorum 4 times"),          # Stalled=True
])
def test_kstatus_reads_the_job_status(job: str, kubectl: Kubectl, kstatus: Path,
                                      shape: str, expected: str, message: str) -> None:
    namespace = job
    got = _kstatus(kstatus, _set_status(kubectl, namespace, job_status(shape, _generation(kubectl, namespace))))
    assert got["status"] == expected, got
    assert message in got["message"], got


def operator_status(shape: str, generation: int) -> dict[str, Any]:
    """The same shapes from the operator's own status builder (fedsec.controller.status)."""
    from fedsec.controller import status as st

    sites = ["hospital-01", "hospital-02"]
    running = {"round": 7, "sites": {s: "live" for s in sites}}
    aggregator = {
        "pending": None,
        "waiting": None,
        "running": running,
        "succeeded": {"finished": True, "status": st.SUCCEEDED, "round": 20, "reason": "20 rounds committed"},
        "failed": {"finished": True, "status": st.FAILED, "round": 4, "reason": "round 5 missed quorum 4 times"},
    }[shape]
    obs = st.Observation(generation=generation, rounds=20, admitted=sites, quorum=2, keys_ready=shape != "pending",
                         aggregator_started=aggregator is not None, aggregator=aggregator)
    return st.job_status(obs, {})


@pytest.mark.parametrize(("shape", "expected"), [
    ("pending", "InProgress"), ("waiting", "InProgress"), ("running", "InProgress"),
    ("succeeded", "Current"), ("failed", "Failed"),
])
def test_kstatus_reads_the_operators_status(job: str, kubectl: Kubectl, kstatus: Path, shape: str, expected: str) -> None:
    namespace = job
    obj = _set_status(kubectl, namespace, operator_status(shape, _generation(kubectl, namespace)))
    assert _kstatus(kstatus, obj)["status"] == expected


def test_a_status_behind_the_generation_reads_in_progress(job: str, kubectl: Kubectl, kstatus: Path) -> None:
    namespace = job
    obj = _set_status(kubectl, namespace, job_status("succeeded", _generation(kubectl, namespace)))
    assert _kstatus(kstatus, obj)["status"] == "Current"
    # A spec change (a GitOps commit) that the operator has not acted on yet.
    obj = kubectl("patch", "fj", NAME, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": {"rounds": 30}}),
                  "-o", "json").stdout
    generation = json.loads(obj)["metadata"]["generation"]
    assert generation == 2
    assert _kstatus(kstatus, obj) == {
        "status": "InProgress",
        "message": f"FederatedJob generation is {generation}, but latest observed generation is 1",
    }


def test_a_job_without_status_reads_current(crds: None, kubectl: Kubectl, namespace: str, kstatus: Path) -> None:
    """kstatus's fallback, pinned here because it matters to the operator: with no status at all (no
    observedGeneration, no conditions) a job reads Current, so the operator must write Reconciling=True
    and observedGeneration as its first act on a new job (docs/status.md)."""
    obj = kubectl("create", "-n", namespace, "-f", "-", "-o", "json", input=yaml.safe_dump(JOB)).stdout
    assert "status" not in json.loads(obj)
    assert _kstatus(kstatus, obj) == {"status": "Current", "message": "Resource is current"}
