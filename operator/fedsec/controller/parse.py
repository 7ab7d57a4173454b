"""Custom resources as the API server returns them, to the spec models. Pure.

Only identity, labels and spec are read: annotations (kubectl's last-applied copy, GitOps
bookkeeping) and status must not change what the runtime is given.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from fedsec.api.client import FederatedClient
from fedsec.api.job import FederatedJob
from fedsec.api.meta import API_VERSION


def describe(exc: ValidationError, limit: int = 5) -> str:
    """The first ``limit`` errors as "field.path: what is wrong", for a status message."""
    return "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:limit])


def parse_job(body: dict[str, Any]) -> FederatedJob:
    m = body["metadata"]
    return FederatedJob.model_validate({
        "apiVersion": body.get("apiVersion", API_VERSION), "kind": "FederatedJob",
        "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
                     "generation": m.get("generation"), "labels": m.get("labels") or {}},
        "spec": body.get("spec") or {},
    })


def parse_client(body: dict[str, Any]) -> FederatedClient:
    m = body["metadata"]
    return FederatedClient.model_validate({
        "apiVersion": body.get("apiVersion", API_VERSION), "kind": "FederatedClient",
        "metadata": {"name": m["name"], "namespace": m.get("namespace", "default"), "uid": m.get("uid"),
                     "labels": m.get("labels") or {}},
        "spec": body.get("spec") or {},
    })
