"""Federated feature standardisation on real processes: the example's statistics against the exact
pooled ones (secure aggregation and plaintext), and a site whose column is in other units failing the
job by name instead of standardising with wrong numbers."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fedsec.api.loader import load
from fedsec.runtime.checkpoints import CheckpointStore
from fedsec.runtime.datasets import load_holdout, load_site_data
from fedsec.runtime.exitcodes import JOB_FAILED
from fedsec.training import data as tdata
from fedsec.training import models as tmodels
from fedsec.training.local import evaluate, feature_stats
from fedsec_runs import fedsec, summary_of

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "breast-cancer"
PRECISION = 1e-6  # docs/secure-aggregation.md: of each feature's standard deviation, mean and std alike

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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


@pytest.mark.parametrize("mode", ["secagg", "none"])
def test_the_example_standardises_with_the_exact_pooled_statistics(mode: str, tmp_path: Path) -> None:
    example = tmp_path / "example"
    shutil.copytree(EXAMPLE, example)
    job = yaml.safe_load((example / "job.yaml").read_text())
    job["spec"]["secureAggregation"] = {"mode": mode, **({"threshold": 0.67} if mode == "secagg" else {})}
    (example / "job.yaml").write_text(yaml.safe_dump(job))
    run_dir = tmp_path / "run"
    proc = fedsec("run", str(example), "--run-dir", str(run_dir), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary_of(proc)["status"] == "Succeeded"

    exact = feature_stats(pooled_training_rows(example))
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
    m = load([example])
    spec = m.jobs[0].spec.model
    model = tmodels.build_model(spec.kind, input_dim=spec.input_dim, num_classes=spec.num_classes, seed=spec.seed)
    tmodels.load_numpy_state(model, cps["initial"].load_model())
    tmodels.set_standardization(model, exact["mean"], exact["std"])
    holdout = load_holdout(m.jobs[0])
    assert holdout is not None
    exact_auc = evaluate(model, holdout)["auc"]
    assert abs(cps["stats"].meta["metrics"]["auc"] - exact_auc) < 1e-3
    assert exact_auc > 0.6  # 0.69 for the example: 0.30 with the clipped statistics


def test_a_site_with_a_column_in_other_units_fails_the_job_naming_it(tmp_path: Path) -> None:
    table = tdata.load_builtin("breast-cancer")
    shards = tdata.partition(table, scheme="iid", shards=4, seed=0)
    names = list(table.feature_names)
    docs: list[dict[str, Any]] = [{
        "apiVersion": "fedsec.io/v1alpha1", "kind": "FederatedJob", "metadata": {"name": "units"},
        "spec": {
            "model": {"builtin": "logistic-regression", "inputDim": 30},
            "task": {"localEpochs": 1, "batchSize": 16, "learningRate": 0.1},
            "rounds": 2,
            "clients": {"selector": {"matchLabels": {"study": "units"}}},
            "quorum": {"minClients": 4, "roundTimeoutSeconds": 20, "joinTimeoutSeconds": 120, "maxRetries": 1},
        },
    }]
    for i, rows in enumerate(shards):
        part = table.take(rows)
        X = part.X.astype(np.float64)
        if i == 2:
            X[:, names.index("mean area")] *= 1e6  # this hospital exports square micrometres
        csv = tmp_path / f"site-{i}.csv"
        header = ",".join([*names, "target"])
        np.savetxt(csv, np.column_stack([X, part.y]), delimiter=",", header=header, comments="", fmt="%.10g")
        docs.append({
            "apiVersion": "fedsec.io/v1alpha1", "kind": "FederatedClient",
            "metadata": {"name": f"site-{i}", "labels": {"study": "units"}},
            "spec": {"data": {"file": {"path": str(csv)}}},
        })
    (tmp_path / "manifests.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    proc = fedsec("run", str(tmp_path / "manifests.yaml"), "--run-dir", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == JOB_FAILED, proc.stderr[-3000:]
    s = summary_of(proc)
    assert s["status"] == "Failed"
    # The job names no features and has no holdout: the aggregator gives the column, the site the name.
    column = names.index("mean area")
    assert f"feature statistics clipped for 1 feature(s): input column {column} (1 site(s))" in s["reason"], s["reason"]
    assert "task.featureRanges" in s["reason"]
    assert "this site's 'mean area' lie more than 16" in (tmp_path / "run" / "logs" / "site-2.log").read_text()
    assert "'mean area'" not in (tmp_path / "run" / "logs" / "site-1.log").read_text()
    assert s["rounds_completed"] == 0 and not [h for h in s["history"] if h["kind"] in ("stats", "train")]
    assert "Traceback" not in proc.stderr
