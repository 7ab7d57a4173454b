"""Models for benchmarks: only their size matters.

Used as ``model.factory: "bench_models:flat"`` with ``params: {d: ...}`` by ``runtime_bench.py``,
which puts this directory on the aggregator's ``PYTHONPATH``. (Not ``benchmarks.bench_models``:
opacus installs a top-level package named ``benchmarks`` into site-packages, which would win over
this directory, a namespace package.)
"""

from __future__ import annotations

import torch
from torch import nn


class Flat(nn.Module):
    """One float32 parameter vector of ``d`` entries (a linear score ``x @ w``)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


def flat(d: int) -> nn.Module:
    if int(d) < 1:
        raise ValueError(f"d must be at least 1, got {d}")
    return Flat(int(d))
