"""Policy and budget: a job that does not meet a site's terms is refused there, with the reason."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fedsec.api.errors import ManifestError
from fedsec.api.job import FederatedJob
from fedsec.api.plan import plan_job
from fedsec.privacy.admission import refusal

from privacy_manifests import job, site

NO_DP = {"mechanism": "none"}


@pytest.mark.parametrize(
    ("j", "s", "spent", "says"),
    [
        (job(NO_DP), site("h", policy={"requireDp": True}), 0.0, "requires differential privacy"),
        (job(), site("h", policy={"maxEpsilonPerJob": 1.0}), 0.0, "caps epsilon per job at 1"),
        (job(NO_DP), site("h", policy={"maxEpsilonPerJob": 1.0}), 0.0, "no differential privacy"),
        (job(), site("h", budget=0.5), 0.0, "budget of 0.5 has only 0.5 left"),
        (job(), site("h", budget=3.0), 2.0, "has only 1 left (2 spent by other jobs)"),
        (job(NO_DP), site("h", budget=3.0), 0.0, "has no differential privacy"),
        (job(sa={"mode": "secagg", "threshold": 0.6}), site("h", policy={"minSecureAggregationThreshold": 0.75}), 0.0,
         "threshold of at least 0.75"),
        (job(sa={"mode": "none"}, privacy={"mechanism": "dp-sgd", "targetEpsilon": 1.0}),
         site("h", policy={"minSecureAggregationThreshold": 0.6}), 0.0, "uses no secure aggregation"),
        (job(sa={"mode": "none"}), site("h", policy={"requiredModes": ["secagg"]}), 0.0, "requires secureAggregation.mode"),
        (job(), site("h", policy={"acceptNamespaces": ["research"]}), 0.0, "namespaces ['research'] only"),
        (job(), site("h", policy={"acceptJobs": {"matchLabels": {"team": "cardio"}}}), 0.0, "acceptJobs"),
    ],
)
def test_refusals_say_why(j, s, spent: float, says: str) -> None:
    reason = refusal(j, s, spent_elsewhere=spent, quorum=2, sites=4)
    assert reason is not None and says in reason, reason


def test_terms_that_hold_admit() -> None:
    s = site("h", budget=4.0, policy={"requireDp": True, "maxEpsilonPerJob": 2.0, "minSecureAggregationThreshold": 0.6,
                                      "requiredModes": ["secagg"], "acceptJobs": {"matchLabels": {"team": "onco"}}})
    assert refusal(job(), s, spent_elsewhere=2.8, quorum=2, sites=4) is None
    assert refusal(job(NO_DP), site("h"), spent_elsewhere=0.0, quorum=2, sites=4) is None


def test_plan_leaves_refused_sites_out_and_counts_quorum_over_the_rest() -> None:
    sites = [site(f"h{i}", budget=4.0, shard=i) for i in range(3)] + [site("h3", budget=0.5, shard=3)]
    plan = plan_job(job(quorum={"minFraction": 0.6}), sites)
    assert plan.site_names == ("h0", "h1", "h2")
    assert "budget of 0.5" in plan.refused["h3"]
    assert plan.quorum == 2  # ceil(0.6 * 3)
    plan = plan_job(job(quorum={"minFraction": 0.6}), sites, spent={"h0": 3.5})
    assert set(plan.refused) == {"h0", "h3"}


def test_plan_fails_with_the_reasons_when_too_few_remain() -> None:
    sites = [site("h0", budget=0.5), site("h1", budget=4.0, shard=1), site("h2", budget=0.1, shard=2)]
    with pytest.raises(ManifestError) as err:
        plan_job(job(quorum={"minClients": 2}), sites)
    text = str(err.value)
    assert "only 1" in text and "h0: the job plans to spend epsilon 1.2" in text and "h2:" in text


def test_private_jobs_may_not_release_feature_statistics() -> None:
    with pytest.raises(ManifestError, match="standardize"):
        plan_job(job(standardize=True), [site("h0"), site("h1", shard=1)])
    with pytest.raises(ManifestError, match="featureRanges"):
        plan_job(job(featureRanges=[[0, 1]] * 3), [site("h0"), site("h1", shard=1)])
    with pytest.raises(ManifestError, match="secureAggregation.mode: secagg"):
        plan_job(job({"mechanism": "distributed-gaussian", "targetEpsilon": 2.0}, sa={"mode": "none"}),
                 [site("h0"), site("h1", shard=1)])


RUNTIME = "ghcr.io/fedsec/fedsec-runtime:0.1.0"


@pytest.mark.parametrize(
    ("allowed", "admitted"),
    [
        ([RUNTIME], True),
        (["ghcr.io/fedsec/fedsec-runtime:*"], True),
        (["registry.hospital.example/*", "ghcr.io/fedsec/*"], True),
        (["ghcr.io/fedsec/fedsec-runtime:0.1"], False),  # a prefix is not a match
        (["fedsec-runtime:0.1.0"], False),  # references are compared as written, not resolved
        (["ghcr.io/fedsec/fedsec-runtime@sha256:*"], False),  # a tag is not a digest
        (["GHCR.IO/fedsec/fedsec-runtime:0.1.0"], False),  # case matters, as in a pod spec
    ],
)
def test_a_site_admits_only_the_aggregator_images_it_lists(allowed: list[str], admitted: bool) -> None:
    s = site("h", policy={"allowedAggregatorImages": allowed})
    reason = refusal(job(), s, spent_elsewhere=0.0, quorum=2, sites=4, aggregator_image=RUNTIME)
    if admitted:
        assert reason is None, reason
    else:
        assert reason is not None and "allowedAggregatorImages" in reason and repr(RUNTIME) in reason, reason


def test_an_image_list_does_not_apply_where_there_is_no_image() -> None:
    # fedsec run: the aggregator is this installation's own process, not an image.
    s = site("h", policy={"allowedAggregatorImages": ["registry.hospital.example/*"]})
    assert refusal(job(), s, spent_elsewhere=0.0, quorum=2, sites=4, aggregator_image=None) is None
    assert refusal(job(), site("h"), spent_elsewhere=0.0, quorum=2, sites=4, aggregator_image=RUNTIME) is None


def test_the_plan_refuses_a_site_that_does_not_accept_the_aggregator_image() -> None:
    sites = [site(f"h{i}", shard=i, policy={"allowedAggregatorImages": ["ghcr.io/fedsec/*"]}) for i in range(3)]
    sites.append(site("h3", shard=3, policy={"allowedAggregatorImages": ["registry.hospital.example/*"]}))
    plan = plan_job(job(quorum={"minClients": 2}), sites, aggregator_image=RUNTIME)
    assert plan.site_names == ("h0", "h1", "h2") and plan.aggregator_image == RUNTIME
    assert "registry.hospital.example/*" in plan.refused["h3"]
    assert plan_job(job(quorum={"minClients": 2}), sites).refused == {}  # a local run has no image


@pytest.mark.parametrize("bad", ["", " ghcr.io/x:1", "ghcr.io/x:1 ", "ghcr.io/x:?", "ghcr.io/[ab]:1", "-x", "a" * 513])
def test_an_image_pattern_that_is_not_a_reference_is_refused_with_its_field(bad: str) -> None:
    with pytest.raises(ValidationError) as err:
        site("h", policy={"allowedAggregatorImages": [bad]})
    assert "spec.policy.allowedAggregatorImages.0" in str(err.value), err.value  # the field as the manifest spells it


def _with_model(model: dict[str, object]) -> FederatedJob:
    doc = job(NO_DP, quorum={"minClients": 2}).model_dump(by_alias=True, exclude_none=True)
    doc["spec"]["model"] = {"inputDim": 30, **model}
    return FederatedJob.model_validate(doc)


def _with_factory_unchecked(factory: str) -> FederatedJob:
    # A factory string the job's own validator would refuse: admission must not rely on it.
    j = _with_model({"factory": "mypkg.models:make"})
    model = j.spec.model.model_copy(update={"factory": factory})
    return j.model_copy(update={"spec": j.spec.model_copy(update={"model": model})})


LISTS_MAKE = {"allowedModelFactories": ["mypkg.models:make"]}


@pytest.mark.parametrize("policy", [{}, LISTS_MAKE])
@pytest.mark.parametrize("builtin", ["logistic-regression", "mlp"])
def test_builtin_models_are_admitted_whatever_the_factory_list(builtin: str, policy: dict[str, object]) -> None:
    assert refusal(_with_model({"builtin": builtin}), site("h", policy=policy),
                   spent_elsewhere=0.0, quorum=2, sites=4) is None


def test_a_factory_the_site_lists_exactly_is_admitted() -> None:
    s = site("h", policy={"allowedModelFactories": ["other.pkg:build", "mypkg.models:make"]})
    assert refusal(_with_model({"factory": "mypkg.models:make"}), s, spent_elsewhere=0.0, quorum=2, sites=4) is None


@pytest.mark.parametrize(
    ("policy", "listed"),
    [({}, "lists none"), (LISTS_MAKE, "lists only ['mypkg.models:make']")],
)
def test_os_system_is_refused_naming_the_factory_and_the_field(policy: dict[str, object], listed: str) -> None:
    j = _with_model({"factory": "os:system", "params": {"command": "touch /tmp/pwned"}})
    reason = refusal(j, site("h", policy=policy), spent_elsewhere=0.0, quorum=2, sites=4)
    assert reason is not None, "a site admitted os:system"
    assert "'os:system'" in reason and "policy.allowedModelFactories" in reason and listed in reason, reason


# "mypkg.models:make\n" never gets this far: the job's schema refuses it, as the API server does
# (tests/manifest_cases.py, model-factory-trailing-newline).
@pytest.mark.parametrize("near_miss", ["mypkg.models:make_evil", "mypkg.models:mak", "mypkg.models.evil:make",
                                       "mypkg:make"])
def test_a_near_miss_of_a_listed_factory_is_refused(near_miss: str) -> None:
    reason = refusal(_with_model({"factory": near_miss}), site("h", policy=LISTS_MAKE),
                     spent_elsewhere=0.0, quorum=2, sites=4)
    assert reason is not None and repr(near_miss) in reason, reason


@pytest.mark.parametrize("unchecked", ["mypkg.models:make ", " mypkg.models:make", "MYPKG.models:make"])
def test_admission_compares_exactly_even_what_the_job_model_would_refuse(unchecked: str) -> None:
    reason = refusal(_with_factory_unchecked(unchecked), site("h", policy=LISTS_MAKE),
                     spent_elsewhere=0.0, quorum=2, sites=4)
    assert reason is not None and "policy.allowedModelFactories" in reason, reason


def test_a_plan_where_every_site_refuses_the_factory_fails_with_each_reason() -> None:
    j = _with_model({"factory": "os:system", "params": {"command": "true"}})
    sites = [site("h0"), site("h1", shard=1, policy=LISTS_MAKE)]
    with pytest.raises(ManifestError) as err:
        plan_job(j, sites)
    text = str(err.value)
    assert "every selected site refused" in text
    assert "h0: the job's spec.model.factory 'os:system'" in text and "h1: the job's spec.model.factory" in text
    three = [site("h0", policy=LISTS_MAKE), site("h1", shard=1, policy=LISTS_MAKE), site("h2", shard=2)]
    plan = plan_job(_with_model({"factory": "mypkg.models:make"}), three)
    assert plan.site_names == ("h0", "h1") and "'mypkg.models:make'" in plan.refused["h2"]


@pytest.mark.parametrize("bad", ["os:*", "mypkg.*:make", "mypkg.models", "mypkg.models:make ", " os:system",
                                 "mypkg..models:make", "mypkg.models:make:x", "1pkg:make", "mypkg.models:make\n",
                                 "pkg:", ":make", ""])
def test_a_factory_entry_that_is_not_module_colon_function_is_refused_with_its_field(bad: str) -> None:
    with pytest.raises(ValidationError) as err:
        site("h", policy={"allowedModelFactories": [bad]})
    assert "allowedModelFactories" in str(err.value), err.value


def test_the_factory_list_defaults_to_empty_and_keeps_what_the_site_wrote() -> None:
    assert site("h").spec.policy.allowed_model_factories == []
    listed = ["a.b_c.d:make_model", "_private:_f"]
    assert site("h", policy={"allowedModelFactories": listed}).spec.policy.allowed_model_factories == listed


def test_a_running_jobs_reservation_counts_against_a_new_job() -> None:
    s = site("h", budget=3.0)
    # another job spent 0.5 and, still running, may spend 1.5 more of its 2.0: 1.0 left, not 2.5
    reason = refusal(job(), s, spent_elsewhere=0.5, reserved_elsewhere=1.5, quorum=2, sites=4)
    assert reason is not None and "has only 1 left (0.5 spent by other jobs, 1.5 reserved by jobs still running)" in reason
    assert refusal(job(), s, spent_elsewhere=0.5, reserved_elsewhere=0.0, quorum=2, sites=4) is None  # once it finished
    others = [site(f"g{i}", budget=3.0, shard=i + 1) for i in range(2)]
    plan = plan_job(job(quorum={"minClients": 2}), [s, *others], spent={"h": 0.5}, reserved={"h": 1.5})
    assert set(plan.refused) == {"h"} and plan.site_names == ("g0", "g1")
