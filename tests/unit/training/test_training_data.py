from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsec.training.data import (
    BUILTIN_DATASETS,
    MIN_SHARD_SIZE,
    DataError,
    Table,
    _rebalance,
    builtin_holdout,
    builtin_site_data,
    holdout_split,
    load_builtin,
    load_table,
    partition,
    train_validation_split,
)


def _table(labels: list[int], d: int = 2) -> Table:
    y = np.asarray(labels, dtype=np.int64)
    X = np.arange(y.size * d, dtype=np.float32).reshape(y.size, d)
    return Table(X, y, tuple(f"f{i}" for i in range(d)))


def _assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert joined.size == n, "shards must hold every row exactly once"
    assert np.array_equal(np.sort(joined), np.arange(n))


def _skew(table: Table, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each shard's label mix and the whole table's."""
    k = int(table.y.max()) + 1
    overall = np.bincount(table.y, minlength=k) / len(table)
    tv = [0.5 * np.abs(np.bincount(table.y[p], minlength=k) / p.size - overall).sum() for p in parts]
    return float(np.mean(tv))


# --- Table -------------------------------------------------------------------------------------


def test_table_converts_dtypes_and_has_length() -> None:
    t = Table(np.ones((3, 2), dtype=np.float64), np.array([0, 1, 1], dtype=np.int32), ("a", "b"))
    assert len(t) == 3
    assert t.X.dtype == np.float32 and t.y.dtype == np.int64


@pytest.mark.parametrize(
    ("X", "y", "names", "message"),
    [
        (np.ones((3, 2)), np.array([0, 1]), ("a", "b"), "3 rows but y has 2"),
        (np.array([[1.0, np.nan]]), np.array([0]), ("a", "b"), "'b'"),
        (np.array([[1.0, np.inf]]), np.array([0]), ("a", "b"), "NaN or infinite"),
        (np.ones((2, 2)), np.array([0, -1]), ("a", "b"), "non-negative"),
        (np.ones((2, 2)), np.array([0.0, 1.5]), ("a", "b"), "integer class labels"),
        (np.ones((2, 2)), np.array([0, 1]), ("a",), "1 feature names for 2"),
        (np.ones(2), np.array([0, 1]), ("a",), "2-D"),
    ],
)
def test_table_rejects_bad_input(X: np.ndarray, y: np.ndarray, names: tuple[str, ...], message: str) -> None:
    with pytest.raises(DataError, match=message):
        Table(X, y, names)


# --- builtin datasets --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rows", "features", "classes"),
    [("breast-cancer", 569, 30, 2), ("iris", 150, 4, 3), ("wine", 178, 13, 3), ("digits", 1797, 64, 10)],
)
def test_builtin_datasets_load_offline(name: str, rows: int, features: int, classes: int) -> None:
    t = load_builtin(name)
    assert (len(t), t.num_features) == (rows, features)
    assert len(t.feature_names) == features
    assert len(t.class_names) == classes == len(np.unique(t.y))


def test_builtin_names_match_the_spec() -> None:
    assert sorted(BUILTIN_DATASETS) == sorted(["breast-cancer", "iris", "wine", "digits"])


def test_unknown_builtin_lists_the_choices() -> None:
    with pytest.raises(DataError, match="unknown builtin dataset 'mnist'.*breast-cancer"):
        load_builtin("mnist")


# --- splits ------------------------------------------------------------------------------------


def test_holdout_split_is_disjoint_stratified_and_reproducible() -> None:
    t = load_builtin("wine")
    rest, hold = holdout_split(t, 0.25, seed=3)
    assert len(hold) == int(np.ceil(0.25 * len(t))) and len(rest) + len(hold) == len(t)
    rest_rows = {r.tobytes() for r in rest.X}
    assert not rest_rows & {r.tobytes() for r in hold.X}
    # Stratified: each class's share of the holdout is within one row of its share overall.
    counts = np.bincount(t.y)
    assert np.all(np.abs(np.bincount(hold.y, minlength=counts.size) - counts * len(hold) / len(t)) <= 1)
    again_rest, again_hold = holdout_split(t, 0.25, seed=3)
    assert np.array_equal(again_hold.X, hold.X) and np.array_equal(again_rest.y, rest.y)
    assert not np.array_equal(holdout_split(t, 0.25, seed=4)[1].X, hold.X)


def test_holdout_fraction_zero_gives_empty_holdout() -> None:
    t = load_builtin("iris")
    rest, hold = holdout_split(t, 0.0, seed=0)
    assert len(rest) == len(t) and len(hold) == 0 and hold.num_features == t.num_features


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_split_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(DataError, match="fraction must be in"):
        holdout_split(load_builtin("iris"), fraction, seed=0)


def test_validation_split_stratifies_when_it_can() -> None:
    t = _table([0] * 80 + [1] * 20)
    train, val = train_validation_split(t, 0.2, seed=0)
    assert np.bincount(val.y).tolist() == [16, 4]
    assert np.bincount(train.y).tolist() == [64, 16]


def test_validation_split_falls_back_to_random_with_a_singleton_class() -> None:
    t = _table([0] * 10 + [1] * 9 + [2])
    train, val = train_validation_split(t, 0.25, seed=0)
    assert (len(train), len(val)) == (15, 5)
    assert sorted(np.concatenate([train.X[:, 0], val.X[:, 0]]).tolist()) == sorted(t.X[:, 0].tolist())


def test_validation_split_of_one_row_fails_clearly() -> None:
    with pytest.raises(DataError, match="at least 2 rows"):
        train_validation_split(_table([0]), 0.2, seed=0)


# --- partitions --------------------------------------------------------------------------------


def test_iid_partition_is_disjoint_balanced_and_reproducible() -> None:
    t = load_builtin("digits")
    parts = partition(t, scheme="iid", shards=7, seed=1)
    _assert_disjoint_cover(parts, len(t))
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1
    again = partition(t, scheme="iid", shards=7, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition(t, scheme="iid", shards=7, seed=2)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


@pytest.mark.parametrize("alpha", [0.01, 0.1, 1.0, 100.0])
def test_dirichlet_partition_is_disjoint_covers_and_keeps_min_size(alpha: float) -> None:
    t = load_builtin("digits")
    parts = partition(t, scheme="dirichlet", shards=20, alpha=alpha, seed=5)
    _assert_disjoint_cover(parts, len(t))
    assert min(p.size for p in parts) >= MIN_SHARD_SIZE


def test_dirichlet_small_alpha_is_skewed_and_large_alpha_near_iid() -> None:
    t = load_builtin("digits")
    skewed = _skew(t, partition(t, scheme="dirichlet", shards=10, alpha=0.05, seed=0))
    near_iid = _skew(t, partition(t, scheme="dirichlet", shards=10, alpha=1000.0, seed=0))
    iid = _skew(t, partition(t, scheme="iid", shards=10, seed=0))
    assert skewed > 0.6
    assert near_iid < 0.1
    assert iid < 0.1


def test_dirichlet_is_reproducible_from_seed() -> None:
    t = load_builtin("wine")
    a = partition(t, scheme="dirichlet", shards=5, alpha=0.3, seed=11)
    b = partition(t, scheme="dirichlet", shards=5, alpha=0.3, seed=11)
    c = partition(t, scheme="dirichlet", shards=5, alpha=0.3, seed=12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_min_size_is_reached_where_redrawing_cannot() -> None:
    # 20 shards of 20 rows over 2 classes at alpha 0.001: a draw almost always starves most
    # shards, so the guarantee has to come from rebalancing.
    t = _table([0] * 200 + [1] * 200)
    parts = partition(t, scheme="dirichlet", shards=20, alpha=0.001, seed=0, min_size=20)
    _assert_disjoint_cover(parts, len(t))
    assert [p.size for p in parts] == [20] * 20


def test_rebalance_moves_majority_rows_from_the_largest_shard() -> None:
    y = np.array([0, 0, 0, 1, 1, 0, 1])
    parts = [[0, 1, 2, 3], [4, 5], [6]]
    _rebalance(parts, y, min_size=2)
    assert sorted(sum(parts, [])) == list(range(7))
    assert parts[0] == [0, 1, 3] and parts[2] == [6, 2]


def test_partition_refuses_too_many_shards() -> None:
    with pytest.raises(DataError, match=r"cannot split 150 rows into 20 shards of at least 8.*at most 18"):
        partition(load_builtin("iris"), scheme="iid", shards=20, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "shuffled", "shards": 2}, "unknown partition scheme"),
        ({"scheme": "dirichlet", "shards": 2, "alpha": 0.0}, "alpha must be a positive"),
        ({"scheme": "iid", "shards": 0}, "shards must be a positive"),
    ],
)
def test_partition_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        partition(load_builtin("iris"), seed=0, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_builtin_holdout_is_disjoint_from_every_site_shard(scheme: str) -> None:
    whole = load_builtin("breast-cancer")
    rows = [r.tobytes() for r in whole.X]
    assert len(set(rows)) == len(rows), "rows must be unique for this check to mean anything"
    kw = {"holdout_fraction": 0.2, "seed": 7}
    hold = {r.tobytes() for r in builtin_holdout("breast-cancer", **kw).X}
    shards = [
        {r.tobytes() for r in builtin_site_data(
            "breast-cancer", **kw, scheme=scheme, shards=4, shard=k, alpha=0.3  # type: ignore[arg-type]
        ).X}
        for k in range(4)
    ]
    assert len(hold) == int(np.ceil(0.2 * len(whole)))
    for s in shards:
        assert not s & hold
    assert set().union(*shards) | hold == set(rows)
    assert sum(len(s) for s in shards) + len(hold) == len(rows)


def test_builtin_site_data_shard_out_of_range() -> None:
    with pytest.raises(DataError, match="shard 4 is out of range.*0..3"):
        builtin_site_data("iris", holdout_fraction=0.2, seed=0, scheme="iid", shards=4, shard=4)


# --- files -------------------------------------------------------------------------------------


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": [50, 61, 42, 38],
            "bmi": [22.5, 30.1, 27.0, 19.8],
            "smoker": [True, False, False, True],
            "diagnosis": ["M", "B", "B", "M"],
        }
    )


def test_csv_with_string_target_maps_sorted_labels(tmp_path: Path) -> None:
    path = tmp_path / "site.csv"
    _frame().to_csv(path, index=False)
    t = load_table(path, target="diagnosis")
    assert t.feature_names == ("age", "bmi", "smoker")
    assert t.class_names == ("B", "M")
    assert t.y.tolist() == [1, 0, 0, 1]
    assert t.X.dtype == np.float32
    assert np.allclose(t.X[:, 1], [22.5, 30.1, 27.0, 19.8])
    assert t.X[:, 2].tolist() == [1.0, 0.0, 0.0, 1.0]


def test_declared_classes_fix_the_ids_across_sites(tmp_path: Path) -> None:
    path = tmp_path / "site.csv"
    _frame().assign(diagnosis=["M", "M", "M", "M"]).to_csv(path, index=False)
    t = load_table(path, target="diagnosis", features=["age"], classes=["B", "M"])
    assert t.y.tolist() == [1, 1, 1, 1] and t.feature_names == ("age",)
    with pytest.raises(DataError, match=r"labels not among the declared classes: 'M'"):
        load_table(path, target="diagnosis", classes=["benign", "malignant"])


def test_parquet_with_integer_target_and_feature_subset(tmp_path: Path) -> None:
    path = tmp_path / "site.parquet"
    _frame().assign(label=[2, 0, 1, 2]).to_parquet(path)
    t = load_table(path, target="label", features=["bmi", "age"])
    assert t.feature_names == ("bmi", "age")
    assert t.y.tolist() == [2, 0, 1, 2]
    assert t.X[:, 1].tolist() == [50.0, 61.0, 42.0, 38.0]


def test_explicit_format_overrides_the_suffix(tmp_path: Path) -> None:
    path = tmp_path / "export.data"
    _frame().to_csv(path, index=False)
    assert len(load_table(path, format="csv", target="diagnosis")) == 4
    with pytest.raises(DataError, match=r"suffix '\.data'.*set the format"):
        load_table(path, target="diagnosis")


def test_whole_float_labels_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "site.parquet"
    _frame().assign(label=[1.0, 0.0, 1.0, 0.0]).to_parquet(path)
    assert load_table(path, target="label", features=["age"]).y.tolist() == [1, 0, 1, 0]


@pytest.mark.parametrize(
    ("frame", "kwargs", "message"),
    [
        (_frame(), {"target": "outcome"}, r"column 'outcome' not found in .*site\.csv; columns are: age, bmi, smoker, diagnosis"),
        (_frame(), {"target": "diagnosis", "features": ["age", "weight"]}, r"feature column\(s\) 'weight' not found"),
        (_frame(), {"target": "diagnosis", "features": ["age", "diagnosis"]}, "also listed as a feature"),
        (_frame().assign(city=["a", "b", "c", "d"]), {"target": "diagnosis"}, r"non-numeric feature column\(s\).*'city'"),
        (_frame().assign(bmi=[1.0, None, None, 2.0]), {"target": "diagnosis"}, r"column 'bmi': 2 of 4 rows.*fill or drop"),
        (_frame().assign(diagnosis=["M", None, "B", "B"]), {"target": "diagnosis"}, r"column 'diagnosis': 1 of 4 rows"),
        (_frame().assign(y=[0.5, 1.0, 0.0, 1.0]), {"target": "y", "features": ["age"]}, r"non-integer values \(e\.g\. 0\.5\)"),
        (_frame().assign(y=[-1, 1, 0, 1]), {"target": "y", "features": ["age"]}, "negative labels"),
        (_frame().assign(bmi=[1.0, np.inf, 0.0, 1.0]), {"target": "diagnosis"}, "column 'bmi'.*infinite"),
        (_frame()[["diagnosis"]], {"target": "diagnosis"}, "no feature columns"),
        (_frame().iloc[:0], {"target": "diagnosis"}, "no data rows"),
    ],
)
def test_csv_errors_say_what_is_wrong(
    tmp_path: Path, frame: pd.DataFrame, kwargs: dict[str, object], message: str
) -> None:
    path = tmp_path / "site.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=message):
        load_table(path, **kwargs)  # type: ignore[arg-type]


def test_parquet_non_numeric_feature_is_named(tmp_path: Path) -> None:
    path = tmp_path / "site.parquet"
    _frame().assign(ward=pd.Categorical(["a", "b", "a", "b"])).to_parquet(path)
    with pytest.raises(DataError, match=r"'ward' \(category\)"):
        load_table(path, target="diagnosis")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data file .*nope\.parquet not found"):
        load_table(tmp_path / "nope.parquet", target="y")


def test_unreadable_parquet_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "site.parquet"
    path.write_text("this is not parquet")
    with pytest.raises(DataError, match=r"cannot read .*site\.parquet as parquet"):
        load_table(path, target="y")
