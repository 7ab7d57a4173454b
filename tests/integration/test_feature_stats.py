"""Federated feature standardisation on real processes: a site whose column is in other units fails
the job by name instead of standardising with wrong numbers. (The example's statistics against the
exact pooled ones are checked on test_example_run.py's runs: standardization_check.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fedsec.runtime.exitcodes import JOB_FAILED
from fedsec.training import data as tdata
from fedsec_runs import fedsec, summary_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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
