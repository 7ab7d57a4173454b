"""Helpers for integration tests: small jobs, scenarios and `fedsec` subprocesses on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

RUN_TIMEOUT_SECONDS = 300  # a bound, not a sleep: a hung run fails the test instead of the suite


def write_job_dir(
    root: Path,
    *,
    sites: int = 4,
    rounds: int = 3,
    quorum: dict[str, Any] | None = None,
    round_timeout: float = 20.0,
    max_retries: int = 2,
    extra_spec: dict[str, Any] | None = None,
) -> Path:
    """A breast-cancer job over ``sites`` sites; quick to run, fully real."""
    root.mkdir(parents=True, exist_ok=True)
    job = {
        "apiVersion": "fedsec.io/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": "small"},
        "spec": {
            "model": {"builtin": "logistic-regression", "inputDim": 30},
            "task": {"localEpochs": 1, "batchSize": 16, "learningRate": 0.1},
            "rounds": rounds,
            "clients": {"selector": {"matchLabels": {"study": "small"}}},
            "quorum": {**(quorum or {"minClients": sites - 1}), "roundTimeoutSeconds": round_timeout,
                       "joinTimeoutSeconds": 120, "maxRetries": max_retries},
            "evaluation": {"holdout": {"builtin": {"name": "breast-cancer", "holdoutFraction": 0.2, "seed": 1}}},
            **(extra_spec or {}),
        },
    }
    docs = [job] + [
        {
            "apiVersion": "fedsec.io/v1alpha1",
            "kind": "FederatedClient",
            "metadata": {"name": f"site-{i}", "labels": {"study": "small"}},
            "spec": {"data": {"builtin": {"name": "breast-cancer", "holdoutFraction": 0.2, "seed": 1,
                                          "partition": {"scheme": "iid", "shards": sites, "shard": i}}}},
        }
        for i in range(sites)
    ]
    (root / "manifests.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return root


def write_scenario(path: Path, manifests: Path, faults: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "fedsec.io/v1alpha1", "kind": "Scenario", "metadata": {"name": path.stem},
        "spec": {"manifests": str(manifests), "faults": faults},
    }))
    return path


def fedsec(*args: str, timeout: float = RUN_TIMEOUT_SECONDS) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedsec", *args], capture_output=True, text=True, timeout=timeout)


def summary_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert last.startswith("summary: "), f"no summary path printed\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    return json.loads(Path(last.removeprefix("summary: ")).read_text())


def committed_rounds(summary: dict[str, Any]) -> list[int]:
    return [h["round"] for h in summary["history"] if h["kind"] == "train"]
