"""From data specs to tables: a site's training data and the aggregator's holdout."""

from __future__ import annotations

from fedsec.api.client import FederatedClient
from fedsec.api.data import DataSource
from fedsec.api.job import FederatedJob
import dataclasses

import numpy as np

from fedsec.training import data as tdata


def _load(source: DataSource, job: FederatedJob, *, holdout: bool) -> tdata.Table:
    task = job.spec.task
    if source.file is not None:
        return tdata.load_table(source.file.path, format=source.file.format, target=task.target, features=task.features)
    b = source.builtin
    assert b is not None  # the model guarantees exactly one source
    if holdout:
        return tdata.builtin_holdout(b.name, holdout_fraction=b.holdout_fraction, seed=b.seed)
    p = b.partition
    if p is None:  # the whole dataset minus the holdout rows
        full = tdata.load_builtin(b.name)
        return tdata.holdout_split(full, b.holdout_fraction, b.seed)[0] if b.holdout_fraction else full
    return tdata.builtin_site_data(
        b.name, holdout_fraction=b.holdout_fraction, seed=b.seed, scheme=p.scheme, shards=p.shards,
        shard=p.shard, alpha=p.alpha,
    )


def check_fits_model(table: tdata.Table, job: FederatedJob, where: str) -> None:
    m = job.spec.model
    if table.X.shape[1] != m.input_dim:
        raise tdata.DataError(
            f"{where} has {table.X.shape[1]} feature columns but spec.model.inputDim is {m.input_dim}; "
            "make them agree (or list spec.task.features)"
        )
    if len(table.y) and int(table.y.max()) >= m.num_classes:
        raise tdata.DataError(
            f"{where} has label {int(table.y.max())} but spec.model.numClasses is {m.num_classes} "
            f"(labels must be 0..{m.num_classes - 1})"
        )


def scale_to_ranges(table: tdata.Table, job: FederatedJob) -> tdata.Table:
    """``task.featureRanges``: each feature mapped from its public [low, high] to [-1, 1] (values
    outside the range land outside [-1, 1]; nothing is clipped). A fixed, data-independent scaling,
    so it costs no privacy, unlike feature statistics computed from the sites' rows."""
    ranges = job.spec.task.feature_ranges
    if ranges is None:
        return table
    r = np.asarray(ranges, dtype=np.float64)
    center, half = (r[:, 0] + r[:, 1]) / 2, (r[:, 1] - r[:, 0]) / 2
    return dataclasses.replace(table, X=((table.X - center) / half).astype(np.float32))


def load_site_data(job: FederatedJob, site: FederatedClient) -> tdata.Table:
    table = _load(site.spec.data, job, holdout=False)
    check_fits_model(table, job, f"the data of site {site.metadata.name}")
    return scale_to_ranges(table, job)


def site_split(job: FederatedJob, site: FederatedClient) -> tuple[tdata.Table, tdata.Table]:
    """A site's (training, validation) rows: what its client trains on and what DP-SGD samples from."""
    table = load_site_data(job, site)
    return tdata.train_validation_split(table, job.spec.task.validation_fraction, seed=job.spec.model.seed)


def load_holdout(job: FederatedJob) -> tdata.Table | None:
    h = job.spec.evaluation.holdout
    if h is None:
        return None
    table = _load(h, job, holdout=True)
    check_fits_model(table, job, "the holdout")
    return scale_to_ranges(table, job)
