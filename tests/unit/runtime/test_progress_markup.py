"""The run's summary table shows data as written: a "[...]" in a reason or a source is text, not Rich markup."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from fedsec.runtime.progress import Display


def test_brackets_in_summary_values_are_printed_not_swallowed() -> None:
    d = Display(quiet=False)
    d.console = Console(file=io.StringIO(), width=200)
    d.finish({"status": "Failed", "reason": "round 3: [bold]quorum[/] not met", "rounds_completed": 2,
              "rounds_planned": 5, "round_attempts": 4, "final_metrics": {"auc": 0.9},
              "final_metrics_source": "holdout", "privacy": {"refused": {"site-1": "policy [requireDp]"}},
              "artifacts": {"plot": "metrics.png"}}, None, Path("/runs/x"))
    out = d.console.file.getvalue()  # type: ignore[attr-defined]
    assert "[holdout]" in out
    assert "round 3: [bold]quorum[/] not met" in out
    assert "site-1: policy [requireDp]" in out
