"""The test control plane itself: real API server, RBAC, CRDs, garbage collection."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cluster_fixtures import ClusterInfo, Kubectl, wait_until

pytestmark = pytest.mark.cluster

VERSIONS = Path(__file__).resolve().parents[2] / "cluster" / "versions.env"


def pinned(name: str) -> str:
    for line in VERSIONS.read_text().splitlines():
        if line.startswith(name + "="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(f"{name} missing from {VERSIONS}")


def test_version_reports_the_pinned_release(kubectl: Kubectl) -> None:
    v = json.loads(kubectl("get", "--raw", "/version").stdout)
    assert v["gitVersion"] == pinned("KUBERNETES_VERSION")
    assert v["major"] == "1" and v["minor"] == pinned("KUBERNETES_VERSION").split(".")[1]


def test_node_registered_with_capacity_and_lease(kubectl: Kubectl, cluster: ClusterInfo) -> None:
    node = kubectl.json("get", "node", cluster.node_name)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    assert int(node["status"]["capacity"]["pods"]) > 0
    lease = kubectl.json("get", "lease", cluster.node_name, "-n", "kube-node-lease")
    assert lease["spec"]["holderIdentity"] == cluster.node_name


def test_namespace_and_crd_applied_and_used(kubectl: Kubectl, core_v1: object, namespace: str) -> None:
    group = "e2e.fedsec.io"
    crd = f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: widgets.{group}}}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {{type: integer, minimum: 1}}
"""
    kubectl.apply(crd)
    try:
        _use_widgets(kubectl, core_v1, namespace, group)
    finally:
        kubectl("delete", "crd", f"widgets.{group}", "--wait=false", check=False)


def _use_widgets(kubectl: Kubectl, core_v1: object, namespace: str, group: str) -> None:
    kubectl("wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=30s", timeout=40)
    kubectl.apply(f"apiVersion: {group}/v1\nkind: Widget\nmetadata: {{name: w1}}\nspec: {{size: 3}}\n", namespace)
    got = kubectl.json("get", "widgets", "w1", "-n", namespace)
    assert got["spec"]["size"] == 3
    # The schema is enforced by the real API server.
    bad = kubectl("apply", "-n", namespace, "-f", "-", check=False,
                  input=f"apiVersion: {group}/v1\nkind: Widget\nmetadata: {{name: w2}}\nspec: {{size: 0}}\n")
    assert bad.returncode != 0 and "size" in bad.stderr
    # The namespace came from the fixture; the python client sees it too.
    names = [n.metadata.name for n in core_v1.list_namespace().items]  # type: ignore[attr-defined]
    assert namespace in names


def test_serviceaccount_without_rights_is_refused(kubectl: Kubectl, cluster: ClusterInfo, namespace: str) -> None:
    kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    token = kubectl("create", "token", "nobody", "-n", namespace, "--duration=10m").stdout.strip()
    server = kubectl("config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}").stdout
    ca = kubectl("config", "view", "--raw", "--minify",
                 "-o", "jsonpath={.clusters[0].cluster.certificate-authority-data}").stdout
    import base64

    ctx = ssl.create_default_context(cadata=base64.b64decode(ca).decode())
    req = urllib.request.Request(f"{server}/api/v1/namespaces/{namespace}/pods",
                                 headers={"Authorization": f"Bearer {token}"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, context=ctx, timeout=10)
    assert err.value.code == 403
    assert f"system:serviceaccount:{namespace}:nobody" in err.value.read().decode()
    # Granting the right through RBAC makes the same request pass.
    kubectl("create", "role", "pod-reader", "--verb=list", "--resource=pods", "-n", namespace)
    kubectl("create", "rolebinding", "nobody-reads", "--role=pod-reader",
            f"--serviceaccount={namespace}:nobody", "-n", namespace)

    def allowed() -> bool:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status == 200

    wait_until("the RoleBinding to take effect", allowed, 30)


def test_deleting_the_owner_garbage_collects_the_child(kubectl: Kubectl, namespace: str) -> None:
    kubectl("create", "configmap", "owner", "-n", namespace, "--from-literal=k=v")
    uid = kubectl("get", "configmap", "owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
    kubectl.apply(f"""
apiVersion: v1
kind: ConfigMap
metadata:
  name: child
  ownerReferences:
  - {{apiVersion: v1, kind: ConfigMap, name: owner, uid: {uid}}}
data: {{k: v}}
""", namespace)
    kubectl("delete", "configmap", "owner", "-n", namespace, "--cascade=background")
    wait_until("the garbage collector to delete configmap child",
               lambda: kubectl("get", "configmap", "child", "-n", namespace, check=False).returncode != 0, 60)


def test_namespace_deletion_removes_its_pods_and_finishes(kubectl: Kubectl) -> None:
    import uuid

    ns = f"doomed-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", ns)
    wait_until(f"ServiceAccount {ns}/default",
               lambda: kubectl("get", "serviceaccount", "default", "-n", ns, check=False).returncode == 0, 30)
    kubectl("run", "sleeper", "-n", ns, "--image=not-pulled.invalid/sh", "--command", "--",
            "/bin/sh", "-c", "sleep 3600")
    kubectl("wait", "--for=condition=Ready", "pod/sleeper", "-n", ns, "--timeout=60s", timeout=70)
    kubectl("delete", "namespace", ns, "--wait=false")
    # The namespace controller deletes the pod, the node agent stops it, then the namespace goes.
    wait_until(f"namespace {ns} to be gone",
               lambda: kubectl("get", "namespace", ns, check=False).returncode != 0, 90)
