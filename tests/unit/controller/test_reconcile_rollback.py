"""One reconcile pass of a finished job whose spec asks for a rollback, against an in-memory API
(no cluster): what the operator records and what it does to the aggregator's config and Deployment."""

from __future__ import annotations

import json
from typing import Any

from fedsec.api.meta import API_VERSION
from fedsec.controller import children as ch
from fedsec.controller.names import JobNames
from fedsec.controller.parse import parse_job
from fedsec.controller.reconcile import JobReconciler

from controller_bodies import JOB_UID, client_body, job_body
from fake_kube import FakeKube

SITES = ["hospital-01", "hospital-02"]
KEPT = [0, 1, 2, 3, 4]


def finished_job(to_round: int) -> tuple[FakeKube, dict[str, Any], JobNames]:
    """A job that succeeded at generation 2 (aggregator scaled to zero), then edited at generation 3 to
    ask for ``spec.rollback.toRound``."""
    ns = "research"
    names = JobNames("breast-cancer", JOB_UID)
    clients = [client_body(name=s, namespace="site-a", uid=f"uid-{s}", shard=i) for i, s in enumerate(SITES)]
    kube = FakeKube(clients)
    before = parse_job(job_body(generation=2))
    files = {ch.AGGREGATOR_CONFIG: ch.aggregator_config(before, JOB_UID, SITES, 2)}
    owner = ch.Owner(API_VERSION, "FederatedJob", "breast-cancer", JOB_UID)
    kube.ensure(ch.config_map(names.aggregator, ns, names.labels("aggregator"), owner, files))
    kube.ensure(ch.aggregator_deployment(names, ns, owner, ch.Settings(), image=ch.Settings().runtime_image, config_digest=ch.config_hash(files), replicas=0))
    body = job_body(generation=3, rollback={"toRound": to_round})
    body["status"] = {
        "phase": "Succeeded", "observedGeneration": 2, "aggregatorStopped": True, "round": 4, "roundsPlanned": 20,
        "modelVersion": 5, "checkpointRounds": KEPT, "lineage": [],
        "plan": {"uid": JOB_UID, "admitted": [f"site-a/{s}" for s in SITES], "refused": {}, "quorum": 2},
    }
    return kube, body, names


def _config(kube: FakeKube, names: JobNames) -> dict[str, Any]:
    cm = kube.get("v1", "ConfigMap", names.aggregator, "research")
    assert cm is not None
    return json.loads(cm["data"][ch.AGGREGATOR_CONFIG])


def _deployment(kube: FakeKube, names: JobNames) -> dict[str, Any]:
    d = kube.get("apps/v1", "Deployment", names.aggregator, "research")
    assert d is not None
    return d


def _rolled_back(kube: FakeKube) -> dict[str, Any]:
    status = kube.statuses[("federatedjobs", "research", "breast-cancer")]
    (c,) = [c for c in status["conditions"] if c["type"] == "RolledBack"]
    return c


def test_a_kept_round_wakes_the_aggregator_with_the_request() -> None:
    kube, body, names = finished_job(2)
    JobReconciler(kube, ch.Settings()).reconcile(body)  # type: ignore[arg-type]
    assert _config(kube, names)["rollback_request"] == "3/2"
    d = _deployment(kube, names)
    assert d["spec"]["replicas"] == 1
    assert d["spec"]["template"]["metadata"]["annotations"][ch.CONFIG_HASH] == ch.config_hash(
        kube.get("v1", "ConfigMap", names.aggregator, "research")["data"])  # type: ignore[index]
    assert kube.statuses[("federatedjobs", "research", "breast-cancer")]["rollbackSeen"] == {"toRound": 2, "generation": 3}
    assert ("Normal", "RollbackRequested", "rolling back to round 2 (spec.rollback.toRound)") in kube.events


def test_a_round_without_checkpoint_is_refused_in_status() -> None:
    # Round 10 is within the 20 planned (a toRound above rounds is refused by the schema) but never kept.
    kube, body, _ = finished_job(10)
    JobReconciler(kube, ch.Settings()).reconcile(body)  # type: ignore[arg-type]
    c = _rolled_back(kube)
    assert (c["status"], c["reason"]) == ("False", "CheckpointNotFound")
    assert "toRound 10 has no checkpoint" in c["message"] and str(KEPT) in c["message"]
    assert "rollbackSeen" not in kube.statuses[("federatedjobs", "research", "breast-cancer")]


def test_a_round_without_checkpoint_leaves_the_aggregator_alone() -> None:
    kube, body, names = finished_job(10)
    before = _config(kube, names)
    JobReconciler(kube, ch.Settings()).reconcile(body)  # type: ignore[arg-type]
    assert _config(kube, names)["rollback_request"] is None, _config(kube, names)["rollback_request"]
    assert _deployment(kube, names)["spec"]["replicas"] == 0
    # nothing rewrote the phase: the job stays Succeeded
    assert kube.statuses[("federatedjobs", "research", "breast-cancer")].get("phase", "Succeeded") == "Succeeded"
    assert before["rollback_request"] is None
