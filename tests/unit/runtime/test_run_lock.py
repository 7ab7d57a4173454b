"""The run directory lock: one holder at a time, the holder's pid in the refusal, released on exit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedsec.runtime import runlock


def test_a_second_holder_is_refused_at_once_naming_the_first(tmp_path: Path) -> None:
    with runlock.hold(tmp_path):
        with pytest.raises(runlock.RunDirInUse) as exc:
            with runlock.hold(tmp_path):
                pass
        assert str(exc.value) == f"run directory {tmp_path} is in use by a running job (pid {os.getpid()}); stop it first"
    with runlock.hold(tmp_path):  # released at the end of the block
        assert (tmp_path / runlock.LOCK_FILE).read_text() == f"{os.getpid()}\n"
    assert (tmp_path / runlock.LOCK_FILE).read_text() == ""


def test_holding_creates_the_run_directory(tmp_path: Path) -> None:
    with runlock.hold(tmp_path / "new" / "run"):
        assert (tmp_path / "new" / "run" / runlock.LOCK_FILE).exists()
