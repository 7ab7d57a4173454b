"""The operator's create-or-adopt rule against the real API server: it adopts what it made before,
never a predecessor's child on its way out or one that another owner controls."""

from __future__ import annotations

from typing import Any

import pytest

from cluster_fixtures import Kubectl
from fedsec.controller.kube import Kube

pytestmark = pytest.mark.cluster


def config_map(namespace: str, owner: dict[str, Any], finalizers: list[str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "child", "namespace": namespace,
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": owner["metadata"]["name"],
                             "uid": owner["metadata"]["uid"], "controller": True}],
    }
    if finalizers:
        meta["finalizers"] = finalizers
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": "v"}}


def test_ensure_adopts_its_own_and_refuses_a_predecessors_child(k8s_client: Any, kubectl: Kubectl, namespace: str) -> None:
    kube = Kube(k8s_client)
    parents = [kube.ensure({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"parent-{i}", "namespace": namespace}})[0]
               for i in range(2)]
    mine = config_map(namespace, parents[0], finalizers=["fedsec.io/test-hold"])  # the finalizer keeps it while deleting
    created, was_created = kube.ensure(mine)
    assert was_created
    again, was_created = kube.ensure(mine)  # a restarted operator converges on what it made
    assert not was_created and again["metadata"]["uid"] == created["metadata"]["uid"]

    with pytest.raises(RuntimeError, match=rf"belongs to another owner \(uid {parents[0]['metadata']['uid']}\)"):
        kube.ensure(config_map(namespace, parents[1]))

    kubectl("delete", "configmap", "child", "-n", namespace, "--wait=false")
    with pytest.raises(RuntimeError, match="still being deleted"):
        kube.ensure(mine)
    kubectl("patch", "configmap", "child", "-n", namespace, "--type=merge", "-p", '{"metadata": {"finalizers": null}}')
