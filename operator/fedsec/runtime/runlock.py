"""Who is using a run directory: an exclusive lock held for the lifetime of `fedsec run`/`simulate`.

A rollback writes a model version and the audit log while, if the run is live, the aggregator writes
them too: two writers fork the audit chain and the version numbers. So a run holds an exclusive
``flock`` on ``RUN_DIR/.lock`` (the kernel releases it when the process dies, however it dies: no
stale lock to clean up), with its pid written in the file for the message, and a rollback takes the
same lock without waiting or refuses.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"


class RunDirInUse(Exception):
    """Another process holds the run directory; the message says which and what to do."""

    def __init__(self, run_dir: Path, pid: str) -> None:
        self.run_dir, self.pid = run_dir, pid
        super().__init__(f"run directory {run_dir} is in use by a running job (pid {pid or 'unknown'}); stop it first")


@contextmanager
def hold(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` exclusively for the block; raise :class:`RunDirInUse` at once if another does."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirInUse(run_dir, os.pread(fd, 32, 0).decode(errors="replace").strip()) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # the pid is only meaningful while the lock is held
    finally:
        os.close(fd)  # releases the lock
