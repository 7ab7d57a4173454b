"""The standardisation a finished run used, against the exact pooled statistics of its sites.

Applied by test_example_run.py to its runs of the example (secure aggregation and plaintext): two
more runs of twelve sites only for this would repeat them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedsec.api.loader import load
from fedsec.runtime.checkpoints import CheckpointStore
from fedsec.runtime.datasets import load_holdout, load_site_data
from fedsec.training import data as tdata
from fedsec.training import models as tmodels
from fedsec.training.local import evaluate, feature_stats

PRECISION = 1e-6  # docs/secure-aggregation.md: of each feature's standard deviation, mean and std alike


def pooled_training_rows(manifests: Path) -> tdata.Table:
    """What the sites would get by pooling their training rows: each site's data, split as its
    client splits it (same functions), concatenated."""
    m = load([manifests])
    job = m.jobs[0]
    parts = [tdata.train_validation_split(load_site_data(job, c), job.spec.task.validation_fraction,
                                          seed=job.spec.model.seed)[0] for c in m.clients]
    return tdata.Table(np.concatenate([p.X for p in parts]), np.concatenate([p.y for p in parts]),
                       parts[0].feature_names)


def checkpoints(run_dir: Path) -> dict[str, Any]:
    store = CheckpointStore(run_dir)
    return {store.get(v).meta["kind"]: store.get(v) for v in store.versions()
            if store.get(v).meta["kind"] in ("initial", "stats")}


def check_standardization(run_dir: Path, manifests: Path) -> None:
    """The standardisation a finished run of ``manifests`` used is the exact pooled one, and round 0's
    holdout AUC is what the exact statistics give."""
    exact = feature_stats(pooled_training_rows(manifests))
    cps = checkpoints(run_dir)
    used = cps["stats"].meta["standardization"]
    mean, std = np.array(used["mean"]), np.array(used["std"])
    assert (np.abs(mean - exact["mean"]) <= PRECISION * exact["std"]).all(), np.abs(mean - exact["mean"]) / exact["std"]
    assert (np.abs(std - exact["std"]) <= PRECISION * exact["std"]).all(), np.abs(std - exact["std"]) / exact["std"]
    assert std[23] > 500  # "worst area": 168 when the single round clipped its mean square at 2^20
    # ... and the model's input_norm layer holds exactly those numbers (as float32)
    tensors = cps["stats"].load_model()
    assert np.array_equal(tensors["input_norm.mean"], mean.astype(np.float32))
    assert np.array_equal(tensors["input_norm.std"], std.astype(np.float32))

    # Round 0's holdout AUC is what the exact statistics give the same initial weights.
    m = load([manifests])
    spec = m.jobs[0].spec.model
    model = tmodels.build_model(spec.kind, input_dim=spec.input_dim, num_classes=spec.num_classes, seed=spec.seed)
    tmodels.load_numpy_state(model, cps["initial"].load_model())
    tmodels.set_standardization(model, exact["mean"], exact["std"])
    holdout = load_holdout(m.jobs[0])
    assert holdout is not None
    exact_auc = evaluate(model, holdout)["auc"]
    assert abs(cps["stats"].meta["metrics"]["auc"] - exact_auc) < 1e-3
    assert exact_auc > 0.6  # 0.69 for the example: 0.30 with the clipped statistics
