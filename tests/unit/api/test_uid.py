"""metadata.uid names files in local runs (ledger entries, cached updates): only a safe one is accepted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fedsec.api import loader
from fedsec.api.errors import ManifestError
from fedsec.runtime import local

JOB: dict[str, Any] = {
    "apiVersion": "fedsec.io/v1alpha1",
    "kind": "FederatedJob",
    "metadata": {"name": "bc"},
    "spec": {
        "model": {"builtin": "logistic-regression", "inputDim": 30},
        "rounds": 1,
        "clients": {"selector": {"matchLabels": {"study": "bc"}}},
        "quorum": {"minClients": 1},
    },
}
CLIENT: dict[str, Any] = {
    "apiVersion": "fedsec.io/v1alpha1",
    "kind": "FederatedClient",
    "metadata": {"name": "site-a", "labels": {"study": "bc"}},
    "spec": {"data": {"builtin": {"name": "breast-cancer"}}},
}


def job_with_uid(uid: str) -> dict[str, Any]:
    return {**JOB, "metadata": {"name": "bc", "uid": uid}}


@pytest.mark.parametrize("uid", ["6f1c2a9e-3b4d-4c5e-8f70-112233445566", "job-1", "a.b_c-D", "x" * 128])
def test_a_kubernetes_or_plain_uid_is_accepted(uid: str) -> None:
    job, errors = loader.parse_document(job_with_uid(uid))
    assert errors == [] and job.metadata.uid == uid


@pytest.mark.parametrize(
    "uid", ["../../x", "a/b", "..", ".hidden", "", "x" * 129, "job 1", "job\x00", "C:\\evil", "é"],
)
def test_an_unsafe_uid_is_refused_naming_metadata_uid(uid: str) -> None:
    _, errors = loader.parse_document(job_with_uid(uid), source="job.yaml")
    assert [e.path for e in errors] == ["metadata.uid"], errors
    assert "must be a Kubernetes uid (a UUID) or 1-128 letters" in errors[0].message


def test_a_run_with_a_traversing_uid_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    manifests = tmp_path / "deep" / "er" / "manifests"
    manifests.mkdir(parents=True)
    (manifests / "m.yaml").write_text(yaml.safe_dump_all([job_with_uid("../../x"), CLIENT]))
    with pytest.raises(ManifestError) as exc:
        local.prepare(manifests, tmp_path / "deep" / "er" / "run", None, [], tmp_path / "deep" / "er" / "ledger")
    assert "metadata.uid" in str(exc.value)
    assert sorted(p.name for p in (tmp_path / "deep" / "er").iterdir()) == ["manifests"]
