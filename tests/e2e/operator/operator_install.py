"""The operator as users install it: `helm install` of charts/fedsec-operator, once per test session
(the fixture is in conftest.py; these are the pieces tests share).

Every test that needs a running operator takes ``operator_release``; exactly one operator runs at a
time (two would both reconcile every job). The node agent runs no images: the chart's images get
repositories whose last segment is fedsec-operator / fedsec-runtime, which tests/cluster/images.json
maps to the ``fedsec`` entrypoint of this work tree's virtualenv.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from cluster_fixtures import Kubectl, wait_until
from fedsec_chart import CHART, docs  # noqa: F401  (re-exported for conftest.py)

OPERATOR_IMAGE = "registry.fedsec.test/fedsec/fedsec-operator"
RUNTIME_IMAGE = "registry.fedsec.test/fedsec/fedsec-runtime"
RELEASE, RELEASE_NAMESPACE = "fedsec", "fedsec-system"
CRD_NAMES = ("federatedjobs.fedsec.io", "federatedclients.fedsec.io")


def helm_values() -> list[str]:
    """The chart's values on the test control plane: the e2e fixture and `make cluster-demo` both use these."""
    return [
        "--set", f"image.repository={OPERATOR_IMAGE}", "--set", "image.tag=e2e",
        "--set", f"runtimeImage.repository={RUNTIME_IMAGE}", "--set", "runtimeImage.tag=e2e",
        # The node agent runs containers as processes on this machine, as runAsUser if set; the
        # project's Python lives under /root, out of uid 65532's reach. Unset here, a real kubelet
        # takes the uid from the image's USER 65532 (runAsNonRoot stays true).
        "--set", "podSecurityContext.runAsUser=null", "--set", "podSecurityContext.runAsGroup=null",
    ]


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    service_account: str
    fullname: str  # the operator Deployment's name
    manifest: list[dict[str, Any]]

    @property
    def sa_user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def crd_state(kubectl: Kubectl, name: str) -> str:
    r = kubectl("get", "crd", name, "-o", "json", check=False)
    if r.returncode != 0:
        return "absent"
    return "terminating" if yaml.safe_load(r.stdout)["metadata"].get("deletionTimestamp") else "present"


def operator_pod_ready(kubectl: Kubectl, namespace: str) -> bool:
    pods = kubectl.json("get", "pods", "-n", namespace, "-l", "app.kubernetes.io/name=fedsec-operator")["items"]
    return any(
        not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", []))
        for p in pods
    )


def install_operator(kubectl: Kubectl) -> Release:
    """`helm upgrade --install` of the session's release, waited until its operator pod is Ready.

    The e2e session fixture and `make cluster-demo` (tests/cluster/demo.py) both install through this, so
    the demo runs the operator exactly as the tests do; with the same release name, namespace and values a
    second install is an upgrade to the same manifest, never a second operator.
    """
    for c in CRD_NAMES:
        wait_until(f"CRD {c} to finish terminating", lambda c=c: crd_state(kubectl, c) != "terminating", 90)
    # A previous session's namespace may still be terminating: wait for it to go, then make it anew.
    wait_until(f"namespace {RELEASE_NAMESPACE} from an earlier session to be gone",
               lambda: kubectl("get", "namespace", RELEASE_NAMESPACE, "-o", "jsonpath={.metadata.deletionTimestamp}",
                               check=False).stdout.strip() == "", 120, 1.0)
    kubectl("create", "namespace", RELEASE_NAMESPACE, check=False)
    # Helm installs CRDs that are absent and never updates present ones (its documented design):
    # apply this work tree's, so a session on a cluster with older CRDs tests the current schema.
    kubectl("apply", "-f", str(CHART / "crds"))
    kubectl.run([
        "helm", "upgrade", "--install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, *helm_values(),
        "--timeout", "120s",
    ], timeout=150)
    manifest = docs(kubectl.run(["helm", "get", "manifest", RELEASE, "-n", RELEASE_NAMESPACE]).stdout)
    dep = next(o for o in manifest if o["kind"] == "Deployment")
    for c in CRD_NAMES:
        kubectl("wait", "--for=condition=Established", f"crd/{c}", "--timeout=60s", timeout=90)
    wait_until("the operator pod to be Ready", lambda: operator_pod_ready(kubectl, RELEASE_NAMESPACE), 120)
    return Release(RELEASE, RELEASE_NAMESPACE, dep["spec"]["template"]["spec"]["serviceAccountName"],
                   dep["metadata"]["name"], manifest)


def uninstall_operator(kubectl: Kubectl) -> None:
    kubectl.run(["helm", "uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", "--timeout", "90s"],
                check=False, timeout=120)
    kubectl("delete", "namespace", RELEASE_NAMESPACE, "--wait=true", "--timeout=90s", check=False, timeout=120)
