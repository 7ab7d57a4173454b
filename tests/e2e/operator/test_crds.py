"""The generated CRDs on a real API server: they install, the examples are accepted, and invalid
manifests are refused by the API server itself, naming the field."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster_fixtures import Kubectl, wait_until

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.cluster

JOB = yaml.safe_load((ROOT / "examples" / "breast-cancer" / "job.yaml").read_text())
CLIENT = yaml.safe_load((ROOT / "examples" / "breast-cancer" / "hospital-01.yaml").read_text())


@pytest.fixture(scope="module")
def crds(kubectl: Kubectl) -> Iterator[None]:
    kubectl("apply", "-f", str(ROOT / "crds"))
    for name in ("federatedjobs.fedsec.io", "federatedclients.fedsec.io"):
        kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s", timeout=90)
    # The CRDs stay: they are cluster-wide, and the operator tests of this session (and a Helm
    # release, which never deletes CRDs) use the same ones. Applying them again is idempotent.
    yield


def with_(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


def test_examples_are_accepted(crds: None, kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "breast-cancer"))
    wait_until("12 FederatedClients listed", lambda: len(kubectl.json("get", "fc", "-n", namespace)["items"]) == 12)
    out = kubectl("get", "fedsec", "-n", namespace).stdout  # the category lists both kinds
    assert "federatedjob.fedsec.io/breast-cancer" in out and "federatedclient.fedsec.io/hospital-12" in out
    columns = kubectl("get", "fj", "-n", namespace).stdout.splitlines()[0].split()
    assert columns[:3] == ["NAME", "PHASE", "ROUND"] and "AGE" in columns


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        (with_(JOB, "spec.rounds", 0), "spec.rounds"),
        (with_(JOB, "spec.rounds", "many"), "spec.rounds"),
        (with_(JOB, "spec.quorum.minFraction", 1.5), "spec.quorum.minFraction"),
        (with_(JOB, "spec.quorum", {"roundTimeoutSeconds": 5}), "spec.quorum"),
        (with_(JOB, "spec.model.builtin", "transformer"), "spec.model.builtin"),
        (with_(JOB, "spec.model", {"inputDim": 30}), "spec.model"),
        (with_(JOB, "spec.task.optimizer", "lbfgs"), "spec.task.optimizer"),
        (with_(JOB, "spec.task.learningRate", 0), "spec.task.learningRate"),
        (with_(JOB, "spec.secureAggregation.mode", "magic"), "spec.secureAggregation.mode"),
        (with_(JOB, "spec.privacy", {"mechanism": "dp-sgd"}), "spec.privacy"),
        (with_(JOB, "spec.clients.selector.matchExpressions", [{"key": "a", "operator": "Near"}]), "spec.clients.selector.matchExpressions[0].operator"),
        (with_(JOB, "spec.task.surprise", 1), "surprise"),
        (with_(CLIENT, "spec.data", {}), "spec.data"),
        (with_(CLIENT, "spec.data.builtin.partition.shard", 12), "spec.data.builtin.partition"),
        (with_(CLIENT, "spec.data.builtin.name", "mnist"), "spec.data.builtin.name"),
        (with_(CLIENT, "spec.policy.allowedAggregatorImages", ["ghcr.io/fedsec/runtime latest"]),
         "spec.policy.allowedAggregatorImages[0]"),
        (with_(CLIENT, "spec.policy.allowedModelFactories", ["mypkg.models:*"]), "spec.policy.allowedModelFactories[0]"),
    ],
)
def test_invalid_manifests_are_refused_by_the_api_server(crds: None, kubectl: Kubectl, namespace: str,
                                                         doc: dict[str, Any], field: str) -> None:
    r = kubectl("apply", "-n", namespace, "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert r.returncode != 0, f"accepted:\n{yaml.safe_dump(doc)}"
    assert field in r.stderr, r.stderr
