"""Preflight: what a client would refuse at run time is found before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fedsec.api.client import FederatedClient
from fedsec.api.job import FederatedJob
from fedsec.api.plan import plan_job
from fedsec.runtime import preflight
from fedsec.runtime.datasets import load_site_data
from fedsec.training.data import train_validation_split

ROOT = Path(__file__).resolve().parents[3]


def load(example: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    d = ROOT / "examples" / example
    return (yaml.safe_load((d / "job.yaml").read_text()),
            [yaml.safe_load(p.read_text()) for p in sorted(d.glob("hospital-*.yaml"))])


def check(job: dict[str, Any], sites: list[dict[str, Any]]) -> preflight.Preflight:
    return preflight.check(plan_job(FederatedJob.model_validate(job), [FederatedClient.model_validate(s) for s in sites]))


def test_the_example_passes_and_reports_each_sites_rows() -> None:
    found = check(*load("breast-cancer"))
    assert found.errors == [] and found.warnings == []
    assert sorted(found.sites) == [f"hospital-{i:02d}" for i in range(1, 13)]
    # 455 non-holdout rows of 569 over 12 shards, less each site's 20% validation rows
    assert 300 < sum(s.rows for s in found.sites.values()) < 400
    assert all(s.schedule is None for s in found.sites.values())


def test_an_input_dim_the_data_does_not_have_is_one_error_per_cause() -> None:
    job, sites = load("breast-cancer")
    job["spec"]["model"]["inputDim"] = 31
    found = check(job, sites)
    site_errors = [str(e) for e in found.errors if "FederatedClient/" in str(e)]
    assert len(site_errors) == 1, site_errors  # the same mismatch at 12 sites is said once, naming them all
    assert "30 feature columns but spec.model.inputDim is 31" in site_errors[0] and "hospital-12" in site_errors[0]
    assert any("spec.evaluation.holdout" in str(e) for e in found.errors)


def test_too_few_classes_for_the_labels_is_found() -> None:
    job, sites = load("breast-cancer")
    for s in sites:
        s["spec"]["data"]["builtin"]["name"] = "iris"  # 3 classes, 4 features
    job["spec"]["evaluation"]["holdout"]["builtin"]["name"] = "iris"
    job["spec"]["model"]["inputDim"] = 4
    found = check(job, sites)
    assert any("numClasses is 2" in str(e) for e in found.errors), [str(e) for e in found.errors]


@pytest.mark.slow  # calibrates DP-SGD for 12 sites (Opacus search), ~5-10 s
def test_a_private_job_reports_each_sites_schedule_as_the_site_will_compute_it() -> None:
    job, sites = load("breast-cancer-dp")
    found = check(job, sites)
    assert found.errors == []
    target = job["spec"]["privacy"]["targetEpsilon"]
    for name, facts in found.sites.items():
        s = facts.schedule
        assert s is not None, name
        assert s.planned_rounds == job["spec"]["rounds"]
        assert target * 0.99 <= s.planned_epsilon() <= target, name


def test_training_rows_are_the_clients_own_split() -> None:
    job, sites = load("breast-cancer")
    found = check(job, sites)
    fj = FederatedJob.model_validate(job)
    table = load_site_data(fj, FederatedClient.model_validate(sites[0]))
    train, val = train_validation_split(table, fj.spec.task.validation_fraction, seed=fj.spec.model.seed)
    assert found.sites["hospital-01"].rows == len(train) and found.sites["hospital-01"].validation_rows == len(val)


def test_a_missing_local_file_is_a_warning_for_validate(tmp_path: Path) -> None:
    job, sites = load("breast-cancer")
    sites[0]["spec"]["data"] = {"file": {"path": str(tmp_path / "nowhere.csv")}}
    found = check(job, sites)
    assert [w.obj for w in found.warnings] == ["FederatedClient/hospital-01"]
    assert "not a file on this machine" in found.warnings[0].message
    assert "hospital-01" not in found.sites


def test_a_file_site_is_read_as_the_client_reads_it(tmp_path: Path) -> None:
    job, sites = load("breast-cancer")
    csv = tmp_path / "site.csv"
    csv.write_text("a,b,target\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(40)))
    sites[0]["spec"]["data"] = {"file": {"path": str(csv)}}
    found = check(job, sites)
    assert any("FederatedClient/hospital-01" in str(e) and "2 feature columns but spec.model.inputDim is 30" in str(e)
               for e in found.errors), [str(e) for e in found.errors]


def test_a_site_above_the_weight_bound_is_refused_not_silently_capped() -> None:
    job, sites = load("breast-cancer")
    job["spec"]["secureAggregation"]["weightBound"] = 20  # hospitals train on ~8-80 rows
    found = check(job, sites)
    capped = [str(e) for e in found.errors if "spec.secureAggregation.weightBound" in str(e)]
    assert capped and all("above the weight bound 20" in e for e in capped), [str(e) for e in found.errors]
    big = max(found.sites.values(), key=lambda f: f.rows).rows
    assert any(f"at least {big}" in e for e in capped)
    job["spec"]["secureAggregation"]["weightBound"] = big
    assert check(job, sites).errors == []
