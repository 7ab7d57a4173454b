"""The session's one operator: `helm install` of charts/fedsec-operator (see operator_install.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cluster_fixtures import Kubectl, wait_until
from operator_install import (
    CHART, CRD_NAMES, OPERATOR_IMAGE, RELEASE, RELEASE_NAMESPACE, RUNTIME_IMAGE, Release, crd_state, docs,
    operator_pod_ready,
)


@pytest.fixture(scope="session")
def operator_release(kubectl: Kubectl) -> Iterator[Release]:
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
        "helm", "upgrade", "--install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
        "--set", f"image.repository={OPERATOR_IMAGE}", "--set", "image.tag=e2e",
        "--set", f"runtimeImage.repository={RUNTIME_IMAGE}", "--set", "runtimeImage.tag=e2e",
        # The node agent runs containers as processes on this machine, as runAsUser if set; the
        # project's Python lives under /root, out of uid 65532's reach. Unset here, a real kubelet
        # takes the uid from the image's USER 65532 (runAsNonRoot stays true).
        "--set", "podSecurityContext.runAsUser=null", "--set", "podSecurityContext.runAsGroup=null",
        "--timeout", "120s",
    ], timeout=150)
    manifest = docs(kubectl.run(["helm", "get", "manifest", RELEASE, "-n", RELEASE_NAMESPACE]).stdout)
    dep = next(o for o in manifest if o["kind"] == "Deployment")
    for c in CRD_NAMES:
        kubectl("wait", "--for=condition=Established", f"crd/{c}", "--timeout=60s", timeout=90)
    wait_until("the operator pod to be Ready", lambda: operator_pod_ready(kubectl, RELEASE_NAMESPACE), 120)
    try:
        yield Release(RELEASE, RELEASE_NAMESPACE, dep["spec"]["template"]["spec"]["serviceAccountName"],
                      dep["metadata"]["name"], manifest)
    finally:
        kubectl.run(["helm", "uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", "--timeout", "90s"],
                    check=False, timeout=120)
        kubectl("delete", "namespace", RELEASE_NAMESPACE, "--wait=true", "--timeout=90s", check=False, timeout=120)
