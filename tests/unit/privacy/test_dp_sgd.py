"""Opacus is really used: per-sample gradients are clipped to the bound, and noise is added."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsec.training.data import Table
from fedsec.training.local import TrainConfig, train_local
from fedsec.training.models import build_model, state_to_numpy


def _table(n: int = 12, d: int = 5, scale: float = 100.0) -> Table:
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(n, d)) * scale).astype(np.float32)
    y = (rng.random(n) > 0.5).astype(np.int64)
    return Table(X, y, tuple(f"f{i}" for i in range(d)))


def _clipped_mean_grad(model: torch.nn.Module, table: Table, bound: float) -> dict[str, np.ndarray]:
    """Σ_i clip(g_i) / n computed by hand, one sample at a time."""
    total: dict[str, torch.Tensor] = {}
    for i in range(len(table)):
        model.zero_grad()
        x, y = torch.from_numpy(table.X[i : i + 1]), torch.from_numpy(table.y[i : i + 1])
        torch.nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y.float()).backward()
        grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
        factor = min(1.0, bound / (float(norm) + 1e-6))
        for k, g in grads.items():
            total[k] = total.get(k, torch.zeros_like(g)) + g * factor
    return {k: (v / len(table)).numpy() for k, v in total.items()}


def test_per_sample_gradients_are_clipped_to_the_bound() -> None:
    table = _table()
    model = build_model("logistic-regression", input_dim=5, num_classes=2, seed=0)
    before = state_to_numpy(model)
    expected = _clipped_mean_grad(model, table, bound=0.5)
    # sampling rate 1 (batch >= rows): Poisson sampling keeps every row; no noise: the update is the clipped mean
    cfg = TrainConfig(epochs=1, batch_size=len(table), learning_rate=1.0, noise_multiplier=0.0, max_grad_norm=0.5)
    train_local(model, table, cfg)
    after = state_to_numpy(model)
    for k, g in expected.items():
        np.testing.assert_allclose(before[k] - after[k], g, rtol=1e-4, atol=1e-6)
    step = np.sqrt(sum(np.sum((before[k] - after[k]) ** 2) for k in expected))
    assert step <= 0.5 + 1e-5  # every per-sample gradient here is far larger than the bound
    plain = build_model("logistic-regression", input_dim=5, num_classes=2, seed=0)
    train_local(plain, table, TrainConfig(epochs=1, batch_size=len(table), learning_rate=1.0))
    assert np.sqrt(sum(np.sum((before[k] - state_to_numpy(plain)[k]) ** 2) for k in expected)) > 10 * step


def test_noise_is_fresh_every_time_whatever_the_public_seed() -> None:
    table = _table(scale=1.0)
    cfg = TrainConfig(epochs=1, batch_size=4, learning_rate=0.1, noise_multiplier=1.0, max_grad_norm=1.0, seed=7)
    states = []
    for _ in range(2):
        m = build_model("logistic-regression", input_dim=5, num_classes=2, seed=0)
        train_local(m, table, cfg)
        states.append(state_to_numpy(m))
    assert not np.allclose(states[0]["linear.weight"], states[1]["linear.weight"])


def test_model_is_left_without_opacus_hooks() -> None:
    table = _table(scale=1.0)
    m = build_model("logistic-regression", input_dim=5, num_classes=2, seed=0)
    train_local(m, table, TrainConfig(batch_size=4, noise_multiplier=1.0, max_grad_norm=1.0))
    assert not any(hasattr(p, "grad_sample") for p in m.parameters())
    assert type(m).__name__ == "Sequential"


def test_dp_config_needs_both_knobs() -> None:
    with pytest.raises(ValueError, match="both"):
        TrainConfig(noise_multiplier=1.0)
