"""Tabular data for local training and holdout evaluation: loading, splitting, partitioning.

Everything here is deterministic given a seed and independent of the process that runs it, so
the aggregator and every site compute the same holdout and the same partitions without talking
to each other. Nothing downloads: builtin datasets are the ones scikit-learn ships in its wheel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn import datasets as _skd
from sklearn.model_selection import train_test_split

__all__ = [
    "BUILTIN_DATASETS",
    "MIN_SHARD_SIZE",
    "DataError",
    "Table",
    "builtin_holdout",
    "builtin_site_data",
    "holdout_split",
    "load_builtin",
    "load_table",
    "partition",
    "train_validation_split",
]

MIN_SHARD_SIZE = 8
"""Default least rows per shard: enough that a site can still split off a validation set."""

# How many fresh Dirichlet draws to try before moving rows between shards to reach the minimum.
_DIRICHLET_ATTEMPTS = 100


class DataError(ValueError):
    """Training data is missing, malformed or cannot be split as asked; the message says how to fix it."""


@dataclass(frozen=True)
class Table:
    """Feature matrix and integer class labels, one row per sample.

    ``X`` is float32 (n, d), ``y`` int64 (n,), ``feature_names`` has d names. ``class_names`` is
    optional: ``class_names[i]`` is the label that id ``i`` stands for, when known (builtin
    datasets, string targets). Integer inputs are converted to these dtypes; anything that would
    lose information (fractional labels) is refused with a DataError.
    """

    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        X = np.ascontiguousarray(self.X, dtype=np.float32)
        y = np.asarray(self.y)
        if X.ndim != 2:
            raise DataError(f"X must be 2-D (rows, features), got shape {X.shape}")
        if y.ndim != 1:
            raise DataError(f"y must be 1-D (rows,), got shape {y.shape}")
        if y.dtype.kind == "b":
            y = y.astype(np.int64)
        elif y.dtype.kind not in "iu":
            raise DataError(f"y must hold integer class labels, got dtype {y.dtype}")
        y = np.ascontiguousarray(y, dtype=np.int64)
        if X.shape[0] != y.shape[0]:
            raise DataError(f"X has {X.shape[0]} rows but y has {y.shape[0]}")
        names = tuple(str(n) for n in self.feature_names)
        if len(names) != X.shape[1]:
            raise DataError(f"{len(names)} feature names for {X.shape[1]} feature columns")
        if not np.isfinite(X).all():
            rows, cols = np.nonzero(~np.isfinite(X))
            raise DataError(
                f"X has {rows.size} NaN or infinite values (first in row {rows[0]}, "
                f"feature {names[cols[0]]!r}); clean the data before training"
            )
        if y.size and y.min() < 0:
            raise DataError(f"labels must be non-negative class ids, found {int(y.min())}")
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "feature_names", names)
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.X.shape[1])

    def take(self, indices: np.ndarray | Sequence[int]) -> Table:
        """The rows at ``indices`` (in that order), as a new table with the same names."""
        idx = np.asarray(indices, dtype=np.int64)
        return Table(self.X[idx], self.y[idx], self.feature_names, self.class_names)


# ---------------------------------------------------------------------------------------------
# Builtin datasets


BUILTIN_DATASETS: Mapping[str, Callable[[], Any]] = MappingProxyType(
    {
        "breast-cancer": _skd.load_breast_cancer,
        "iris": _skd.load_iris,
        "wine": _skd.load_wine,
        "digits": _skd.load_digits,
    }
)
"""Name -> scikit-learn loader. All four ship inside the scikit-learn wheel: no network needed."""


def load_builtin(name: str) -> Table:
    """The whole builtin dataset ``name`` (see ``BUILTIN_DATASETS``)."""
    try:
        loader = BUILTIN_DATASETS[name]
    except KeyError:
        raise DataError(
            f"unknown builtin dataset {name!r}; choose one of: {', '.join(BUILTIN_DATASETS)}"
        ) from None
    bunch = loader()
    feature_names = tuple(str(f) for f in getattr(bunch, "feature_names", ())) or tuple(
        f"x{i}" for i in range(bunch.data.shape[1])
    )
    return Table(
        X=bunch.data,
        y=bunch.target,
        feature_names=feature_names,
        class_names=tuple(str(c) for c in bunch.target_names),
    )


def builtin_site_data(
    name: str,
    *,
    holdout_fraction: float,
    seed: int,
    scheme: Literal["iid", "dirichlet"],
    shards: int,
    shard: int,
    alpha: float = 0.5,
    partition_seed: int | None = None,
    min_size: int | None = None,
) -> Table:
    """Shard ``shard`` (0-based) of ``shards`` of the rows of ``name`` that are not in the holdout.

    ``holdout_fraction`` and ``seed`` must be the ones the aggregator passes to
    ``builtin_holdout``: then no site row is in the holdout. ``partition_seed`` (default ``seed``)
    drives the partition; every site must use the same one so that the shards are disjoint.
    """
    if not 0 <= shard < shards:
        raise DataError(f"shard {shard} is out of range: with {shards} shards use 0..{shards - 1}")
    rest, _ = holdout_split(load_builtin(name), holdout_fraction, seed)
    parts = partition(
        rest,
        scheme=scheme,
        shards=shards,
        alpha=alpha,
        seed=seed if partition_seed is None else partition_seed,
        min_size=min_size,
    )
    return rest.take(parts[shard])


def builtin_holdout(name: str, *, holdout_fraction: float, seed: int) -> Table:
    """The aggregator's evaluation rows of ``name``: disjoint from every ``builtin_site_data`` shard."""
    return holdout_split(load_builtin(name), holdout_fraction, seed)[1]


# ---------------------------------------------------------------------------------------------
# Splits


def _split_indices(y: np.ndarray, fraction: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (rest, split-off) row indices; stratified by label whenever that is possible."""
    if not (isinstance(fraction, (int, float)) and 0.0 <= fraction < 1.0):
        raise DataError(f"{what} fraction must be in [0, 1), got {fraction!r}")
    n = y.shape[0]
    everything = np.arange(n, dtype=np.int64)
    if fraction == 0.0 or n == 0:
        return everything, everything[:0]
    if n < 2:
        raise DataError(f"cannot split a {what} set off {n} row; give at least 2 rows or fraction 0")
    # Same arithmetic as scikit-learn's test_size (ceil), so a reader can check it against sklearn.
    n_split = math.ceil(fraction * n)
    n_rest = n - n_split
    if n_rest < 1:
        raise DataError(
            f"a {what} fraction of {fraction} leaves no rows out of {n}; lower the fraction"
        )
    _, counts = np.unique(y, return_counts=True)
    # Stratification needs every class on both sides of the split at least once.
    stratify = y if counts.min() >= 2 and min(n_split, n_rest) >= counts.size else None
    rest, split = train_test_split(
        everything, test_size=n_split, random_state=seed, shuffle=True, stratify=stratify
    )
    return np.sort(rest), np.sort(split)


def holdout_split(table: Table, fraction: float, seed: int) -> tuple[Table, Table]:
    """``(rest, holdout)`` with ``ceil(fraction * len(table))`` holdout rows, stratified by label.

    Falls back to a plain random split when some class has fewer than 2 rows or there are fewer
    holdout rows than classes. ``fraction`` 0 gives an empty holdout. Rows keep their original
    order within each part; the same ``seed`` gives the same split in every process.
    """
    rest, hold = _split_indices(table.y, fraction, seed, "holdout")
    return table.take(rest), table.take(hold)


def train_validation_split(table: Table, fraction: float, seed: int) -> tuple[Table, Table]:
    """``(train, validation)``: stratified when every class has at least 2 rows, else random.

    ``fraction`` 0 gives an empty validation table (``evaluate`` then reports NaN metrics).
    """
    train, val = _split_indices(table.y, fraction, seed, "validation")
    return table.take(train), table.take(val)


# ---------------------------------------------------------------------------------------------
# Partitions across sites


def partition(
    table: Table,
    *,
    scheme: Literal["iid", "dirichlet"],
    shards: int,
    alpha: float = 0.5,
    seed: int,
    min_size: int | None = None,
) -> list[np.ndarray]:
    """Split the rows of ``table`` into ``shards`` disjoint sorted index arrays that cover every row.

    ``iid``: a random permutation cut into near-equal parts (``alpha`` is ignored).
    ``dirichlet``: label skew as in Hsu et al. 2019, "Measuring the effects of non-identical data
    distribution": for each class, the shares of its rows across shards are drawn from
    Dir(alpha, ..., alpha). Small ``alpha`` (0.1) gives most shards few classes; large ``alpha``
    (100) approaches iid.

    Every shard gets at least ``min_size`` rows (default ``MIN_SHARD_SIZE``). A Dirichlet draw
    that misses this is redrawn up to 100 times; then rows move from the largest shard (its most
    common class) to the smallest, so the result is always deterministic in ``seed``. Raises
    DataError when the rows cannot cover ``shards * min_size``.
    """
    n = len(table)
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise DataError(f"shards must be a positive integer, got {shards!r}")
    if min_size is None:
        min_size = MIN_SHARD_SIZE
    if min_size < 1:
        raise DataError(f"min_size must be at least 1, got {min_size}")
    if n < shards * min_size:
        raise DataError(
            f"cannot split {n} rows into {shards} shards of at least {min_size} rows each; "
            f"use at most {n // min_size} shards, a smaller holdout or more data"
        )
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return [np.sort(p) for p in np.array_split(rng.permutation(n), shards)]
    if scheme != "dirichlet":
        raise DataError(f"unknown partition scheme {scheme!r}; choose 'iid' or 'dirichlet'")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise DataError(f"dirichlet alpha must be a positive number, got {alpha!r}")

    by_class = [np.flatnonzero(table.y == c) for c in np.unique(table.y)]
    parts: list[list[int]] = []
    for _ in range(_DIRICHLET_ATTEMPTS):
        parts = [[] for _ in range(shards)]
        for rows in by_class:
            rows = rng.permutation(rows)
            shares = rng.dirichlet(np.full(shards, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * rows.size).astype(np.int64)
            for k, piece in enumerate(np.split(rows, cuts)):
                parts[k].extend(piece.tolist())
        if min(len(p) for p in parts) >= min_size:
            break
    else:
        _rebalance(parts, table.y, min_size)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _rebalance(parts: list[list[int]], y: np.ndarray, min_size: int) -> None:
    """Move rows from the largest shard to each short one until all reach ``min_size``.

    Taking from the donor's most common class keeps both shards' label skew close to the draw.
    """
    while True:
        sizes = [len(p) for p in parts]
        short = int(np.argmin(sizes))
        if sizes[short] >= min_size:
            return
        donor = int(np.argmax(sizes))
        labels = y[parts[donor]]
        common = int(np.bincount(labels).argmax())
        # Last row of that class in the donor: a fixed choice, so every process moves the same row.
        pos = max(i for i, lab in enumerate(labels) if lab == common)
        parts[short].append(parts[donor].pop(pos))


# ---------------------------------------------------------------------------------------------
# Files


_SUFFIX_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def load_table(
    path: str | Path,
    *,
    format: Literal["csv", "parquet"] | None = None,
    target: str,
    features: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
) -> Table:
    """Read a CSV or Parquet file into a Table; ``format`` None picks it from the suffix.

    ``features`` default to every column except ``target``; they must be numeric or boolean.
    The target becomes class ids as follows:

    - integer (or boolean, or float with only whole values) columns are used as they are: the ids
      must be non-negative and mean the same class at every site;
    - string or categorical columns map to ids by position in ``classes`` when given (a label not
      in it is an error), otherwise by position among the file's sorted unique labels. Give
      ``classes`` whenever sites may not all hold every label: without it, ids depend on which
      labels this file happens to contain.

    Raises DataError naming the file and column for a missing file or column, an unreadable file,
    no rows, missing values, non-numeric features or unusable labels.
    """
    path = Path(path)
    fmt = format or _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"cannot tell the format of {path} from its suffix {path.suffix!r}; "
            "name it .csv or .parquet, or set the format explicitly"
        )
    if fmt not in ("csv", "parquet"):
        raise DataError(f"unknown data format {fmt!r} for {path}; use 'csv' or 'parquet'")
    if not path.is_file():
        raise DataError(f"data file {path} not found; check the data path and that its volume is mounted")
    try:
        frame = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    except Exception as exc:  # pandas and pyarrow raise many unrelated types for a bad file
        raise DataError(f"cannot read {path} as {fmt}: {type(exc).__name__}: {exc}") from None

    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if target not in columns:
        raise DataError(f"column {target!r} not found in {path}; columns are: {', '.join(columns)}")
    if features is None:
        feature_cols = [c for c in columns if c != target]
    else:
        feature_cols = [str(f) for f in features]
        missing = [f for f in feature_cols if f not in columns]
        if missing:
            raise DataError(
                f"feature column(s) {', '.join(map(repr, missing))} not found in {path}; "
                f"columns are: {', '.join(columns)}"
            )
        if target in feature_cols:
            raise DataError(f"the target {target!r} is also listed as a feature; remove it from features")
        if len(set(feature_cols)) != len(feature_cols):
            raise DataError(f"features list a column twice: {feature_cols}")
    if not feature_cols:
        raise DataError(f"{path} has no feature columns besides the target {target!r}")
    if len(frame) == 0:
        raise DataError(f"{path} has no data rows")

    nulls = frame[[*feature_cols, target]].isna().sum()
    nulls = nulls[nulls > 0]
    if len(nulls):
        detail = ", ".join(f"column {c!r}: {int(k)} of {len(frame)} rows" for c, k in nulls.items())
        raise DataError(f"missing values in {path} ({detail}); fill or drop those rows before training")

    non_numeric = [
        c
        for c in feature_cols
        if not (pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]))
    ]
    if non_numeric:
        kinds = ", ".join(f"{c!r} ({frame[c].dtype})" for c in non_numeric)
        raise DataError(
            f"non-numeric feature column(s) in {path}: {kinds}; encode them as numbers "
            "or leave them out of features"
        )
    X = frame[feature_cols].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(X)
    if bad.any():
        col = feature_cols[int(np.nonzero(bad.any(axis=0))[0][0])]
        raise DataError(f"column {col!r} in {path} has infinite values; clip or drop them before training")
    y, class_names = _labels(frame[target], path, target, classes)
    return Table(X=X.astype(np.float32), y=y, feature_names=tuple(feature_cols), class_names=class_names)


def _labels(
    column: pd.Series, path: Path, target: str, classes: Sequence[str] | None
) -> tuple[np.ndarray, tuple[str, ...]]:
    if pd.api.types.is_bool_dtype(column):
        return column.to_numpy(dtype=np.int64), ()
    if pd.api.types.is_numeric_dtype(column):
        values = column.to_numpy()
        if values.dtype.kind == "f":
            whole = np.isfinite(values) & (values == np.round(values))
            if not whole.all():
                example = values[~whole][0]
                raise DataError(
                    f"target {target!r} in {path} has non-integer values (e.g. {example}); fedsec "
                    "trains classifiers, so the target must hold integer class ids or class names"
                )
        ids = values.astype(np.int64)
        if ids.min() < 0:
            raise DataError(
                f"target {target!r} in {path} has negative labels (e.g. {int(ids.min())}); "
                "class ids must be 0, 1, 2, ..."
            )
        if classes is not None and ids.max() >= len(classes):
            raise DataError(
                f"target {target!r} in {path} has label {int(ids.max())} but only "
                f"{len(classes)} classes are declared"
            )
        return ids, tuple(classes or ())
    labels = column.astype(str).to_numpy()
    names = list(classes) if classes is not None else sorted(set(labels.tolist()))
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(labels.tolist()) - set(index))
    if unknown:
        raise DataError(
            f"target {target!r} in {path} has labels not among the declared classes: "
            f"{', '.join(map(repr, unknown[:10]))}; declared: {', '.join(map(repr, names))}"
        )
    return np.fromiter((index[v] for v in labels), dtype=np.int64, count=labels.size), tuple(names)
