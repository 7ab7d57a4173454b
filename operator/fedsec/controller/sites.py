"""A FederatedClient's own status: phase, budget and what every job did here. Pure.

The jobs write their rows (``status.jobs``, ``status.ledger``) as they plan and run; this module
derives the site-level fields from them, so the rule "what a site has left" lives in one place.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from fedsec.controller.parse import describe, parse_client
from fedsec.controller.status import by_type, condition, conditions_differ
from fedsec.privacy.budget import job_standing, remaining, total

PENDING, READY, TRAINING, EXHAUSTED, INVALID = "Pending", "Ready", "Training", "BudgetExhausted", "Invalid"
# What a site's status says of one job (status.jobs[<namespace>/<name>].state); the jobs write these.
JOB_ADMITTED, JOB_REFUSED, JOB_TRAINING, JOB_DONE, JOB_FAILED, JOB_DELETED = (
    "Admitted", "Refused", "Training", "Finished", "Failed", "Deleted")


def site_status(body: dict[str, Any], *, now: str) -> dict[str, Any]:
    prior = body.get("status") or {}
    gen = int(body["metadata"].get("generation") or 1)
    before = by_type(prior.get("conditions", []))
    try:
        site = parse_client(body)
    except ValidationError as exc:
        why = describe(exc)
        return {"phase": INVALID, "observedGeneration": gen, "message": f"the spec is invalid: {why}",
                "remainingBudget": None, "budget": None,
                "conditions": [condition(before, "Ready", False, "InvalidSpec", why, gen, now)]}
    ledger = {k: v for k, v in (prior.get("ledger") or {}).items() if isinstance(v, dict)}
    # the one rule (fedsec.privacy.budget): a job still running reserves its planned epsilon here
    standing = total(job_standing(float(v.get("epsilon", 0.0)),
                                  None if v.get("planned") is None else float(v["planned"]), bool(v.get("active")))
                     for v in ledger.values())
    spent = standing.spent
    budget = site.spec.privacy.budget
    left = remaining(budget, standing.spent, standing.reserved)
    remaining_budget = None if left is None else round(left, 6)
    jobs = {k: v for k, v in (prior.get("jobs") or {}).items() if isinstance(v, dict)}
    training = sorted(k for k, v in jobs.items() if v.get("state") in (JOB_ADMITTED, JOB_TRAINING))
    refused = {k: v.get("reason", "") for k, v in jobs.items() if v.get("state") == JOB_REFUSED}
    unspent = remaining(budget, standing.spent)  # without the reservations: what is gone for good
    if unspent is not None and unspent <= 0:
        phase, message = EXHAUSTED, f"the privacy budget of {budget:g} is spent; no private job runs here any more"
    elif training:
        phase, message = TRAINING, f"training in {', '.join(training)}"
    else:
        phase, message = READY, "ready to join jobs that select it"
    out: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": gen,
        "message": message,
        "epsilonSpent": round(spent, 6),
        "joined": training,
        "refused": refused,
        "conditions": [
            condition(before, "Ready", phase != EXHAUSTED, phase, message, gen, now),
            condition(before, "BudgetAvailable", remaining_budget is None or remaining_budget > 0,
                  "NoBudget" if budget is None else ("Available" if remaining_budget and remaining_budget > 0
                                                     else "Exhausted" if phase == EXHAUSTED else "Reserved"),
                  "no budget set" if budget is None else f"{remaining_budget:g} of {budget:g} left", gen, now),
        ],
    }
    # Written as a JSON merge patch: a field or map key that no longer applies is sent as null.
    out["remainingBudget"], out["budget"] = remaining_budget, budget
    out["refused"] = {**{k: None for k in (prior.get("refused") or {}) if k not in refused}, **refused}
    return out


def changed(prior: dict[str, Any], new: dict[str, Any]) -> bool:
    for k, v in new.items():
        if k == "conditions":
            if conditions_differ(prior.get("conditions", []), v):
                return True
        elif isinstance(v, dict) and isinstance(prior.get(k), dict):
            if {a: b for a, b in v.items() if b is not None} != prior[k]:  # null deletes under merge patch
                return True
        elif prior.get(k) != v:
            return True
    return False
