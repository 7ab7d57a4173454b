"""Integration fixtures: small jobs on real processes with real TLS on loopback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fedsec_runs import write_job_dir


@pytest.fixture
def job_dir(tmp_path: Path) -> Callable[..., Path]:
    return lambda **kw: write_job_dir(tmp_path / "manifests", **kw)
