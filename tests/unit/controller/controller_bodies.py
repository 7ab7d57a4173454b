"""Object bodies as the API server hands them to the operator (plain dicts), for the controller's
pure modules. Built from the breast-cancer example so the shapes stay those users apply."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from fedsec.api.client import FederatedClient
from fedsec.api.job import FederatedJob
from fedsec.controller.parse import parse_client, parse_job

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "breast-cancer"
JOB_YAML = yaml.safe_load((EXAMPLE / "job.yaml").read_text())
CLIENT_YAML = yaml.safe_load((EXAMPLE / "hospital-01.yaml").read_text())

JOB_UID = "6f1c2a8e-0000-4000-8000-00000000a001"
SITE_UID = "6f1c2a8e-0000-4000-8000-00000000b001"


def job_body(name: str = "breast-cancer", namespace: str = "research", uid: str = JOB_UID, generation: int = 1,
             **spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(JOB_YAML)
    body["metadata"] = {"name": name, "namespace": namespace, "uid": uid, "generation": generation}
    body["spec"].update(spec)
    return body


def client_body(name: str = "hospital-01", namespace: str = "site-a", uid: str = SITE_UID, generation: int = 1,
                status: dict[str, Any] | None = None, shard: int = 0, **spec: Any) -> dict[str, Any]:
    """hospital-01's manifest under another name; several sites of one job need their own ``shard``
    (the plan refuses two sites holding the same rows)."""
    body = copy.deepcopy(CLIENT_YAML)
    body["metadata"] = {"name": name, "namespace": namespace, "uid": uid, "generation": generation,
                        "labels": dict(CLIENT_YAML["metadata"]["labels"])}
    body["spec"]["data"]["builtin"]["partition"]["shard"] = shard
    body["spec"].update(spec)
    if status is not None:
        body["status"] = status
    return body


def job(**kw: Any) -> FederatedJob:
    return parse_job(job_body(**kw))


def client(**kw: Any) -> FederatedClient:
    return parse_client(client_body(**kw))
