"""Manifests: the example is valid, and each kind of wrong is refused naming its field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fedsec.api import loader
from fedsec.api.errors import ManifestError
from fedsec.api.job import QuorumSpec
from fedsec.api.plan import plan_job
from fedsec.cli.main import main
from manifest_cases import DELETE, edit

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "breast-cancer"

JOB: dict[str, Any] = {
    "apiVersion": "fedsec.io/v1alpha1",
    "kind": "FederatedJob",
    "metadata": {"name": "bc"},
    "spec": {
        "model": {"builtin": "logistic-regression", "inputDim": 30},
        "rounds": 3,
        "quorum": {"minFraction": 0.5},
        "clients": {"selector": {"matchLabels": {"study": "bc"}}},
    },
}
CLIENT: dict[str, Any] = {
    "apiVersion": "fedsec.io/v1alpha1",
    "kind": "FederatedClient",
    "metadata": {"name": "site-a", "labels": {"study": "bc"}},
    "spec": {"data": {"builtin": {"name": "breast-cancer", "partition": {"shards": 2, "shard": 0}}}},
}


with_ = edit  # the shared table's one way to change a manifest




def errors_for(tmp_path: Path, *docs: dict[str, Any]) -> list[str]:
    f = tmp_path / "m.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    with pytest.raises(ManifestError) as exc:
        m = loader.load([f])
        for job in m.jobs:
            plan_job(job, m.clients)
    return [str(e) for e in exc.value.errors]


def test_the_example_is_valid() -> None:
    m = loader.load([EXAMPLE])
    plan = plan_job(m.jobs[0], m.clients)
    assert len(plan.admitted) == 12 and plan.quorum == 10


@pytest.mark.parametrize(
    ("doc", "field", "says"),
    [
        (with_(JOB, "apiVersion", "fedsec.io/v2"), "apiVersion", "must be 'fedsec.io/v1alpha1'"),
        (with_(JOB, "kind", "FederatedJab"), "kind", "must be one of FederatedJob"),
        (with_(JOB, "metadata.name", "Bad_Name"), "metadata.name", "DNS-1123"),
        (with_(JOB, "spec.rounds", 0), "spec.rounds", "greater than or equal to 1"),
        (with_(JOB, "spec.rounds", DELETE), "spec.rounds", "required field is missing"),
        (with_(JOB, "spec.quorum", {"minFraction": 1.5}), "spec.quorum.minFraction", "less than or equal to 1"),
        (with_(JOB, "spec.quorum", {"roundTimeoutSeconds": 5}), "spec.quorum", "give minClients, minFraction or both"),
        (with_(JOB, "spec.model.builtin", "transformer"), "spec.model.builtin", "'logistic-regression' or 'mlp'"),
        (with_(JOB, "spec.model.factory", "not a factory"), "spec.model.factory", "package.module:function"),
        (with_(JOB, "spec.task", {"learningRate": -1}), "spec.task.learningRate", "greater than 0"),
        (with_(JOB, "spec.task", {"optimiser": "sgd"}), "spec.task.optimiser", "unknown field 'optimiser'; allowed here: target, features"),
        (with_(JOB, "spec.secureAggregation", {"mode": "magic"}), "spec.secureAggregation.mode", "'secagg', 'he-ckks' or 'none'"),
        (with_(JOB, "spec.secureAggregation", {"threshold": 0.4}), "spec.secureAggregation.threshold", "a fraction must be above 0.5"),
        (with_(JOB, "spec.secureAggregation", {"threshold": 1.5}), "spec.secureAggregation.threshold", "must be a whole number from 2"),
        (with_(JOB, "spec.secureAggregation", {"neighbours": 5}), "spec.secureAggregation.neighbours", "must be even"),
        (with_(JOB, "spec.privacy", {"mechanism": "dp-sgd"}), "spec.privacy", "needs targetEpsilon"),
        (with_(JOB, "spec.clients.selector.matchExpressions", [{"key": "a", "operator": "Near"}]), "spec.clients.selector.matchExpressions[0].operator", "'In', 'NotIn', 'Exists' or 'DoesNotExist'"),
        (with_(CLIENT, "spec.data", {}), "spec.data", "exactly one of 'builtin' or 'file'"),
        (with_(CLIENT, "spec.data.builtin.partition", {"shards": 2, "shard": 2}), "spec.data.builtin.partition", "shard 2 is out of range"),
        (with_(CLIENT, "metadata.labels", {"study": "not valid!"}), "metadata.labels", "not a valid Kubernetes label value"),
    ],
)
def test_invalid_manifest_names_its_field(tmp_path: Path, doc: dict[str, Any], field: str, says: str) -> None:
    errs = errors_for(tmp_path, doc)
    assert any(f": {field}: " in e and says in e for e in errs), errs
    assert all(str(tmp_path / "m.yaml") in e for e in errs)  # every error names its file


@pytest.mark.parametrize(
    ("doc", "field", "says"),
    [
        (with_(JOB, "spec.secureAggregation", {"mode": "he-ckks"}), "spec.secureAggregation.mode", "not implemented in this release"),
        (with_(JOB, "spec.defense", {"rule": "krum"}), "spec.defense.rule", "not implemented in this release"),
        (with_(JOB, "spec.keys", {"source": "pkcs11"}), "spec.keys.source", "not implemented"),
        (with_(JOB, "spec.quorum", {"minClients": 3}), "spec.quorum.minClients", "needs 3 clients but the selector admits only 1"),
        (with_(JOB, "spec.clients.selector", {"matchLabels": {"study": "other"}}), "spec.clients.selector", "selects none"),
        (with_(JOB, "spec.evaluation", {"holdout": {"builtin": {"name": "breast-cancer", "seed": 7}}}), "spec.data.builtin", "could overlap the holdout"),
    ],
)
def test_plan_refuses_what_cannot_run(tmp_path: Path, doc: dict[str, Any], field: str, says: str) -> None:
    errs = errors_for(tmp_path, doc, CLIENT)
    assert any(f": {field}: " in e and says in e for e in errs), errs


def test_secagg_threshold_and_quorum_are_checked_together(tmp_path: Path) -> None:
    sites = [with_(with_(CLIENT, "metadata.name", f"site-{i}"), "spec.data.builtin.partition", {"shards": 5, "shard": i})
             for i in range(5)]
    job = with_(JOB, "spec.quorum", {"minClients": 3})
    above = with_(job, "spec.secureAggregation", {"threshold": 4})
    errs = errors_for(tmp_path, above, *sites)
    # Refused by the job alone (the API server's rule too), before any site is looked at.
    assert any("spec.secureAggregation: threshold 4 as a count must not exceed quorum.minClients (3)" in e
               for e in errs), errs
    by_fraction = with_(with_(JOB, "spec.quorum", {"minFraction": 0.6}), "spec.secureAggregation", {"threshold": 4})
    errs = errors_for(tmp_path, by_fraction, *sites)
    assert any("spec.secureAggregation.threshold: 4 is above the quorum of 3" in e for e in errs), errs
    lonely = with_(JOB, "spec.quorum", {"minClients": 1})
    errs = errors_for(tmp_path, lonely, CLIENT)
    assert any("spec.quorum: secure aggregation needs at least 2 clients" in e for e in errs), errs
    ok = loader.load([_write(tmp_path / "ok.yaml", job, *sites)])
    assert plan_job(ok.jobs[0], ok.clients).quorum == 3


def _write(path: Path, *docs: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(docs))
    return path


def test_yaml_syntax_and_duplicates(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("kind: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        loader.load([bad])
    errs = errors_for(tmp_path, JOB, JOB)
    assert any("defined twice" in e for e in errs)


def test_quorum_count_is_the_stricter_bound() -> None:
    assert QuorumSpec(min_fraction=0.8).required(12) == 10
    assert QuorumSpec(min_fraction=0.8, min_clients=11).required(12) == 11
    assert QuorumSpec(min_fraction=0.5).required(4) == 2
    assert QuorumSpec(min_clients=1).required(0) == 1


def test_validate_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(EXAMPLE)]) == 0
    assert "13 manifest(s) valid" in capsys.readouterr().out
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(with_(JOB, "spec.rounds", -3)))
    assert main(["validate", str(f)]) == 2
    assert "spec.rounds" in capsys.readouterr().err
