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

from cluster_fixtures import Kubectl
from fedsec_chart import CHART, docs  # noqa: F401  (re-exported for conftest.py)

OPERATOR_IMAGE = "registry.fedsec.test/fedsec/fedsec-operator"
RUNTIME_IMAGE = "registry.fedsec.test/fedsec/fedsec-runtime"
RELEASE, RELEASE_NAMESPACE = "fedsec", "fedsec-system"
CRD_NAMES = ("federatedjobs.fedsec.io", "federatedclients.fedsec.io")


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

