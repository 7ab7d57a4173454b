"""One site's share of a round: local training, validation metrics, feature moments, deltas.

The training loop is deliberately the textbook one (a DataLoader, an optimizer, one loss per
batch) so that DP-SGD can later wrap it with Opacus' ``PrivacyEngine.make_private(module,
optimizer, data_loader, ...)`` without restructuring.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from fedsec.training.data import DataError, Table
from fedsec.training.models import ModelError, NumpyState, output_dim

__all__ = [
    "TrainConfig",
    "TrainingError",
    "apply_delta",
    "evaluate",
    "feature_stats",
    "make_loader",
    "model_delta",
    "train_local",
]

_EVAL_BATCH = 8192  # bounds memory of evaluation on large tables; one batch for typical ones


class TrainingError(RuntimeError):
    """Local training diverged; the message says when and what to change."""


def _check_int(name: str, value: object, low: int, high: int = 2**63 - 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        bound = f">= {low}" if high == 2**63 - 1 else f"in [{low}, {high}]"
        raise ValueError(f"TrainConfig.{name} must be an integer {bound}, got {value!r}")


def _check_float(name: str, value: object, *, low: float, high: float, closed: str) -> None:
    """``closed`` says which ends of the range are allowed: "[)", "(]", "()" or "[]"."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (v >= low if closed[0] == "[" else v > low) and (v <= high if closed[1] == "]" else v < high)
    if not ok:
        raise ValueError(
            f"TrainConfig.{name} must be a number in {closed[0]}{low}, {high}{closed[1]}, got {value!r}"
        )


@dataclass(frozen=True)
class TrainConfig:
    """Local training hyper-parameters. ``momentum`` applies to SGD only (Adam has its own betas)."""

    epochs: int = 1
    batch_size: int = 32
    optimizer: Literal["sgd", "adam"] = "sgd"
    learning_rate: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    # DP-SGD (Opacus): per-sample gradients clipped to max_grad_norm, Gaussian noise of std
    # noise_multiplier * max_grad_norm added to their sum each step, Poisson-sampled batches.
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None

    @property
    def private(self) -> bool:
        return self.noise_multiplier is not None

    def __post_init__(self) -> None:
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 1)
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"TrainConfig.optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        _check_float("learning_rate", self.learning_rate, low=0.0, high=math.inf, closed="()")
        _check_float("momentum", self.momentum, low=0.0, high=1.0, closed="[)")
        _check_float("weight_decay", self.weight_decay, low=0.0, high=math.inf, closed="[)")
        # torch.Generator.manual_seed takes any 64-bit value; non-negative keeps seeds portable.
        _check_int("seed", self.seed, 0)
        if self.optimizer == "adam" and self.momentum != 0.0:
            raise ValueError("TrainConfig.momentum applies to optimizer 'sgd' only; set it to 0 for 'adam'")
        if (self.noise_multiplier is None) != (self.max_grad_norm is None):
            raise ValueError("TrainConfig: give both noise_multiplier and max_grad_norm for DP-SGD, or neither")
        if self.noise_multiplier is not None:
            _check_float("noise_multiplier", self.noise_multiplier, low=0.0, high=math.inf, closed="[)")
            _check_float("max_grad_norm", self.max_grad_norm, low=0.0, high=math.inf, closed="()")


class _BatchedRows(TensorDataset):
    """A TensorDataset that DataLoader reads a whole batch at a time: one index per tensor
    instead of a fetch per row and a collate, which dominate the cost for small tabular models."""

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[idx] for t in self.tensors)


def _already_batched(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return batch


def make_loader(table: Table, batch_size: int, seed: int) -> DataLoader:
    """Shuffled mini-batches ``(X, y)`` of ``table``, reproducible from ``seed``.

    A standard map-style DataLoader (batch_size, shuffle, generator), so Opacus can swap in its
    Poisson-sampling loader via ``DPDataLoader.from_data_loader``; batches stay stacked there too.
    """
    dataset = _BatchedRows(torch.from_numpy(table.X), torch.from_numpy(table.y))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=_already_batched
    )


def _check_labels(table: Table, outputs: int) -> None:
    classes = 2 if outputs == 1 else outputs
    top = int(table.y.max())
    if top >= classes:
        raise DataError(
            f"label {top} does not fit a model with {classes} classes (ids 0..{classes - 1}); "
            "check the target column and the model's numClasses"
        )


def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits.squeeze(1), y.to(logits.dtype))
    return F.cross_entropy(logits, y)


def train_local(model: nn.Module, table: Table, config: TrainConfig) -> int:
    """Train ``model`` in place on ``table`` for ``config.epochs`` epochs; return ``len(table)``.

    The return value is the site's FedAvg weight: the number of training rows, not rows × epochs.
    Loss is BCE-with-logits for a one-logit model and cross-entropy otherwise. Runs are
    reproducible: shuffling and any randomness inside the model (dropout) derive from
    ``config.seed``, and the caller's global torch RNG is left as it was.
    Raises DataError for an empty table or labels the model cannot output, TrainingError if the
    loss stops being finite (the model's weights are then garbage: reload the global state).
    """
    if len(table) == 0:
        raise DataError("no training rows: the site's data (after the validation split) is empty")
    outputs = output_dim(model, table.num_features)
    _check_labels(table, outputs)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ModelError("model has no trainable parameters")
    optimizer: torch.optim.Optimizer
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            params, lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    loader = make_loader(table, config.batch_size, config.seed)
    if config.private:
        return _train_private(model, optimizer, loader, table, config)

    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            for epoch in range(config.epochs):
                # Summed detached losses: one finiteness check per epoch instead of a sync per batch.
                total = torch.zeros(())
                for xb, yb in loader:
                    optimizer.zero_grad(set_to_none=True)
                    loss = _loss(model(xb), yb)
                    loss.backward()
                    optimizer.step()
                    total += loss.detach()
                if not torch.isfinite(total):
                    raise TrainingError(
                        f"training loss became NaN or infinite in epoch {epoch + 1}; "
                        f"lower the learning rate (now {config.learning_rate}) or standardise the features"
                    )
    finally:
        model.train(was_training)
    return len(table)


def _train_private(
    model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, table: Table, config: TrainConfig
) -> int:
    """DP-SGD with Opacus: ``PrivacyEngine.make_private`` wraps the model in a GradSampleModule
    (vectorised per-sample gradients), the optimizer in a DPOptimizer (per-sample clipping to
    ``max_grad_norm``, Gaussian noise) and the loader in a Poisson-sampling DPDataLoader
    (``ceil(n / batch_size)`` steps per epoch at rate ``1 / ceil(n / batch_size)``).

    Sampling and noise draw from a generator seeded by the operating system, never from the job's
    public seed (a known seed would let anyone subtract the noise). Poisson sampling can draw an
    empty batch: the step is still taken, with no per-sample gradient and only the noise, exactly
    the mechanism the accountant composes (skipping it would reveal that the batch was empty). The
    trained weights are copied back into ``model``; the caller's global RNG is left as it was.
    """
    import secrets
    import warnings

    from opacus import PrivacyEngine

    work = copy.deepcopy(model)
    work_params = [p for p in work.parameters() if p.requires_grad]
    opt = type(optimizer)(work_params, **optimizer.defaults)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns about secure_mode and the RNG; documented in docs/privacy.md
        engine = PrivacyEngine(accountant="rdp")
        noise = torch.Generator().manual_seed(secrets.randbits(63))
        dp_model, dp_opt, dp_loader = engine.make_private(
            module=work, optimizer=opt, data_loader=loader, noise_multiplier=float(config.noise_multiplier),
            max_grad_norm=float(config.max_grad_norm), poisson_sampling=True, noise_generator=noise,
        )
    dp_model.train()
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook")  # no input needs a gradient: expected
            torch.manual_seed(secrets.randbits(63))  # Poisson sampling draws from the global RNG
            for epoch in range(config.epochs):
                total = torch.zeros(())
                for xb, yb in dp_loader:
                    dp_opt.zero_grad(set_to_none=True)
                    if len(xb) == 0:  # an empty Poisson batch: a noise-only step
                        (dp_model(xb).sum() * 0.0).backward()
                        dp_opt.step()
                        continue
                    loss = _loss(dp_model(xb), yb)
                    loss.backward()
                    dp_opt.step()
                    total += loss.detach()
                if not torch.isfinite(total):
                    raise TrainingError(
                        f"training loss became NaN or infinite in epoch {epoch + 1}; "
                        f"lower the learning rate (now {config.learning_rate}) or scale the features"
                    )
    finally:
        dp_model._close()  # remove Opacus' hooks from the working copy
    model.load_state_dict(work.state_dict())
    return len(table)


def evaluate(model: nn.Module, table: Table) -> dict[str, float]:
    """``loss``, ``accuracy``, ``auc`` and ``samples`` of ``model`` on ``table``.

    ``loss`` is the mean BCE (one-logit models) or cross-entropy. ``auc`` is scikit-learn's
    ``roc_auc_score``: on the positive-class probability for binary models; for multi-class, the
    one-vs-rest AUC macro-averaged over the classes present in ``table`` (equal to scikit-learn's
    ``multi_class="ovr", average="macro"`` when every class is present). AUC is undefined when the
    table holds a single class: it is then NaN. An empty table gives NaN metrics and 0 samples.
    """
    n = len(table)
    if n == 0:
        return {"loss": math.nan, "accuracy": math.nan, "auc": math.nan, "samples": 0.0}
    outputs = output_dim(model, table.num_features)
    _check_labels(table, outputs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            X = torch.from_numpy(table.X)
            logits = torch.cat([model(X[i : i + _EVAL_BATCH]) for i in range(0, n, _EVAL_BATCH)])
            y = torch.from_numpy(table.y)
            loss = float(_loss(logits, y))
            if outputs == 1:
                scores = torch.sigmoid(logits.squeeze(1)).double().numpy()
                pred = (logits.squeeze(1) > 0).long().numpy()
            else:
                scores = torch.softmax(logits.double(), dim=1).numpy()
                pred = logits.argmax(dim=1).numpy()
    finally:
        model.train(was_training)
    return {
        "loss": loss,
        "accuracy": float(np.mean(pred == table.y)),
        "auc": _auc(table.y, scores),
        "samples": float(n),
    }


def _auc(y: np.ndarray, scores: np.ndarray) -> float:
    present = np.unique(y)
    if present.size < 2:
        return math.nan
    if scores.ndim == 1:
        return float(roc_auc_score(y, scores))
    return float(np.mean([roc_auc_score(y == c, scores[:, c]) for c in present]))


def feature_stats(table: Table) -> dict[str, np.ndarray]:
    """The exact per-feature mean and (population) standard deviation of ``table``, float64.

    What the federated statistics of round 0 (:mod:`fedsec.protocol.stats`) reproduce for the
    sites' pooled training rows without pooling them; ``models.set_standardization`` takes it as
    is. A constant feature gets std 1, as there.
    """
    if len(table) == 0:
        raise DataError("cannot compute feature statistics of an empty table")
    X = table.X.astype(np.float64)
    mean = X.mean(axis=0)
    std = np.sqrt(np.square(X - mean).mean(axis=0))  # centred first: E[x²] - E[x]² cancels
    return {"mean": mean, "std": np.where(std > 0, std, 1.0)}


def _same_layout(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], what: str) -> None:
    if set(a) != set(b):
        missing = [k for k in a if k not in b]
        extra = [k for k in b if k not in a]
        raise ModelError(
            f"{what}: tensor names differ (missing {missing or 'none'}, unexpected {extra or 'none'})"
        )
    for k in a:
        if np.shape(a[k]) != np.shape(b[k]):
            raise ModelError(f"{what}: tensor {k!r} has shapes {np.shape(a[k])} and {np.shape(b[k])}")


def model_delta(after: Mapping[str, np.ndarray], before: Mapping[str, np.ndarray]) -> NumpyState:
    """``after - before`` per tensor (float32), in ``after``'s order; layouts must match."""
    _same_layout(after, before, "model_delta")
    return {k: (np.asarray(after[k], np.float32) - np.asarray(before[k], np.float32)) for k in after}


def apply_delta(
    state: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], scale: float = 1.0
) -> NumpyState:
    """A new state ``state + scale * delta`` (float32); ``state`` is not modified."""
    _same_layout(state, delta, "apply_delta")
    s = np.float32(scale)
    return {k: np.asarray(state[k], np.float32) + s * np.asarray(delta[k], np.float32) for k in state}
