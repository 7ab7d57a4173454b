"""Committed rounds on disk: one directory per model version, written atomically.

A version is written into a temporary directory, every file fsynced, then renamed into place and
the parent fsynced: a directory named ``v000007`` is complete or absent, never half-written. The
current model is the highest version; nothing else points at it, so there is no second file to
keep consistent. Rollback writes a *new* version holding an older round's model, with the lineage
in its metadata: versions only grow and history is never rewritten.

The engine's counters (highest round id issued, attempts, status) sit beside it in ``engine.json``,
replaced atomically, so a restarted aggregator never reuses a round id.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsec.aggregation.base import Tensors
from fedsec.storage.atomic import fsync_dir as _fsync_dir
from fedsec.storage.atomic import write_json_atomic
from fedsec.wire import tensors as wire_tensors

_VERSION_DIR = re.compile(r"^v(\d{6,})$")


class CheckpointError(RuntimeError):
    pass


@dataclass(frozen=True)
class Checkpoint:
    version: int
    round: int
    path: Path
    meta: dict[str, Any]

    def load_model(self) -> Tensors:
        data = (self.path / "model.safetensors").read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.meta.get("model_sha256"):
            raise CheckpointError(f"checkpoint {self.path} is corrupt: model hash {digest[:12]}… does not match its metadata")
        specs = tuple(wire_tensors.TensorSpec(n, tuple(s), d) for n, s, d in self.meta["tensors"])
        return wire_tensors.decode(data, specs)


class CheckpointStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "checkpoints"
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(".tmp-*"):  # a crash mid-write leaves these; they were never committed
            shutil.rmtree(stale, ignore_errors=True)

    def versions(self) -> list[int]:
        out = []
        for p in self.dir.iterdir():
            m = _VERSION_DIR.match(p.name)
            if m and (p / "meta.json").exists():
                out.append(int(m.group(1)))
        return sorted(out)

    def get(self, version: int) -> Checkpoint:
        path = self.dir / f"v{version:06d}"
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
        return Checkpoint(version, int(meta["round"]), path, meta)

    def latest(self) -> Checkpoint | None:
        versions = self.versions()
        return self.get(versions[-1]) if versions else None

    def commit(self, model: Tensors, meta: dict[str, Any]) -> Checkpoint:
        """Write ``model`` as the next version; ``meta`` must hold at least ``round``."""
        version = (self.versions() or [0])[-1] + 1
        data = wire_tensors.encode(model)
        full = {
            **meta,
            "version": version,
            "model_sha256": hashlib.sha256(data).hexdigest(),
            "tensors": [[k, list(v.shape), str(v.dtype)] for k, v in model.items()],
        }
        tmp = Path(tempfile.mkdtemp(dir=self.dir, prefix=".tmp-"))
        for name, blob in (("model.safetensors", data), ("meta.json", json.dumps(full, indent=2, sort_keys=True).encode())):
            with open(tmp / name, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        final = self.dir / f"v{version:06d}"
        os.rename(tmp, final)
        _fsync_dir(self.dir)
        return Checkpoint(version, int(full["round"]), final, full)

    def find_round(self, round_number: int) -> Checkpoint:
        """The newest version that holds the model committed at ``round_number``."""
        for v in reversed(self.versions()):
            cp = self.get(v)
            if cp.round == round_number:
                return cp
        known = sorted({self.get(v).round for v in self.versions()})
        raise CheckpointError(f"no checkpoint of round {round_number}; committed rounds: {known}")

    def rollback(self, to_round: int, reason: str, extra: dict[str, Any] | None = None) -> Checkpoint:
        target = self.find_round(to_round)
        current = self.latest()
        meta = {
            "round": target.round,
            "round_id": target.meta.get("round_id"),
            "kind": "rollback",
            "rollback_of": current.version if current else None,
            "restored_version": target.version,
            "reason": reason,
            "metrics": target.meta.get("metrics", {}),
            **(extra or {}),
        }
        return self.commit(target.load_model(), meta)

    def prune(self, keep: int) -> list[int]:
        """Keep the newest ``keep`` versions (0 keeps all). Returns the versions removed."""
        versions = self.versions()
        if keep <= 0 or len(versions) <= keep:
            return []
        removed = versions[:-keep]
        for v in removed:
            shutil.rmtree(self.dir / f"v{v:06d}")
        return removed

    # -- engine counters -------------------------------------------------------------------------

    @property
    def engine_path(self) -> Path:
        return self.root / "engine.json"

    def load_engine(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.engine_path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise CheckpointError(f"{self.engine_path} is not valid JSON: {exc}") from None

    def save_engine(self, state: dict[str, Any]) -> None:
        write_json_atomic(self.engine_path, state)
