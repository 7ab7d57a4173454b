"""Whether a job may run at a site: both sides' terms, and the site's remaining budget. Pure.

The local launcher and the operator call :func:`refusal` through ``plan_job``; a refused site is
left out of the job with the reason (in the job's summary and in the site's own ledger), and the
job runs on the others if its quorum still holds.

What a job spends at a site, as planned, is its ``targetEpsilon``: the noise is calibrated so that
the site's epsilon after every planned round is at most that, and the site's ledger never lets it
spend more. A job without differential privacy has unbounded epsilon, so a site with a budget or a
per-job cap never admits one. What the site has left for it is
:func:`fedsec.privacy.budget.remaining`: the budget less what other jobs spent and what the ones
still running reserve (their admitted target, until they finish).

The aggregator image is the one the operator will run the job's aggregator from; ``fedsec run`` has
none (its aggregator is this installation's own process), so a site's image list does not apply there.

A job's model factory (``spec.model.factory``) runs in the site's client process, with the site's
data: a site admits one only if its ``policy.allowedModelFactories`` lists it exactly, and the client
checks the same list again before it imports anything (:func:`fedsec.training.models.build_model`).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence

from fedsec.api.client import FederatedClient
from fedsec.api.job import FederatedJob
from fedsec.privacy.budget import fits, remaining


def planned_epsilon(job: FederatedJob) -> float:
    """Epsilon the job may spend at each site it runs at (infinite without DP)."""
    p = job.spec.privacy
    return math.inf if p.mechanism == "none" or p.target_epsilon is None else float(p.target_epsilon)


def least_survivors(job: FederatedJob, quorum: int, sites: int) -> tuple[float, int]:
    """The job's secure-aggregation threshold as (fraction of a round, least survivors of any round).

    The count is the one rule the engine and every site use (``SecAggMode.required_survivors``) for
    the smallest round the quorum allows."""
    from fedsec.aggregation.registry import secagg_config
    from fedsec.aggregation.secagg.mode import SecAggMode

    config = secagg_config(job.spec.secure_aggregation)
    t = config.threshold
    fraction = float(t) if isinstance(t, float) else t / max(sites, 1)
    return fraction, SecAggMode(config).required_survivors(quorum, quorum)


def image_allowed(patterns: Sequence[str], image: str) -> bool:
    """Whether ``image`` is one of ``patterns``: equal to one, or matching one where ``*`` stands for
    any run of characters. References are compared as written: ``nginx`` is not
    ``docker.io/library/nginx:latest``, and a tag is not its digest."""
    # The model admits no '?' or '[' in a pattern, so fnmatch's only wildcard here is '*'.
    return any(image == p or ("*" in p and fnmatch.fnmatchcase(image, p)) for p in patterns)


def refusal(
    job: FederatedJob, site: FederatedClient, *, spent_elsewhere: float, quorum: int, sites: int,
    aggregator_image: str | None = None, reserved_elsewhere: float = 0.0,
) -> str | None:
    """Why ``job`` cannot run at ``site`` (None: it can). ``spent_elsewhere`` is the epsilon other
    jobs have spent on the site (its ledger) and ``reserved_elsewhere`` what the ones still running
    may yet spend; ``quorum`` and ``sites`` describe the job's rounds; ``aggregator_image`` is the
    image the job's aggregator runs from (None: a local run, no image)."""
    pol, s = site.spec.policy, job.spec
    mech, mode = s.privacy.mechanism, s.secure_aggregation.mode
    if pol.allowed_aggregator_images and aggregator_image is not None \
            and not image_allowed(pol.allowed_aggregator_images, aggregator_image):
        return (f"the site accepts aggregator images {pol.allowed_aggregator_images} only "
                f"(policy.allowedAggregatorImages); this job's aggregator runs {aggregator_image!r}")
    # A factory is code of the job's choosing, run by the site's client next to its data and keys:
    # only what the site listed, compared exactly (a near-miss name is other code).
    factory = s.model.factory
    if factory is not None and factory not in pol.allowed_model_factories:
        listed = f"lists only {pol.allowed_model_factories}" if pol.allowed_model_factories else "lists none"
        return (f"the job's spec.model.factory {factory!r} is not in the site's policy.allowedModelFactories "
                f"({listed}; builtin models are always allowed); the site must list it to run it")
    if pol.accept_namespaces and job.metadata.namespace not in pol.accept_namespaces:
        return f"the site accepts jobs from namespaces {pol.accept_namespaces} only; the job is in {job.metadata.namespace!r}"
    if pol.accept_jobs is not None and not pol.accept_jobs.matches(job.metadata.labels):
        return "the job's labels do not match the site's policy.acceptJobs selector"
    if pol.required_modes and mode not in pol.required_modes:
        return f"the site requires secureAggregation.mode in {pol.required_modes}; the job uses {mode!r}"
    if pol.require_dp and mech == "none":
        return "the site requires differential privacy (policy.requireDP); the job has privacy.mechanism 'none'"
    if pol.min_secure_aggregation_threshold is not None:
        want = pol.min_secure_aggregation_threshold
        if mode == "none":
            return f"the site requires a secure-aggregation threshold of at least {want:g}; the job uses no secure aggregation"
        fraction, count = least_survivors(job, quorum, sites)
        if want <= 1.0 and fraction + 1e-12 < want:
            return f"the site requires a secure-aggregation threshold of at least {want:g} of a round; the job's is {fraction:.3g}"
        if want > 1.0 and count < want:
            return f"the site requires at least {want:g} survivors in every unmasked round; the job's rounds may unmask with {count}"
    planned = planned_epsilon(job)
    cap = pol.max_epsilon_per_job
    if cap is not None and planned > cap:
        what = "has no differential privacy (unbounded epsilon)" if math.isinf(planned) else f"plans epsilon {planned:g}"
        return f"the site caps epsilon per job at {cap:g} (policy.maxEpsilonPerJob); the job {what}"
    budget = site.spec.privacy.budget
    if budget is not None:
        left = remaining(budget, spent_elsewhere, reserved_elsewhere)
        assert left is not None
        if math.isinf(planned):
            return f"the site has a privacy budget (epsilon {budget:g}, {left:.3g} left); the job has no differential privacy"
        if not fits(planned, left):
            reserved = f", {reserved_elsewhere:.3g} reserved by jobs still running" if reserved_elsewhere > 0 else ""
            return (
                f"the job plans to spend epsilon {planned:g} here but the site's budget of {budget:g} has only "
                f"{left:.3g} left ({spent_elsewhere:.3g} spent by other jobs{reserved})"
            )
    return None
