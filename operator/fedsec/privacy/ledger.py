"""The site's privacy ledger: what each job has spent on this site's data, kept where no restart
can reset it.

Local runs keep one JSON file per site, ``LEDGER_DIR/<site>.json`` (``fedsec run --ledger-dir``;
by default ``ledger/`` next to the run directories), shared by every run on this machine so that a
second job sees the first one's spend. Under the operator the same document lives in the
FederatedClient's status. Every change is a read-modify-write under an exclusive file lock (two
jobs may train on one site at once) and lands with an atomic rename, so the file is always whole.

A job is keyed by its uid (and carries its name for people). Each entry lists the releases the site
made for it — one per round whose update left (or was about to leave) the site — with the Gaussian
steps of that release. The job's epsilon is recomputed from those steps by the accountant; the
ledger never trusts a number held in memory. A site's total spend is the sum of its jobs' epsilons
(basic composition across jobs, which holds whatever each job did).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsec.privacy.accountant import epsilon
from fedsec.runtime.checkpoints import write_json_atomic

ADMITTED, TRAINING, FINISHED, REFUSED, EXHAUSTED = "Admitted", "Training", "Finished", "Refused", "BudgetExhausted"


@dataclass(frozen=True)
class JobRef:
    uid: str
    name: str
    namespace: str = "default"


@dataclass(frozen=True)
class Release:
    round: int
    round_id: int
    model_sha256: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    update_sha256: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.round, "round_id": self.round_id, "model_sha256": self.model_sha256,
            "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate, "steps": self.steps,
            "update_sha256": self.update_sha256, "at": time.time(),
        }


def job_epsilon(entry: dict[str, Any]) -> float:
    """Epsilon of one job's entry, recomputed from its releases."""
    history = [(r["noise_multiplier"], r["sample_rate"], int(r["steps"])) for r in entry.get("releases", [])]
    if not history:
        return 0.0
    return epsilon(history, float(entry["delta"]), entry.get("accountant", "rdp"))


def ledger_path(ledger_dir: Path, site: str) -> Path:
    return ledger_dir / f"{site}.json"


class SiteLedger:
    def __init__(self, path: Path, site: str) -> None:
        self.path = path
        self.site = site
        self._lock_path = path.with_name(f".{path.name}.lock")

    # -- reading ----------------------------------------------------------------------------------

    def read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"site": self.site, "jobs": {}}
        return json.loads(self.path.read_text())

    def entry(self, uid: str) -> dict[str, Any] | None:
        return self.read()["jobs"].get(uid)

    def spent(self, *, excluding: str | None = None) -> float:
        """Total epsilon spent on this site by every job but ``excluding``."""
        return sum(float(e.get("epsilon", 0.0)) for uid, e in self.read()["jobs"].items() if uid != excluding)

    def find_release(self, uid: str, round_number: int, model_sha256: str) -> dict[str, Any] | None:
        e = self.entry(uid)
        for r in (e or {}).get("releases", []):
            if r["round"] == round_number and r["model_sha256"] == model_sha256:
                return r
        return None

    # -- writing ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                doc = self.read()
                yield doc
                doc["updated_at"] = time.time()
                write_json_atomic(self.path, doc)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _job(self, doc: dict[str, Any], job: JobRef, **info: Any) -> dict[str, Any]:
        e = doc["jobs"].setdefault(job.uid, {"job": job.name, "namespace": job.namespace, "releases": [], "epsilon": 0.0})
        e.update({k: v for k, v in info.items() if v is not None})
        return e

    def set_budget(self, budget: float | None) -> None:
        with self._locked() as doc:
            doc["budget"] = budget

    def set_status(self, job: JobRef, status: str, reason: str = "", **info: Any) -> None:
        with self._locked() as doc:
            e = self._job(doc, job, **info)
            e["status"], e["reason"] = status, reason

    def record_release(self, job: JobRef, release: Release, **info: Any) -> float:
        """Append ``release`` (once: the same round from the same model is one release) and return
        the job's epsilon recomputed from every release. Written before the update leaves the site."""
        with self._locked() as doc:
            e = self._job(doc, job, **info)
            if not any(r["round"] == release.round and r["model_sha256"] == release.model_sha256 for r in e["releases"]):
                e["releases"].append(release.as_dict())
            e["epsilon"] = job_epsilon(e)
            e["status"] = TRAINING if e.get("status") in (None, ADMITTED, TRAINING) else e["status"]
            return float(e["epsilon"])

    # -- the last update, for a round asked again from the same model --------------------------

    def cache_path(self, uid: str) -> Path:
        return self.path.with_name(f"{self.site}.updates") / f"{uid}.safetensors"

    def save_update(self, uid: str, payload: bytes) -> str:
        path = self.cache_path(uid)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        return hashlib.sha256(payload).hexdigest()

    def load_update(self, uid: str, sha256: str) -> bytes | None:
        path = self.cache_path(uid)
        if not path.exists():
            return None
        payload = path.read_bytes()
        return payload if hashlib.sha256(payload).hexdigest() == sha256 else None
