"""Small manifests for the CLI tests: a job and its sites, written where a test wants them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"


def job(name: str = "bc", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": "fedsec.io/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"builtin": "logistic-regression", "inputDim": 30},
            "rounds": 2,
            "quorum": {"minClients": 2},
            "clients": {"selector": {"matchLabels": {"study": "bc"}}},
        },
    }
    base["spec"].update(copy.deepcopy(spec))
    return base


def site(i: int, shards: int = 3, *, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "fedsec.io/v1alpha1",
        "kind": "FederatedClient",
        "metadata": {"name": f"site-{i}", "labels": {"study": "bc"} if labels is None else labels},
        "spec": {"data": {"builtin": {"name": "breast-cancer", "partition": {"shards": shards, "shard": i}}},
                 **copy.deepcopy(spec)},
    }


def write(path: Path, *docs: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def job_dir(root: Path, job_doc: dict[str, Any] | None = None, sites: list[dict[str, Any]] | None = None) -> Path:
    """A directory like the examples: job.yaml and one file per site."""
    write(root / "job.yaml", job_doc or job())
    for s in sites if sites is not None else [site(i) for i in range(3)]:
        write(root / f"{s['metadata']['name']}.yaml", s)
    return root


def refusing_dir(root: Path) -> Path:
    """Valid manifests whose every site refuses the job (each requires differential privacy)."""
    return job_dir(root, sites=[site(i, policy={"requireDp": True}) for i in range(3)])
