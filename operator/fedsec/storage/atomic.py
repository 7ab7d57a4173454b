"""Atomic, durable file replacement: the one way fedsec writes a file that must be whole.

A reader sees either the old content or the new one, never a mix, and once a call returns the new
content survives a crash or power loss: the data is written to a temporary file in the same
directory (a rename is atomic only within one file system), flushed and fsynced, renamed over the
target, and then the directory is fsynced so that the rename itself is on disk. Without that last
step a crash can bring back the old file after the caller already acted on the new one (a privacy
ledger that forgets a charge, for instance).

Imports nothing of fedsec: this module is below every other layer.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_MODE = 0o600  # what mkstemp gives; callers that publish a file ask for wider


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes, *, mode: int = DEFAULT_MODE) -> None:
    """Replace ``path`` with ``data``, atomically and durably; the file gets permissions ``mode``
    before any byte is written (key material is never readable by others, even for an instant)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any, *, mode: int = DEFAULT_MODE) -> None:
    """``obj`` as indented, key-sorted JSON (stable bytes for the same content), atomically."""
    write_bytes_atomic(path, json.dumps(obj, indent=2, sort_keys=True).encode(), mode=mode)
