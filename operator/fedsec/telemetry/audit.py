"""The audit log: append-only JSON lines, each entry hashing the one before it.

Entry ``n`` holds ``prev`` = hash of entry ``n-1`` and ``hash`` = SHA-256 over its own canonical
JSON (without ``hash``). Changing, removing or reordering any entry breaks every hash after it,
and ``verify`` names the first entry that no longer fits. A crash can leave a half-written last
line; opening the log cuts it off and records that it did, so the chain stays verifiable.
Entries hold ids, counts, hashes and reasons, never updates or keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


class AuditChainError(RuntimeError):
    """The log on disk does not verify; fedsec will not append to a broken chain."""


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    head: str
    first_bad: int | None = None  # 1-based line number of the first entry that does not fit
    reason: str = ""


def verify(path: Path) -> VerifyResult:
    prev, count = GENESIS, 0
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return VerifyResult(False, 0, GENESIS, 1, f"cannot read {path}: {exc.strerror}")
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            return VerifyResult(False, count, prev, lineno, "not valid JSON")
        if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
            return VerifyResult(False, count, prev, lineno, "not an audit entry")
        if entry.get("seq") != count + 1:
            return VerifyResult(False, count, prev, lineno, f"sequence number {entry.get('seq')!r}, expected {count + 1}")
        if entry.get("prev") != prev:
            return VerifyResult(False, count, prev, lineno, "does not chain to the entry before it (removed or reordered?)")
        if entry_hash(entry) != entry["hash"]:
            return VerifyResult(False, count, prev, lineno, "content does not match its hash (modified?)")
        prev, count = entry["hash"], count + 1
    return VerifyResult(True, count, prev)


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        truncated = self._drop_partial_tail()
        result = verify(path) if path.exists() else VerifyResult(True, 0, GENESIS)
        if not result.ok:
            raise AuditChainError(
                f"audit log {path} is broken at line {result.first_bad}: {result.reason}. Nothing was "
                "appended. Investigate it (fedsec audit verify), then move it aside to start a new chain."
            )
        self._seq, self._head = result.entries, result.head
        self._fh = open(path, "ab", buffering=0)  # noqa: SIM115 - held for the log's lifetime
        if truncated:
            self.append("audit-recovered", dropped_bytes=truncated)

    def _drop_partial_tail(self) -> int:
        if not self.path.exists():
            return 0
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        with open(self.path, "r+b") as fh:
            fh.truncate(keep)
        return len(data) - keep

    @property
    def head(self) -> str:
        return self._head

    def append(self, event: str, /, *, sync: bool = False, **data: Any) -> str:
        """Add one entry; ``sync`` makes it durable before returning (commits, rollbacks, the end)."""
        with self._lock:
            entry = {"seq": self._seq + 1, "time": round(time.time(), 3), "event": event, "data": data, "prev": self._head}
            entry["hash"] = entry_hash(entry)
            self._fh.write(_canonical(entry) + b"\n")
            if sync:
                os.fsync(self._fh.fileno())
            self._seq, self._head = self._seq + 1, entry["hash"]
            return entry["hash"]

    def close(self) -> None:
        with self._lock:
            os.fsync(self._fh.fileno())
            self._fh.close()
