"""Models the runtime trains: builtin architectures, user factories, and their numpy state.

Builtin models are plain ``nn.Sequential`` stacks (Opacus computes per-sample gradients for them
without changes) that start with a ``Standardize`` layer named ``input_norm``. Its mean and std
are buffers, so they travel in the state dict: the aggregator sets them once from the sites'
averaged feature moments, and every site then trains on standardised features without any site
revealing its data.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "MODEL_KINDS",
    "ModelError",
    "NumpyState",
    "Standardize",
    "build_model",
    "load_numpy_state",
    "output_dim",
    "set_standardization",
    "standardization_of",
    "state_to_numpy",
]

NumpyState = dict[str, np.ndarray]
"""A model's floating-point state: name -> float32 array, in state_dict order."""

MODEL_KINDS = ("logistic-regression", "mlp", "factory")


class ModelError(ValueError):
    """A model cannot be built or does not fit the given state; the message names the part at fault."""


class Standardize(nn.Module):
    """``(x - mean) / std`` with ``mean`` and ``std`` as buffers (identity until they are set)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float32))
        self.register_buffer("std", torch.ones(dim, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build_model(
    kind: str,
    *,
    input_dim: int,
    num_classes: int,
    hidden: Sequence[int] = (64,),
    factory: str | None = None,
    params: Mapping[str, object] | None = None,
    seed: int = 0,
    allowed_factories: Collection[str] | None = None,
) -> nn.Module:
    """A freshly initialised model; the same arguments give the same weights in every process.

    - ``logistic-regression``: ``input_norm`` -> ``linear``.
    - ``mlp``: ``input_norm`` -> (``fc{i}`` -> ``relu{i}``) per entry of ``hidden`` -> ``out``.
    - ``factory``: ``factory`` is ``"package.module:function"``; it is imported and called with
      ``**params`` and must return an ``nn.Module``. ``input_dim``/``num_classes``/``hidden`` are
      not passed to it (put them in ``params``).

    Builtin models output one logit for two classes (trained with BCE on the positive class) and
    ``num_classes`` logits otherwise. ``factory`` and ``params`` are only for ``kind="factory"``.

    ``allowed_factories``: the factories the caller's site policy lists (a site's client passes its
    ``policy.allowedModelFactories``); a factory not in it, compared exactly, is refused before its
    module is imported. None: no site list applies (the coordinator building its own job's model).
    """
    if kind not in MODEL_KINDS:
        raise ModelError(f"unknown model kind {kind!r}; choose one of: {', '.join(MODEL_KINDS)}")
    # Before any import: importing a module runs its code, so the check must come first. Whatever
    # the config says the job is, this process builds only what its own site agreed to run.
    if kind == "factory" and allowed_factories is not None and factory not in allowed_factories:
        listed = sorted(allowed_factories)
        raise ModelError(
            f"factory {factory!r} is not in this site's policy.allowedModelFactories "
            f"({listed if listed else 'none listed: builtin models only'}); refusing to import or call it. "
            "If the site means to run it, add it to the FederatedClient's policy.allowedModelFactories"
        )
    # Build under a private RNG state so init is reproducible and the caller's RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "factory":
            return _from_factory(factory, params)
        if factory is not None or params:
            raise ModelError(
                f"factory and params apply to kind 'factory' only, not {kind!r}; remove them"
            )
        if input_dim < 1:
            raise ModelError(f"input_dim must be at least 1, got {input_dim}")
        if num_classes < 2:
            raise ModelError(f"num_classes must be at least 2, got {num_classes}")
        outputs = 1 if num_classes == 2 else num_classes
        layers: OrderedDict[str, nn.Module] = OrderedDict(input_norm=Standardize(input_dim))
        if kind == "logistic-regression":
            layers["linear"] = nn.Linear(input_dim, outputs)
        else:
            width = input_dim
            for i, h in enumerate(hidden):
                if h < 1:
                    raise ModelError(f"hidden layer {i} must have at least 1 unit, got {h}")
                layers[f"fc{i}"] = nn.Linear(width, h)
                layers[f"relu{i}"] = nn.ReLU()
                width = h
            layers["out"] = nn.Linear(width, outputs)
        return nn.Sequential(layers)


def _from_factory(factory: str | None, params: Mapping[str, object] | None) -> nn.Module:
    if not factory:
        raise ModelError("kind 'factory' needs factory='package.module:function'")
    module_name, sep, func_name = factory.partition(":")
    if not sep or not module_name or not func_name or ":" in func_name:
        raise ModelError(f"factory {factory!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(
            f"cannot import module {module_name!r} for factory {factory!r}: {exc}; "
            "install it in the runtime image or fix the module path"
        ) from None
    func = getattr(module, func_name, None)
    if func is None:
        raise ModelError(f"module {module_name!r} has no attribute {func_name!r} (factory {factory!r})")
    if not callable(func):
        raise ModelError(f"factory {factory!r} is not callable (it is a {type(func).__name__})")
    try:
        model = func(**dict(params or {}))
    except TypeError as exc:
        raise ModelError(f"factory {factory!r} rejected params {dict(params or {})}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"factory {factory!r} returned a {type(model).__name__}; it must return a torch.nn.Module"
        )
    return model


def output_dim(model: nn.Module, input_dim: int) -> int:
    """Width of the model's output for one row (1 means binary with one logit)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, input_dim))
    except Exception as exc:  # a user factory may fail in any way on the wrong input width
        raise ModelError(f"model does not accept {input_dim} input features: {exc}") from None
    finally:
        model.train(was_training)
    if out.ndim != 2 or out.shape[0] != 1:
        raise ModelError(f"model output must be (rows, outputs), got shape {tuple(out.shape)} for one row")
    return int(out.shape[1])


def _floating_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if torch.is_floating_point(v)}


def state_to_numpy(model: nn.Module) -> NumpyState:
    """Float32 copies of every floating tensor in the state dict (parameters and buffers such as
    ``input_norm.mean``), in state_dict order. Integer buffers (e.g. BatchNorm's batch counter)
    are local bookkeeping and are left out."""
    return {
        k: np.array(v.detach().cpu().numpy(), dtype=np.float32, copy=True)
        for k, v in _floating_state(model).items()
    }


def load_numpy_state(model: nn.Module, tensors: Mapping[str, np.ndarray]) -> None:
    """Copy ``tensors`` into the model's floating state; names and shapes must match exactly.

    Everything is checked before anything is written, so a bad state leaves the model unchanged.
    """
    target = _floating_state(model)
    missing = [k for k in target if k not in tensors]
    extra = [k for k in tensors if k not in target]
    if missing or extra:
        raise ModelError(
            f"state does not match the model: missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    for name, current in target.items():
        arr = np.asarray(tensors[name])
        if tuple(arr.shape) != tuple(current.shape):
            raise ModelError(
                f"tensor {name!r}: shape {tuple(arr.shape)}, the model has {tuple(current.shape)}"
            )
        if arr.dtype.kind not in "fiu":
            raise ModelError(f"tensor {name!r}: dtype {arr.dtype} is not numeric")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ModelError(f"tensor {name!r}: contains NaN or infinity")
    with torch.no_grad():
        for name, current in target.items():
            current.copy_(torch.from_numpy(np.asarray(tensors[name], dtype=np.float32)))


def _input_norm(model: nn.Module) -> Standardize:
    norm = getattr(model, "input_norm", None)
    if not isinstance(norm, Standardize):
        raise ModelError(
            "model has no 'input_norm' Standardize layer, so features cannot be standardised in it; "
            "start the factory's model with fedsec.training.models.Standardize as 'input_norm' "
            "or turn standardisation off"
        )
    return norm


def set_standardization(model: nn.Module, mean: np.ndarray, std: np.ndarray) -> None:
    """Set ``input_norm`` to ``(x - mean) / std``.

    The federated statistics (:func:`fedsec.protocol.stats.pooled_moments`) decide the numbers,
    including std 1 for a constant feature (centred, not scaled, as scikit-learn's StandardScaler
    does); this only checks and stores them. Raises ModelError, leaving the model unchanged, if it
    has no ``input_norm`` Standardize layer, the shapes do not match, or a value is not finite or a
    std not positive.
    """
    norm = _input_norm(model)
    m = np.asarray(mean, dtype=np.float64)
    sd = np.asarray(std, dtype=np.float64)
    dim = tuple(norm.mean.shape)
    for name, arr in (("mean", m), ("std", sd)):
        if arr.shape != dim:
            raise ModelError(f"{name} has shape {arr.shape}, input_norm expects {dim}")
        with np.errstate(over="ignore"):  # too large for float32 is what is being checked
            finite = np.isfinite(arr.astype(np.float32)).all()
        if not finite:
            raise ModelError(f"{name} contains NaN or infinity (as float32)")
    if not (sd.astype(np.float32) > 0).all():
        raise ModelError("std must be positive (as float32)")
    with torch.no_grad():
        norm.mean.copy_(torch.from_numpy(m.astype(np.float32)))
        norm.std.copy_(torch.from_numpy(sd.astype(np.float32)))


def standardization_of(model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """``input_norm``'s mean and std (float32 copies); ModelError if the model has no such layer."""
    norm = _input_norm(model)
    return norm.mean.detach().numpy().copy(), norm.std.detach().numpy().copy()
