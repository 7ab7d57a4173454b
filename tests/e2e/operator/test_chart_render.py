"""charts/fedsec-operator with the pinned helm: lint, render, the values schema. No API server needed, but
helm comes from the test control plane's binary cache, hence the `cluster` mark."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedsec.api import crd
from fedsec_chart import CHART, EXPECTED, by_kind, docs, granted, helm_binary

pytestmark = pytest.mark.cluster

NS = "fedsec-system"


@pytest.fixture(scope="module")
def helm() -> Path:
    return helm_binary()


def helm_run(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def render(helm: Path, *args: str) -> dict[str, list[dict[str, Any]]]:
    out = helm_run(helm, "template", "fedsec", str(CHART), "--namespace", NS, "--kube-version", "1.30.0", *args)
    return by_kind(docs(out.stdout))


@pytest.fixture(scope="module")
def default(helm: Path) -> dict[str, list[dict[str, Any]]]:
    return render(helm)


def container(objs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    (c,) = objs["Deployment"][0]["spec"]["template"]["spec"]["containers"]
    return c


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_helm_lint_strict_passes(helm: Path) -> None:
    r = helm_run(helm, "lint", "--strict", str(CHART), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in r.stdout


def test_default_render_objects(default: dict[str, list[dict[str, Any]]]) -> None:
    assert {k: len(v) for k, v in default.items()} == {
        "ServiceAccount": 1, "ClusterRole": 1, "ClusterRoleBinding": 1, "Service": 1, "Deployment": 1}
    for objs in default.values():
        for o in objs:
            labels = o["metadata"]["labels"]
            assert labels["app.kubernetes.io/name"] == "fedsec-operator"
            assert labels["app.kubernetes.io/instance"] == "fedsec"
            assert labels["app.kubernetes.io/version"] == "0.1.0"
            assert labels["app.kubernetes.io/managed-by"] == "Helm"
            if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
                assert o["metadata"]["namespace"] == NS


def test_cluster_role_grants_exactly_the_operator_rules(default: dict[str, list[dict[str, Any]]]) -> None:
    (role,) = default["ClusterRole"]
    rules = role["rules"]
    assert granted(rules) == EXPECTED
    for rule in rules:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, no nonResourceURLs
    (binding,) = default["ClusterRoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    (sa,) = default["ServiceAccount"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NS}]


def test_deployment_runs_one_hardened_operator(default: dict[str, list[dict[str, Any]]]) -> None:
    (dep,) = default["Deployment"]
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert spec["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "fedsec-operator"
    assert pod["serviceAccountName"] == default["ServiceAccount"][0]["metadata"]["name"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                      "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}}
    c = container(default)
    assert c["securityContext"] == {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    assert "command" not in c  # the image's ENTRYPOINT, fedsec
    assert c["args"] == ["operator", "--all-namespaces", "--liveness-port", "8080", "--metrics-port", "9091"]
    assert c["image"] == "ghcr.io/fedsec/fedsec-operator:0.1.0"
    assert env(c) == {
        "FEDSEC_OPERATOR_NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        "FEDSEC_RUNTIME_IMAGE": "ghcr.io/fedsec/fedsec-runtime:0.1.0",
        "FEDSEC_RUNTIME_IMAGE_PULL_POLICY": "IfNotPresent",
        "FEDSEC_CLUSTER_DOMAIN": "cluster.local",
        "FEDSEC_CHECKPOINT_SIZE": "1Gi",
        "FEDSEC_LEDGER_SIZE": "64Mi",
        "HOME": "/tmp",
    }  # no FEDSEC_STORAGE_CLASS: the cluster's default StorageClass
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"healthz": 8080, "http-metrics": 9091}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}, probe
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]


def test_metrics_service_selects_the_operator_pod(default: dict[str, list[dict[str, Any]]]) -> None:
    (svc,) = default["Service"]
    assert svc["spec"]["ports"] == [{"name": "http-metrics", "port": 9091, "targetPort": "http-metrics",
                                     "protocol": "TCP"}]
    pod_labels = default["Deployment"][0]["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()


def test_images_namespaces_and_placement_from_values(helm: Path) -> None:
    digest = "sha256:" + "ab" * 32
    objs = render(helm, "--set", "image.repository=registry.example/ops/fedsec-operator", "--set", "image.tag=1.2.3",
                  "--set", f"runtimeImage.digest={digest}", "--set", "runtimeImage.pullPolicy=Always",
                  "--set", "watchNamespaces={site-a,site-b}", "--set", "priorityClassName=system-cluster-critical",
                  "--set", "nodeSelector.role=control", "--set", "podAnnotations.team=ml",
                  "--set", "tolerations[0].key=dedicated", "--set", "tolerations[0].operator=Exists",
                  "--set", "workloads.storageClass=fast-ssd", "--set", "workloads.checkpointSize=20Gi",
                  "--set", "workloads.clusterDomain=corp.internal")
    c = container(objs)
    assert c["image"] == "registry.example/ops/fedsec-operator:1.2.3"
    assert env(c)["FEDSEC_RUNTIME_IMAGE"] == f"ghcr.io/fedsec/fedsec-runtime@{digest}"
    assert env(c)["FEDSEC_RUNTIME_IMAGE_PULL_POLICY"] == "Always"
    assert env(c)["FEDSEC_STORAGE_CLASS"] == "fast-ssd"
    assert env(c)["FEDSEC_CHECKPOINT_SIZE"] == "20Gi"
    assert env(c)["FEDSEC_CLUSTER_DOMAIN"] == "corp.internal"
    assert c["args"] == ["operator", "--namespace", "site-a", "--namespace", "site-b",
                         "--liveness-port", "8080", "--metrics-port", "9091"]
    pod = objs["Deployment"][0]["spec"]["template"]
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert pod["spec"]["nodeSelector"] == {"role": "control"}
    assert pod["spec"]["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert pod["metadata"]["annotations"]["team"] == "ml"


def test_rbac_and_service_account_can_be_brought_along(helm: Path) -> None:
    objs = render(helm, "--set", "rbac.create=false", "--set", "serviceAccount.create=false",
                  "--set", "serviceAccount.name=fedsec-ops", "--set", "metrics.service.enabled=false")
    assert set(objs) == {"Deployment"}
    assert objs["Deployment"][0]["spec"]["template"]["spec"]["serviceAccountName"] == "fedsec-ops"


def test_service_monitor_only_when_enabled_and_served(helm: Path) -> None:
    assert "ServiceMonitor" not in render(helm, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
    # Asked for, but the cluster does not serve the API: left out (NOTES.txt warns) rather than failing.
    assert "ServiceMonitor" not in render(helm, "--set", "serviceMonitor.enabled=true")
    for extra in (["--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"],
                  ["--set", "serviceMonitor.skipApiCheck=true"]):
        objs = render(helm, "--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.labels.release=prom",
                      *extra)
        (sm,) = objs["ServiceMonitor"]
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        assert sm["metadata"]["labels"]["release"] == "prom"
        assert sm["spec"]["endpoints"] == [{"port": "http-metrics", "path": "/metrics", "interval": "30s",
                                            "scrapeTimeout": "10s"}]
        assert sm["spec"]["selector"]["matchLabels"].items() <= objs["Service"][0]["metadata"]["labels"].items()
        assert sm["spec"]["namespaceSelector"] == {"matchNames": [NS]}


def test_chart_crds_are_the_generated_ones(helm: Path) -> None:
    out = helm_run(helm, "template", "fedsec", str(CHART), "--include-crds", "--kube-version", "1.30.0").stdout
    rendered = {o["metadata"]["name"]: o for o in docs(out) if o["kind"] == "CustomResourceDefinition"}
    generated = {o["metadata"]["name"]: yaml.safe_load(crd.render(o)) for o in crd.crds().values()}
    assert rendered == generated


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "replicaCount=abc"], "additional properties 'replicaCount' not allowed"),
        (["--set", "replicaCount=2"], "additional properties 'replicaCount' not allowed"),
        (["--set", "securityContex.readOnlyRootFilesystem=false"], "'securityContex' not allowed"),
        (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (["--set", "image.registry=docker.io"], "'registry' not allowed"),
        (["--set", "runtimeImage.digest=sha256:abc"], "/runtimeImage/digest"),
        (["--set", "serviceMonitor.enabled=maybe"], "/serviceMonitor/enabled"),
        (["--set", "serviceMonitor.interval=often"], "/serviceMonitor/interval"),
        (["--set", "watchNamespaces[0]=Not_A_Namespace"], "/watchNamespaces/0"),
        (["--set", "terminationGracePeriodSeconds=soon"], "/terminationGracePeriodSeconds"),
        (["--set", "rbac.enabled=true"], "'enabled' not allowed"),
        (["--set", "podAnnotations.team=1"], "/podAnnotations/team"),
        (["--set", "workloads.checkpointSize=lots"], "/workloads/checkpointSize"),
        (["--set", "workloads.storageClas=fast"], "'storageClas' not allowed"),
    ],
)
def test_values_schema_refuses_bad_values(helm: Path, args: list[str], message: str) -> None:
    r = helm_run(helm, "template", "fedsec", str(CHART), *args, check=False)
    assert r.returncode != 0, f"accepted {args}"
    assert "values don't meet the specifications of the schema" in r.stderr, r.stderr
    assert message in r.stderr, r.stderr


def test_chart_refuses_kubernetes_older_than_1_28(helm: Path) -> None:
    r = helm_run(helm, "template", "fedsec", str(CHART), "--kube-version", "1.27.9", check=False)
    assert r.returncode != 0 and "kubeVersion" in r.stderr, r.stderr
