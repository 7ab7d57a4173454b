"""What the Helm chart must grant and render, shared by test_chart_render.py and test_chart_install.py."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "fedsec-operator"
BUILD_SH = ROOT / "tests" / "cluster" / "build.sh"

# The operator's API access, rule by rule, as (apiGroup, resource, verb): exactly this, nothing more.
RULES: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {
    ("apiextensions.k8s.io", ("customresourcedefinitions",)): ("get", "list", "watch"),
    ("", ("namespaces",)): ("get", "list", "watch"),
    ("fedsec.io", ("federatedjobs", "federatedclients")): ("get", "list", "watch", "patch"),
    ("fedsec.io", ("federatedjobs/status", "federatedclients/status")): ("get", "patch", "update"),
    ("", ("secrets",)): ("get", "create", "patch", "delete"),
    ("", ("configmaps", "services", "persistentvolumeclaims", "serviceaccounts")): ("get", "create", "patch", "delete"),
    ("apps", ("deployments",)): ("get", "list", "create", "patch", "delete"),
    ("batch", ("jobs",)): ("get", "list", "watch", "create", "patch", "delete"),
    ("", ("pods",)): ("get", "list", "watch"),
    ("networking.k8s.io", ("networkpolicies",)): ("get", "create", "patch", "delete"),
    ("", ("events",)): ("create", "patch"),
    ("events.k8s.io", ("events",)): ("create", "patch"),
}
EXPECTED: frozenset[tuple[str, str, str]] = frozenset(
    (group, resource, verb) for (group, resources), verbs in RULES.items() for resource in resources for verb in verbs
)


def granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """A ClusterRole's rules as (apiGroup, resource, verb) triples."""
    return {(g, r, v) for rule in rules for g in rule.get("apiGroups", []) for r in rule.get("resources", [])
            for v in rule.get("verbs", [])}


def helm_binary() -> Path:
    """helm from the test control plane's binary cache (docs/test-cluster.md); no cluster needed to render."""
    out = subprocess.run(["bash", str(BUILD_SH), "--print-bindir"], capture_output=True, text=True, timeout=30,
                         check=True)
    helm = Path(out.stdout.strip()) / "helm"
    if not helm.exists():
        raise AssertionError(f"{helm} is missing: build the cluster binaries first (make cluster-build)")
    return helm


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for o in objects:
        out.setdefault(o["kind"], []).append(o)
    return out
