"""Cross-object rules of the plan: what no single manifest shows, but the sites together get wrong.

Each case starts from the breast-cancer example (which plans cleanly) and changes one site.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedsec.api import loader
from fedsec.api.client import FederatedClient
from fedsec.api.errors import ManifestError, SitesRefused
from fedsec.api.job import FederatedJob
from fedsec.api.plan import plan_job

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "breast-cancer"


def example() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    job = yaml.safe_load((EXAMPLE / "job.yaml").read_text())
    sites = [yaml.safe_load(p.read_text()) for p in sorted(EXAMPLE.glob("hospital-*.yaml"))]
    return job, sites


def plan(job: dict[str, Any], sites: list[dict[str, Any]]) -> Any:
    return plan_job(FederatedJob.model_validate(job), [FederatedClient.model_validate(s) for s in sites])


def problems(job: dict[str, Any], sites: list[dict[str, Any]]) -> list[str]:
    with pytest.raises(ManifestError) as exc:
        plan(job, sites)
    return [str(e) for e in exc.value.errors]


def test_the_example_plans_all_twelve_sites() -> None:
    job, sites = example()
    p = plan(job, sites)
    assert len(p.admitted) == 12 and p.refused == {} and p.quorum == 10


def test_a_shard_held_by_two_sites_is_refused() -> None:
    job, sites = example()
    sites[4]["spec"]["data"]["builtin"]["partition"]["shard"] = 3  # hospital-05 takes hospital-04's rows
    found = problems(job, sites)
    assert any("FederatedClient/hospital-05" in e and "spec.data.builtin.partition.shard" in e
               and "also held by FederatedClient/hospital-04" in e for e in found), found


@pytest.mark.parametrize(("field", "value"), [("seed", 7), ("shards", 13), ("scheme", "iid"), ("alpha", 5.0)])
def test_shards_of_another_split_overlap_and_are_refused(field: str, value: Any) -> None:
    job, sites = example()
    sites[11]["spec"]["data"]["builtin"]["partition"][field] = value
    found = problems(job, sites)
    assert any("FederatedClient/hospital-12" in e and "shards of different splits overlap" in e for e in found), found


def test_alpha_does_not_split_an_iid_partition() -> None:
    job, sites = example()
    for i, s in enumerate(sites):
        s["spec"]["data"]["builtin"]["partition"] = {"scheme": "iid", "shards": 12, "shard": i, "seed": 42,
                                                     "alpha": 0.5 if i else 9.0}
    assert len(plan(job, sites).admitted) == 12


def test_a_site_holding_the_whole_dataset_beside_shards_is_refused() -> None:
    job, sites = example()
    del sites[0]["spec"]["data"]["builtin"]["partition"]
    found = problems(job, sites)
    assert any("FederatedClient/hospital-01" in e and "holds all of 'breast-cancer'" in e for e in found), found


def test_a_site_of_another_dataset_than_the_holdout_is_refused() -> None:
    job, sites = example()
    sites[2]["spec"]["data"]["builtin"]["name"] = "wine"
    found = problems(job, sites)
    assert any("FederatedClient/hospital-03" in e and "spec.data.builtin.name" in e and "'wine'" in e
               and "holdout" in e for e in found), found


@pytest.mark.parametrize(("field", "value"), [("features", ["mean radius"]), ("target", "diagnosis")])
def test_file_columns_named_for_builtin_sites_are_refused_not_ignored(field: str, value: Any) -> None:
    job, sites = example()
    job["spec"]["task"][field] = value
    found = problems(job, sites)
    assert any(f"spec.task.{field}" in e and "builtin datasets" in e for e in found), found


def test_the_defaults_the_api_server_fills_in_are_not_columns_named_for_builtin_sites() -> None:
    job, sites = example()
    job["spec"]["task"]["target"] = "target"  # what the CRD's default puts into every stored FederatedJob
    assert len(plan(job, sites).admitted) == 12


def test_refusals_alone_raise_sites_refused_and_invalid_manifests_do_not() -> None:
    job, sites = example()
    job["spec"]["quorum"] = {"minClients": 10}
    for s in sites[:3]:  # three sites refuse: 9 of 12 admitted, fewer than the 10 a round needs
        s["spec"]["policy"] = {"requireDp": True}
    with pytest.raises(SitesRefused) as exc:
        plan(job, sites)
    assert "hospital-01" in str(exc.value) and "differential privacy" in str(exc.value)
    bad = copy.deepcopy(job)
    bad["spec"]["quorum"] = {"minClients": 13}  # more than the sites there are: the manifests are wrong
    with pytest.raises(ManifestError) as exc2:
        plan(bad, sites)
    assert not isinstance(exc2.value, SitesRefused)


def test_the_examples_load_and_plan() -> None:
    for d in ("breast-cancer", "breast-cancer-dp", "breast-cancer-dp-budget"):
        m = loader.load([ROOT / "examples" / d])
        p = plan_job(m.jobs[0], m.clients)
        assert p.admitted, d
