"""The reconciler's pure rules: what other jobs spent at a site, what of a job's body reaches its
aggregator, and which generation names a rollback request."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fedsec.controller import children as ch
from fedsec.controller.parse import parse_job
from fedsec.controller.reconcile import JobReconciler, ledger_spent

from controller_bodies import JOB_UID, job, job_body

SELF = "uid-self"


def fc(ledger: Any) -> dict[str, Any]:
    return {"metadata": {"name": "hospital-01", "namespace": "site-a"}, "status": {"ledger": ledger}}


# -- ledger_spent --------------------------------------------------------------------------------

def test_ledger_spent_counts_other_jobs_and_active_plans() -> None:
    rows = {
        SELF: {"job": "research/me", "epsilon": 1.0, "planned": 3.0, "active": True},  # never itself
        "uid-a": {"job": "research/a", "epsilon": 0.5, "planned": 2.0, "active": True},  # running: its plan
        "uid-b": {"job": "research/b", "epsilon": 1.5, "planned": 2.0, "active": False},  # done: what it spent
        "uid-c": {"job": "research/c", "epsilon": 2.5, "planned": 2.0, "active": True},  # overspent: the larger
        "junk": "not a row",
    }
    assert ledger_spent(fc(rows), excluding=SELF) == pytest.approx(2.0 + 1.5 + 2.5)
    assert ledger_spent(fc(rows), excluding="uid-a") == pytest.approx(3.0 + 1.5 + 2.5)  # "me" counts its plan


def test_ledger_spent_of_a_site_without_rows() -> None:
    assert ledger_spent({"metadata": {"name": "h"}}, excluding=SELF) == 0.0
    assert ledger_spent({"status": None}, excluding=SELF) == 0.0
    assert ledger_spent(fc(None), excluding=SELF) == 0.0
    assert ledger_spent(fc({SELF: {"epsilon": 9.0, "active": False}}), excluding=SELF) == 0.0
    assert ledger_spent(fc({"uid-a": {"active": True}}), excluding=SELF) == 0.0  # nothing planned nor spent yet


def test_ledger_spent_ignores_the_plan_of_a_finished_job() -> None:
    assert ledger_spent(fc({"uid-a": {"epsilon": 0.25, "planned": 2.0, "active": False}}), excluding=SELF) == 0.25
    assert ledger_spent(fc({"uid-a": {"epsilon": 0.25, "planned": 2.0}}), excluding=SELF) == 0.25


# -- parse_job -----------------------------------------------------------------------------------

def test_parse_job_keeps_identity_labels_and_spec() -> None:
    b = job_body(generation=3)
    b["metadata"]["labels"] = {"team": "onco"}
    j = parse_job(b)
    assert (j.metadata.name, j.metadata.namespace, j.metadata.uid, j.metadata.generation) == (
        "breast-cancer", "research", JOB_UID, 3)
    assert j.metadata.labels == {"team": "onco"}
    assert j.spec.rounds == 20 and j.spec.quorum.min_fraction == 0.8


def test_annotations_do_not_reach_the_aggregator_config() -> None:
    plain = job_body()
    annotated = job_body()
    annotated["metadata"].update({
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": json.dumps(plain),
                        "argocd.argoproj.io/tracking-id": "app:fedsec.io/FederatedJob:research/breast-cancer"},
        "resourceVersion": "12345", "creationTimestamp": "2026-01-01T00:00:00Z",
        "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
    })
    a, b = parse_job(plain), parse_job(annotated)
    assert b.metadata.annotations == {}
    assert a == b

    def config(j: Any) -> str:
        return ch.aggregator_config(j, JOB_UID, ["hospital-01", "hospital-02"], 2)

    assert config(a) == config(b)
    assert ch.config_hash({ch.AGGREGATOR_CONFIG: config(a)}) == ch.config_hash({ch.AGGREGATOR_CONFIG: config(b)})
    # while a spec edit does change it (and so restarts the aggregator)
    edited = job_body(rounds=21)
    assert config(parse_job(edited)) != config(a)


# -- _rollback_request ---------------------------------------------------------------------------

def rb_job(generation: int, to_round: int):  # type: ignore[no-untyped-def]
    return job(generation=generation, rollback={"toRound": to_round})


def test_a_new_rollback_request_is_named_by_the_current_generation() -> None:
    assert JobReconciler._rollback_request(rb_job(5, 3), {}) == "5/3"
    assert JobReconciler._rollback_request(rb_job(5, 3), {"rollbackSeen": None}) == "5/3"


def test_later_unrelated_edits_keep_the_requests_generation() -> None:
    """toRound 3 was set at generation 2 (and seen); two unrelated spec edits bump the generation to 4:
    the request keeps its name, so the aggregator does not roll back again."""
    prior = {"rollbackSeen": {"toRound": 3, "generation": 2}}
    assert JobReconciler._rollback_request(rb_job(4, 3), prior) == "2/3"
    assert JobReconciler._rollback_request(rb_job(9, 3), prior) == "2/3"


def test_another_to_round_is_another_request() -> None:
    prior = {"rollbackSeen": {"toRound": 3, "generation": 2}}
    assert JobReconciler._rollback_request(rb_job(6, 1), prior) == "6/1"


def test_the_request_name_reaches_the_aggregator_config() -> None:
    prior = {"rollbackSeen": {"toRound": 3, "generation": 2}}
    configs = {ch.aggregator_config(j, JOB_UID, ["h1", "h2"], 2, rollback_request=JobReconciler._rollback_request(j, prior))
               for j in (rb_job(2, 3), rb_job(4, 3))}
    assert {json.loads(c)["rollback_request"] for c in configs} == {"2/3"}


def test_a_rollback_is_pending_until_seen() -> None:
    r = JobReconciler(kube=None, settings=ch.Settings())  # type: ignore[arg-type]
    assert r._rollback_pending(rb_job(2, 3), {}) is True
    assert r._rollback_pending(rb_job(4, 3), {"rollbackSeen": {"toRound": 3, "generation": 2}}) is False
    assert r._rollback_pending(rb_job(4, 1), {"rollbackSeen": {"toRound": 3, "generation": 2}}) is True
    assert r._rollback_pending(job(generation=4), {}) is False
