"""An in-memory stand-in for the operator's API layer (``fedsec.controller.kube.Kube``), for unit tests of
one reconcile pass without a cluster. The real API server is under tests/e2e/operator; this only
keeps objects as dicts: create-or-adopt, get, merge patch, status, events, and Pods by label."""

from __future__ import annotations

import copy
from typing import Any


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies application/merge-patch+json."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v)
    return out


class FakeKube:
    """The calls JobReconciler makes, on dicts: create-or-adopt, get, merge patch, status, events."""

    def __init__(self, clients: list[dict[str, Any]]) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.statuses: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.clients = clients
        self.events: list[tuple[str, str, str]] = []
        self.pods: list[dict[str, Any]] = []  # what list() of Pods returns (none by default)

    def get(self, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        o = self.objects.get((kind, namespace, name))
        return copy.deepcopy(o) if o is not None else None

    def ensure(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        key = (manifest["kind"], manifest["metadata"]["namespace"], manifest["metadata"]["name"])
        if key in self.objects:
            return copy.deepcopy(self.objects[key]), False
        self.objects[key] = copy.deepcopy(manifest)
        return copy.deepcopy(manifest), True

    def patch(self, api_version: str, kind: str, name: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        key = (kind, namespace, name)
        self.objects[key] = merge(self.objects[key], body)
        return copy.deepcopy(self.objects[key])

    def patch_status(self, plural: str, name: str, namespace: str, status: dict[str, Any]) -> None:
        key = (plural, namespace, name)
        self.statuses[key] = merge(self.statuses.get(key, {}), status)

    def list(self, api_version: str, kind: str, *, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        if kind != "Pod":
            return []
        wanted = dict(kv.split("=", 1) for kv in (label_selector or "").split(",") if kv)
        return [copy.deepcopy(p) for p in self.pods
                if (namespace is None or p["metadata"]["namespace"] == namespace)
                and all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())]

    def list_clients(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self.clients)

    def event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))
