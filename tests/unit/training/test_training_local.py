from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from fedsec.training.data import DataError, Table, holdout_split, load_builtin, partition
from fedsec.training.local import (
    TrainConfig,
    TrainingError,
    apply_delta,
    evaluate,
    feature_stats,
    make_loader,
    model_delta,
    train_local,
)
from fedsec.training.models import (
    ModelError,
    build_model,
    load_numpy_state,
    set_standardization,
    state_to_numpy,
)


def _standardised(kind: str, table: Table, num_classes: int, seed: int = 0) -> torch.nn.Module:
    model = build_model(kind, input_dim=table.num_features, num_classes=num_classes, seed=seed)
    stats = feature_stats(table)
    set_standardization(model, stats["mean"], stats["std"])
    return model


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("epochs", 1.5),
        ("epochs", True),
        ("batch_size", 0),
        ("optimizer", "rmsprop"),
        ("learning_rate", 0.0),
        ("learning_rate", math.nan),
        ("momentum", 1.0),
        ("momentum", -0.1),
        ("weight_decay", -1e-4),
        ("seed", -1),
    ],
)
def test_train_config_names_the_bad_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"TrainConfig.{field} "):
        TrainConfig(**{field: value})  # type: ignore[arg-type]


def test_momentum_with_adam_is_refused() -> None:
    with pytest.raises(ValueError, match="momentum applies to optimizer 'sgd' only"):
        TrainConfig(optimizer="adam", momentum=0.9)


# --- training ----------------------------------------------------------------------------------


def test_central_logistic_regression_on_breast_cancer_reaches_auc_098() -> None:
    rest, holdout = holdout_split(load_builtin("breast-cancer"), 0.2, seed=0)
    model = _standardised("logistic-regression", rest, 2)
    # Standardisation is what makes plain SGD work on these features (scales differ by 10^4).
    assert model.input_norm.std.max() / model.input_norm.std.min() > 1e3
    before = evaluate(model, holdout)
    used = train_local(model, rest, TrainConfig(epochs=20, batch_size=32, learning_rate=0.05))
    after = evaluate(model, holdout)
    assert used == len(rest)
    assert after["auc"] >= 0.98
    assert after["accuracy"] >= 0.93
    assert after["loss"] < before["loss"] / 2
    assert after["samples"] == len(holdout)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_multiclass_mlp_learns_iris(optimizer: str) -> None:
    rest, holdout = holdout_split(load_builtin("iris"), 0.2, seed=0)
    model = _standardised("mlp", rest, 3)
    config = TrainConfig(
        epochs=30,
        batch_size=16,
        optimizer=optimizer,  # type: ignore[arg-type]
        learning_rate=0.05 if optimizer == "sgd" else 0.01,
    )
    train_local(model, rest, config)
    assert evaluate(model, holdout)["accuracy"] >= 0.9


def test_training_is_reproducible_from_the_seed() -> None:
    table = load_builtin("wine")

    def run(seed: int) -> dict[str, np.ndarray]:
        model = _standardised("mlp", table, 3)
        train_local(model, table, TrainConfig(epochs=2, batch_size=16, momentum=0.9, seed=seed))
        return state_to_numpy(model)

    a, b, c = run(1), run(1), run(2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["fc0.weight"], c["fc0.weight"])


def test_training_leaves_global_rng_and_mode_alone() -> None:
    table = load_builtin("iris")
    model = _standardised("mlp", table, 3)
    model.eval()
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    train_local(model, table, TrainConfig())
    assert torch.equal(torch.rand(2), expected)
    assert not model.training


def test_loader_batches_cover_each_row_once_per_epoch() -> None:
    table = load_builtin("iris")
    loader = make_loader(table, batch_size=32, seed=0)
    sizes, labels = [], []
    for xb, yb in loader:
        sizes.append(len(xb))
        labels.append(yb)
    assert sizes == [32, 32, 32, 32, 22]
    assert sorted(torch.cat(labels).tolist()) == sorted(table.y.tolist())


def test_labels_the_model_cannot_output_are_refused() -> None:
    table = load_builtin("iris")  # labels 0..2
    model = build_model("logistic-regression", input_dim=4, num_classes=2)
    with pytest.raises(DataError, match="label 2 does not fit a model with 2 classes"):
        train_local(model, table, TrainConfig())
    with pytest.raises(DataError, match="label 2 does not fit"):
        evaluate(model, table)


def test_empty_training_table_is_refused() -> None:
    empty = Table(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), ("a", "b", "c", "d"))
    with pytest.raises(DataError, match="no training rows"):
        train_local(build_model("mlp", input_dim=4, num_classes=3), empty, TrainConfig())


def test_wrong_input_width_is_a_model_error() -> None:
    model = build_model("logistic-regression", input_dim=5, num_classes=2)
    with pytest.raises(ModelError, match="does not accept 4 input features"):
        train_local(model, load_builtin("iris"), TrainConfig())


def test_divergence_is_reported() -> None:
    rng = np.random.default_rng(0)
    table = Table(rng.normal(size=(64, 3)) * 1e20, rng.integers(0, 3, 64), ("a", "b", "c"))
    model = build_model("mlp", input_dim=3, num_classes=3, hidden=(4,))
    with pytest.raises(TrainingError, match="epoch 1; lower the learning rate"):
        train_local(model, table, TrainConfig(learning_rate=1e30))


# --- evaluation --------------------------------------------------------------------------------


def _trained(kind: str, dataset: str, classes: int, epochs: int = 1) -> tuple[torch.nn.Module, Table]:
    rest, holdout = holdout_split(load_builtin(dataset), 0.3, seed=1)
    model = _standardised(kind, rest, classes)
    # Deliberately short training: imperfect predictions make the metric comparison meaningful.
    train_local(model, rest, TrainConfig(epochs=epochs, learning_rate=0.01))
    return model, holdout


def test_binary_metrics_agree_with_sklearn() -> None:
    model, holdout = _trained("logistic-regression", "breast-cancer", 2)
    with torch.no_grad():
        p = torch.sigmoid(model(torch.from_numpy(holdout.X))).squeeze(1).double().numpy()
    got = evaluate(model, holdout)
    assert 0.5 < got["accuracy"] < 1.0, "the check needs a model that is neither perfect nor useless"
    assert got["loss"] == pytest.approx(log_loss(holdout.y, p), rel=1e-5)
    assert got["accuracy"] == pytest.approx(accuracy_score(holdout.y, p > 0.5))
    assert got["auc"] == pytest.approx(roc_auc_score(holdout.y, p))
    assert got["samples"] == len(holdout)


def test_multiclass_metrics_agree_with_sklearn() -> None:
    model, holdout = _trained("mlp", "digits", 10)
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(holdout.X)).double(), dim=1).numpy()
    got = evaluate(model, holdout)
    assert 0.2 < got["accuracy"] < 1.0
    assert got["loss"] == pytest.approx(log_loss(holdout.y, probs, labels=range(10)), rel=1e-5)
    assert got["accuracy"] == pytest.approx(accuracy_score(holdout.y, probs.argmax(1)))
    assert got["auc"] == pytest.approx(roc_auc_score(holdout.y, probs, multi_class="ovr", average="macro"))


def test_multiclass_auc_averages_the_classes_present() -> None:
    model, holdout = _trained("mlp", "iris", 3)
    subset = holdout.take(np.flatnonzero(holdout.y != 1))
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(subset.X)).double(), dim=1).numpy()
    expected = np.mean([roc_auc_score(subset.y == c, probs[:, c]) for c in (0, 2)])
    assert evaluate(model, subset)["auc"] == pytest.approx(expected)


def test_auc_is_nan_when_only_one_class_is_present() -> None:
    model, holdout = _trained("logistic-regression", "breast-cancer", 2)
    one_class = holdout.take(np.flatnonzero(holdout.y == 1))
    got = evaluate(model, one_class)
    assert math.isnan(got["auc"])
    assert math.isfinite(got["loss"]) and 0.0 <= got["accuracy"] <= 1.0


def test_empty_table_gives_nan_metrics() -> None:
    model = build_model("mlp", input_dim=4, num_classes=3)
    got = evaluate(model, Table(np.zeros((0, 4)), np.zeros(0, np.int64), ("a", "b", "c", "d")))
    assert got["samples"] == 0.0
    assert all(math.isnan(got[k]) for k in ("loss", "accuracy", "auc"))


# --- feature statistics and deltas -------------------------------------------------------------


def test_feature_stats_are_the_column_mean_and_std() -> None:
    table = load_builtin("wine")
    stats = feature_stats(table)
    X = table.X.astype(np.float64)
    np.testing.assert_allclose(stats["mean"], X.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["std"], X.std(0), rtol=1e-12)


def test_a_constant_feature_gets_std_one() -> None:
    table = Table(np.array([[1.0, 3.0], [2.0, 3.0]]), np.array([0, 1]), ("a", "b"))
    assert feature_stats(table)["std"].tolist() == [0.5, 1.0]


def test_feature_stats_of_empty_table_is_refused() -> None:
    with pytest.raises(DataError, match="empty table"):
        feature_stats(Table(np.zeros((0, 2)), np.zeros(0, np.int64), ("a", "b")))


def test_delta_round_trip_reproduces_the_trained_model() -> None:
    rest, holdout = holdout_split(load_builtin("breast-cancer"), 0.2, seed=0)
    model = _standardised("mlp", rest, 2)
    before = state_to_numpy(model)
    train_local(model, rest, TrainConfig(epochs=2))
    after = state_to_numpy(model)
    delta = model_delta(after, before)
    assert list(delta) == list(after)
    assert np.abs(delta["fc0.weight"]).max() > 0
    assert not np.any(delta["input_norm.std"]), "standardisation is fixed during local training"

    rebuilt = apply_delta(before, delta)
    assert all(np.allclose(rebuilt[k], after[k], atol=1e-6) for k in after)
    fresh = _standardised("mlp", rest, 2)
    load_numpy_state(fresh, rebuilt)
    assert evaluate(fresh, holdout)["loss"] == pytest.approx(evaluate(model, holdout)["loss"], rel=1e-5)


def test_apply_delta_scales_and_does_not_modify_its_inputs() -> None:
    state = {"w": np.array([1.0, 2.0], np.float32), "b": np.array([0.5], np.float32)}
    delta = {"b": np.array([1.0], np.float32), "w": np.array([2.0, -2.0], np.float32)}
    out = apply_delta(state, delta, scale=0.5)
    assert list(out) == ["w", "b"]
    assert out["w"].tolist() == [2.0, 1.0] and out["b"].tolist() == [1.0]
    assert state["w"].tolist() == [1.0, 2.0] and delta["w"].tolist() == [2.0, -2.0]


@pytest.mark.parametrize(
    ("other", "message"),
    [
        ({"w": np.zeros(2, np.float32)}, r"missing \['b'\]"),
        ({"w": np.zeros(2, np.float32), "b": np.zeros(1, np.float32), "c": np.zeros(1)}, r"unexpected \['c'\]"),
        ({"w": np.zeros(3, np.float32), "b": np.zeros(1, np.float32)}, r"tensor 'w' has shapes \(2,\) and \(3,\)"),
    ],
)
def test_delta_layout_mismatch_is_named(other: dict[str, np.ndarray], message: str) -> None:
    state = {"w": np.zeros(2, np.float32), "b": np.zeros(1, np.float32)}
    with pytest.raises(ModelError, match=message):
        model_delta(state, other)
    with pytest.raises(ModelError, match=message):
        apply_delta(state, other)


def test_loader_stays_batched_under_opacus_poisson_sampling() -> None:
    # DP-SGD will replace the loader with Opacus' own; it must still yield stacked (X, y) batches.
    from opacus.data_loader import DPDataLoader

    table = load_builtin("iris")
    dp_loader = DPDataLoader.from_data_loader(make_loader(table, batch_size=30, seed=0))
    batches = list(dp_loader)
    assert len(batches) == 5
    for xb, yb in batches:
        assert xb.shape == (len(yb), 4) and yb.dtype == torch.int64
    assert 50 < sum(len(yb) for _, yb in batches) < 250
