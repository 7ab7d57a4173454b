from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedsec.training.models import (
    ModelError,
    Standardize,
    build_model,
    load_numpy_state,
    output_dim,
    set_standardization,
    standardization_of,
    state_to_numpy,
)


@pytest.mark.parametrize(
    ("kind", "classes", "outputs"),
    [("logistic-regression", 2, 1), ("logistic-regression", 5, 5), ("mlp", 2, 1), ("mlp", 10, 10)],
)
def test_builtin_models_have_the_right_output_width(kind: str, classes: int, outputs: int) -> None:
    model = build_model(kind, input_dim=7, num_classes=classes)
    assert model(torch.randn(4, 7)).shape == (4, outputs)
    assert output_dim(model, 7) == outputs
    assert isinstance(model.input_norm, Standardize)
    names = list(model.state_dict())
    assert names[:2] == ["input_norm.mean", "input_norm.std"]


def test_mlp_layers_follow_hidden() -> None:
    model = build_model("mlp", input_dim=5, num_classes=3, hidden=(16, 8))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {
        "input_norm.mean": (5,),
        "input_norm.std": (5,),
        "fc0.weight": (16, 5),
        "fc0.bias": (16,),
        "fc1.weight": (8, 16),
        "fc1.bias": (8,),
        "out.weight": (3, 8),
        "out.bias": (3,),
    }


def test_init_is_deterministic_in_seed_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = state_to_numpy(build_model("mlp", input_dim=4, num_classes=3, seed=1))
    assert torch.equal(torch.rand(3), expected_next)
    b = state_to_numpy(build_model("mlp", input_dim=4, num_classes=3, seed=1))
    c = state_to_numpy(build_model("mlp", input_dim=4, num_classes=3, seed=2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["fc0.weight"], c["fc0.weight"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "resnet"}, "unknown model kind 'resnet'.*logistic-regression, mlp, factory"),
        ({"kind": "mlp", "num_classes": 1}, "num_classes must be at least 2"),
        ({"kind": "mlp", "input_dim": 0}, "input_dim must be at least 1"),
        ({"kind": "mlp", "hidden": (8, 0)}, "hidden layer 1 must have at least 1 unit"),
        ({"kind": "mlp", "factory": "torch.nn:Identity"}, "apply to kind 'factory' only"),
        ({"kind": "logistic-regression", "params": {"x": 1}}, "apply to kind 'factory' only"),
    ],
)
def test_bad_builtin_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"input_dim": 3, "num_classes": 2, **kwargs}
    with pytest.raises(ModelError, match=message):
        build_model(**args)  # type: ignore[arg-type]


_FACTORY_MODULE = '''
from torch import nn

def make(width: int = 4, classes: int = 2) -> nn.Module:
    return nn.Sequential(nn.Linear(width, 8), nn.Tanh(), nn.Linear(8, classes))

def not_a_model() -> dict:
    return {}

CONSTANT = 3
'''


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = "fedsec_test_factory_models"
    (tmp_path / f"{name}.py").write_text(_FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_factory_is_imported_and_called_with_params(factory_module: str) -> None:
    def build(seed: int) -> nn.Module:
        return build_model(
            "factory",
            input_dim=6,
            num_classes=3,
            factory=f"{factory_module}:make",
            params={"width": 6, "classes": 3},
            seed=seed,
        )

    model = build(0)
    assert model(torch.zeros(2, 6)).shape == (2, 3)
    a, b, c = state_to_numpy(model), state_to_numpy(build(0)), state_to_numpy(build(1))
    assert all(np.array_equal(a[k], b[k]) for k in a), "the seed governs a factory's init too"
    assert not np.array_equal(a["0.weight"], c["0.weight"])


@pytest.mark.parametrize(
    ("factory", "params", "message"),
    [
        (None, None, "needs factory='package.module:function'"),
        ("{mod}.make", None, "must look like 'package.module:function'"),
        ("{mod}:", None, "must look like"),
        ("no_such_module_xyz:make", None, "cannot import module 'no_such_module_xyz'.*install it"),
        ("{mod}:missing", None, "has no attribute 'missing'"),
        ("{mod}:CONSTANT", None, r"is not callable \(it is a int\)"),
        ("{mod}:make", {"depth": 3}, "rejected params.*depth"),
        ("{mod}:not_a_model", None, "returned a dict; it must return a torch.nn.Module"),
    ],
)
def test_bad_factories_fail_clearly(
    factory_module: str, factory: str | None, params: dict[str, object] | None, message: str
) -> None:
    spec = factory.format(mod=factory_module) if factory else None
    with pytest.raises(ModelError, match=message):
        build_model("factory", input_dim=4, num_classes=2, factory=spec, params=params)


# A module whose import alone leaves a trace: the site's list must stop it before the import.
_MARKING_MODULE = """
from pathlib import Path
from torch import nn

Path({marker!r}).write_text("imported")

def make() -> nn.Module:
    Path({marker!r}).write_text("called")
    return nn.Linear(4, 1)
"""


@pytest.fixture
def marking_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    name, marker = "fedsec_test_marking_models", tmp_path / "marker"
    (tmp_path / f"{name}.py").write_text(_MARKING_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    yield name, marker
    sys.modules.pop(name, None)


@pytest.mark.parametrize("allowed", [[], ["fedsec_test_marking_models:make_other"], ["os:system"]])
def test_a_factory_the_site_does_not_list_is_refused_before_its_module_is_imported(
    marking_module: tuple[str, Path], allowed: list[str]
) -> None:
    name, marker = marking_module
    with pytest.raises(ModelError) as err:
        build_model("factory", input_dim=4, num_classes=2, factory=f"{name}:make", allowed_factories=allowed)
    message = str(err.value)
    assert f"'{name}:make'" in message and "policy.allowedModelFactories" in message, message
    assert not marker.exists(), "the module was imported although the site does not list its factory"
    assert name not in sys.modules


def test_os_system_is_refused_by_a_site_without_running_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(ModelError, match=r"'os:system' is not in this site's policy\.allowedModelFactories"):
        build_model("factory", input_dim=4, num_classes=2, factory="os:system",
                    params={"command": f"touch {marker}"}, allowed_factories=[])
    assert not marker.exists()


def test_a_factory_the_site_lists_is_imported_and_called(marking_module: tuple[str, Path]) -> None:
    name, marker = marking_module
    # The control for the refusals above: the same module does leave its mark when it is allowed.
    model = build_model("factory", input_dim=4, num_classes=2, factory=f"{name}:make",
                        allowed_factories=[f"{name}:make"])
    assert isinstance(model, nn.Linear) and marker.read_text() == "called"


def test_without_a_site_list_the_callers_own_factory_is_built(marking_module: tuple[str, Path]) -> None:
    name, marker = marking_module  # the coordinator builds its own job's model: no site list applies
    build_model("factory", input_dim=4, num_classes=2, factory=f"{name}:make", allowed_factories=None)
    assert marker.read_text() == "called"


@pytest.mark.parametrize("kind", ["logistic-regression", "mlp"])
def test_builtin_models_need_no_site_listing(kind: str) -> None:
    assert isinstance(build_model(kind, input_dim=3, num_classes=2, allowed_factories=[]), nn.Module)


def test_state_to_numpy_copies_floating_state_in_order() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    state = state_to_numpy(model)
    floating = [k for k, v in model.state_dict().items() if torch.is_floating_point(v)]
    assert list(state) == floating
    assert "1.num_batches_tracked" not in state
    assert all(v.dtype == np.float32 for v in state.values())
    state["0.weight"][:] = 42.0
    assert not torch.any(model[0].weight == 42.0)


def test_load_numpy_state_round_trips() -> None:
    a = build_model("mlp", input_dim=4, num_classes=3, seed=1)
    b = build_model("mlp", input_dim=4, num_classes=3, seed=2)
    load_numpy_state(b, state_to_numpy(a))
    x = torch.randn(5, 4)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("out.bias"), r"missing \['out.bias'\]"),
        (lambda s: s.update(extra=np.zeros(1, np.float32)), r"unexpected \['extra'\]"),
        (lambda s: s.update({"fc0.weight": np.zeros((3, 3), np.float32)}), r"tensor 'fc0.weight': shape \(3, 3\)"),
        (lambda s: s["out.weight"].__setitem__((0, 0), np.nan), "tensor 'out.weight': contains NaN"),
    ],
)
def test_load_numpy_state_rejects_mismatches_and_leaves_model_unchanged(
    edit: Callable[[dict[str, np.ndarray]], object], message: str
) -> None:
    model = build_model("mlp", input_dim=4, num_classes=3, hidden=(3,), seed=1)
    before = state_to_numpy(model)
    bad = {k: v + 1.0 for k, v in before.items()}
    edit(bad)
    with pytest.raises(ModelError, match=message):
        load_numpy_state(model, bad)
    after = state_to_numpy(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_standardize_forward() -> None:
    norm = Standardize(2)
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert torch.equal(norm(x), x)
    norm.mean.copy_(torch.tensor([1.0, 2.0]))
    norm.std.copy_(torch.tensor([2.0, 4.0]))
    assert torch.allclose(norm(x), torch.tensor([[0.0, 0.0], [1.0, 1.0]]))


def test_set_standardization_stores_mean_and_std_and_reads_back() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal([5.0, -3.0, 1000.0], [2.0, 0.5, 10.0], size=(10_000, 3)).astype(np.float32)
    X64 = X.astype(np.float64)
    model = build_model("logistic-regression", input_dim=3, num_classes=2)
    set_standardization(model, X64.mean(0), X64.std(0))
    mean, std = standardization_of(model)
    assert np.array_equal(mean, X64.mean(0).astype(np.float32)) and np.array_equal(std, X64.std(0).astype(np.float32))
    z = model.input_norm(torch.from_numpy(X)).numpy()
    assert np.allclose(z.mean(0), 0.0, atol=1e-4) and np.allclose(z.std(0), 1.0, atol=1e-4)


def test_set_standardization_needs_input_norm_and_matching_shapes() -> None:
    with pytest.raises(ModelError, match="no 'input_norm' Standardize layer"):
        set_standardization(nn.Linear(3, 1), np.zeros(3), np.ones(3))
    model = build_model("mlp", input_dim=3, num_classes=2)
    with pytest.raises(ModelError, match=r"std has shape \(4,\), input_norm expects \(3,\)"):
        set_standardization(model, np.zeros(3), np.ones(4))
    with pytest.raises(ModelError, match="mean contains NaN"):
        set_standardization(model, np.array([0.0, np.nan, 0.0]), np.ones(3))
    with pytest.raises(ModelError, match="std must be positive"):
        set_standardization(model, np.zeros(3), np.array([1.0, 0.0, 1.0]))
    with pytest.raises(ModelError, match="as float32"):
        set_standardization(model, np.array([0.0, 1e39, 0.0]), np.ones(3))
    with pytest.raises(ModelError, match="no 'input_norm' Standardize layer"):
        standardization_of(nn.Linear(3, 1))
    assert model.input_norm.std.tolist() == [1.0, 1.0, 1.0]
