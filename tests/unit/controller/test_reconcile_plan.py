"""A job's plan under the operator, in one reconcile pass against an in-memory API (no cluster; the
real API server runs these rules in tests/e2e/operator): sites that do not accept the operator's
aggregator image are refused, and the aggregator runs from the image its sites admitted."""

from __future__ import annotations

from typing import Any

from fedsec.controller import children as ch
from fedsec.controller.names import JobNames
from fedsec.controller.reconcile import JobReconciler

from controller_bodies import JOB_UID, client_body, job_body
from fake_kube import FakeKube

NS = "research"
OURS = "registry.hospital.example/fedsec-runtime:1.0"
UPGRADED = "registry.hospital.example/fedsec-runtime:1.1"


def sites() -> list[dict[str, Any]]:
    allow_ours = {"allowedAggregatorImages": ["registry.hospital.example/fedsec-runtime:1.0"]}
    allow_any_tag = {"allowedAggregatorImages": ["registry.hospital.example/fedsec-runtime:*"]}
    allow_other = {"allowedAggregatorImages": ["ghcr.io/someone-else/*"]}
    return [client_body(name=n, namespace=f"site-{n}", uid=f"uid-{n}", policy=p, shard=i)
            for i, (n, p) in enumerate([("h1", allow_ours), ("h2", allow_any_tag), ("h3", {}), ("h4", allow_other)])]


def running_pod(site: str) -> dict[str, Any]:
    labels = JobNames("breast-cancer", JOB_UID).labels(ch.ROLE_CLIENT, site)
    return {"metadata": {"name": f"{site}-pod", "namespace": f"site-{site}", "labels": labels},
            "status": {"phase": "Running"}}


def status(kube: FakeKube) -> dict[str, Any]:
    return kube.statuses[("federatedjobs", NS, "breast-cancer")]


def test_a_site_that_does_not_accept_the_aggregator_image_is_refused_and_the_image_is_recorded() -> None:
    kube = FakeKube(sites())
    JobReconciler(kube, ch.Settings(runtime_image=OURS)).reconcile(job_body())  # type: ignore[arg-type]
    plan = status(kube)["plan"]
    assert plan["admitted"] == ["site-h1/h1", "site-h2/h2", "site-h3/h3"]
    assert set(plan["refused"]) == {"h4"}
    assert "allowedAggregatorImages" in plan["refused"]["h4"] and OURS in plan["refused"]["h4"]
    assert plan["aggregatorImage"] == OURS
    assert any(reason == "Planned" and "h4 refused" in msg for _, reason, msg in kube.events), kube.events


def test_the_aggregator_runs_from_the_image_its_sites_admitted_even_after_an_operator_upgrade() -> None:
    kube = FakeKube(sites())
    body = job_body()
    JobReconciler(kube, ch.Settings(runtime_image=OURS)).reconcile(body)  # type: ignore[arg-type]
    names = JobNames("breast-cancer", JOB_UID)
    assert kube.get("apps/v1", "Deployment", names.aggregator, NS) is None  # no client ready: no aggregator yet

    # The operator is upgraded to another runtime image before the quorum is ready; h1 accepts
    # only the old one. The recorded plan stands: the aggregator is created from the old image.
    kube.pods = [running_pod(s) for s in ("h1", "h2", "h3")]
    body["status"] = status(kube)
    JobReconciler(kube, ch.Settings(runtime_image=UPGRADED)).reconcile(body)  # type: ignore[arg-type]
    d = kube.get("apps/v1", "Deployment", names.aggregator, NS)
    assert d is not None, kube.events
    assert d["spec"]["template"]["spec"]["containers"][0]["image"] == OURS
    assert status(kube)["plan"]["aggregatorImage"] == OURS


FACTORY = "hospital_models.cardio:build"


def factory_sites() -> list[dict[str, Any]]:
    lists_it = {"allowedModelFactories": [FACTORY]}
    return [client_body(name=n, namespace=f"site-{n}", uid=f"uid-{n}", policy=p, shard=i)
            for i, (n, p) in enumerate([("h1", lists_it), ("h2", lists_it), ("h3", lists_it), ("h4", {})])]


def test_a_site_that_does_not_list_the_jobs_model_factory_is_refused_in_both_statuses() -> None:
    kube = FakeKube(factory_sites())
    body = job_body(model={"factory": FACTORY, "inputDim": 30, "params": {"width": 8}})
    JobReconciler(kube, ch.Settings(runtime_image=OURS)).reconcile(body)  # type: ignore[arg-type]
    plan = status(kube)["plan"]
    assert plan["admitted"] == ["site-h1/h1", "site-h2/h2", "site-h3/h3"]
    why = plan["refused"]["h4"]
    assert repr(FACTORY) in why and "policy.allowedModelFactories" in why, why
    site_row = kube.statuses[("federatedclients", "site-h4", "h4")]["jobs"][f"{NS}/breast-cancer"]
    assert site_row["state"] == "Refused" and site_row["reason"] == why
    names = JobNames("breast-cancer", JOB_UID)
    assert kube.get("batch/v1", "Job", names.site("h4"), "site-h4") is None
    assert kube.get("networking.k8s.io/v1", "NetworkPolicy", names.site("h4"), "site-h4") is None


def test_every_admitted_site_gets_its_client_network_policy_before_its_client_job() -> None:
    kube = FakeKube(sites())
    JobReconciler(kube, ch.Settings(runtime_image=OURS)).reconcile(job_body())  # type: ignore[arg-type]
    names = JobNames("breast-cancer", JOB_UID)
    order = list(kube.objects)
    for s in ("h1", "h2", "h3"):
        key = ("NetworkPolicy", f"site-{s}", names.site(s))
        assert key in kube.objects, f"no client NetworkPolicy at {s}"
        assert kube.objects[key]["metadata"]["ownerReferences"][0]["uid"] == f"uid-{s}"
        assert order.index(key) < order.index(("Job", f"site-{s}", names.site(s)))
    assert ("NetworkPolicy", "site-h4", names.site("h4")) not in kube.objects  # refused: nothing made there
