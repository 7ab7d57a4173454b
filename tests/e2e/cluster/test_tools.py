"""helm and promtool from the cluster cache, against the test control plane."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from cluster_fixtures import Kubectl, wait_until

pytestmark = pytest.mark.cluster

DATA = Path(__file__).resolve().parent / "testdata"


def test_helm_chart_installs_and_uninstalls(kubectl: Kubectl, namespace: str) -> None:
    helm = ["helm", "--namespace", namespace]
    kubectl.run([*helm, "install", "smoke", str(DATA / "chart"), "--set", f"python={sys.executable}",
                 "--wait", "--wait-for-jobs", "--timeout", "90s"], timeout=120)
    cm = kubectl.json("get", "configmap", "smoke-config", "-n", namespace)
    assert cm["data"]["message"] == "hello from helm"
    server = json.loads(kubectl("get", "--raw", "/version").stdout)["gitVersion"]
    # .Capabilities.KubeVersion comes from the server's /version: the ldflags took.
    assert cm["data"]["kubeVersion"] == server
    pods = kubectl.json("get", "pods", "-n", namespace, "-l", "job-name=smoke-hello")["items"]
    assert kubectl("logs", "-n", namespace, pods[0]["metadata"]["name"]).stdout.strip() == "hello from helm"
    assert "smoke" in kubectl.run([*helm, "list", "-q"]).stdout.split()
    kubectl.run([*helm, "uninstall", "smoke", "--wait", "--timeout", "60s"], timeout=90)
    wait_until("helm uninstall to remove configmap smoke-config",
               lambda: kubectl("get", "configmap", "smoke-config", "-n", namespace, check=False).returncode != 0, 30)
    assert kubectl.run([*helm, "list", "-q"]).stdout.strip() == ""


def test_helm_refuses_a_chart_for_another_kubernetes(kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    chart = tmp_path / "old"
    chart.mkdir()
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: old\nversion: 0.1.0\nkubeVersion: '<1.20.0-0'\n")
    r = kubectl.run(["helm", "install", "old", str(chart), "-n", namespace], check=False, timeout=60)
    assert r.returncode != 0 and "kubeVersion" in r.stderr


def test_promtool_checks_a_rule_file(kubectl: Kubectl) -> None:
    ok = kubectl.run(["promtool", "check", "rules", str(DATA / "rules-good.yaml")])
    assert "SUCCESS" in ok.stdout + ok.stderr
    bad = kubectl.run(["promtool", "check", "rules", str(DATA / "rules-bad.yaml")], check=False)
    assert bad.returncode != 0
