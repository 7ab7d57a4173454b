"""A FederatedClient's own status: what its budget has left, and what it is doing."""

from __future__ import annotations

from typing import Any

import pytest

from fedsec.controller import sites
from fedsec.controller.sites import changed, site_status

from controller_bodies import client_body
from fake_kube import merge as merge_patch

NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T00:09:00Z"


def ledger(*eps: float) -> dict[str, Any]:
    return {f"uid-{i}": {"job": f"research/job-{i}", "epsilon": e, "planned": 2.0, "active": False}
            for i, e in enumerate(eps)}


def body(budget: float | None = 4.0, status: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    spec = {"privacy": {"budget": budget} if budget is not None else {}}
    return client_body(status=status or {}, **spec, **kw)


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    (c,) = [c for c in status["conditions"] if c["type"] == ctype]
    return c


@pytest.mark.parametrize(("budget", "spent", "remaining"), [
    (4.0, [], 4.0),
    (4.0, [1.25], 2.75),
    (4.0, [1.0, 0.5, 0.25], 2.25),
    (3.0, [0.1, 0.2], 2.7),  # rounded: not 2.6999999999999997
])
def test_remaining_budget(budget: float, spent: list[float], remaining: float) -> None:
    s = site_status(body(budget, {"ledger": ledger(*spent)}), now=NOW)
    assert s["budget"] == budget
    assert s["remainingBudget"] == remaining
    assert s["epsilonSpent"] == round(sum(spent), 6)
    assert s["phase"] == sites.READY
    c = cond(s, "BudgetAvailable")
    assert (c["status"], c["reason"], c["message"]) == ("True", "Available", f"{remaining:g} of {budget:g} left")


@pytest.mark.parametrize("spent", [[2.0, 2.0], [3.0, 1.5], [4.0000001]])
def test_spent_budget_is_exhausted_and_never_negative(spent: list[float]) -> None:
    s = site_status(body(4.0, {"ledger": ledger(*spent)}), now=NOW)
    assert s["remainingBudget"] == 0.0
    assert s["phase"] == sites.EXHAUSTED == "BudgetExhausted"
    assert "budget of 4 is spent" in s["message"]
    ready, available = cond(s, "Ready"), cond(s, "BudgetAvailable")
    assert (ready["status"], ready["reason"]) == ("False", "BudgetExhausted")
    assert (available["status"], available["reason"], available["message"]) == ("False", "Exhausted", "0 of 4 left")


def test_exhausted_wins_over_training() -> None:
    s = site_status(body(1.0, {"ledger": ledger(1.0), "jobs": {"research/a": {"state": "Training"}}}), now=NOW)
    assert s["phase"] == sites.EXHAUSTED


def test_without_a_budget_nothing_is_exhausted() -> None:
    s = site_status(body(None, {"ledger": ledger(50.0)}), now=NOW)
    assert s["remainingBudget"] is None and s["budget"] is None  # null: removed by the merge patch
    assert s["epsilonSpent"] == 50.0 and s["phase"] == sites.READY
    c = cond(s, "BudgetAvailable")
    assert (c["status"], c["reason"], c["message"]) == ("True", "NoBudget", "no budget set")


def test_ledger_rows_that_are_not_rows_are_ignored() -> None:
    s = site_status(body(4.0, {"ledger": {**ledger(1.0), "junk": "x", "none": None}}), now=NOW)
    assert s["remainingBudget"] == 3.0


@pytest.mark.parametrize("state", ["Admitted", "Training"])
def test_training_while_a_job_is_admitted_or_training(state: str) -> None:
    jobs = {"research/b": {"uid": "u2", "state": state, "reason": ""},
            "research/a": {"uid": "u1", "state": "Training", "reason": ""},
            "research/c": {"uid": "u3", "state": "Finished", "reason": ""},
            "research/d": {"uid": "u4", "state": "Refused", "reason": "the budget of 4 has only 1 left"}}
    s = site_status(body(4.0, {"jobs": jobs}), now=NOW)
    assert s["phase"] == sites.TRAINING
    assert s["joined"] == ["research/a", "research/b"]
    assert s["message"] == "training in research/a, research/b"
    assert s["refused"] == {"research/d": "the budget of 4 has only 1 left"}
    c = cond(s, "Ready")
    assert (c["status"], c["reason"]) == ("True", "Training")


@pytest.mark.parametrize("state", ["Finished", "Failed", "Deleted", "Refused"])
def test_ready_when_no_job_runs_here(state: str) -> None:
    s = site_status(body(4.0, {"jobs": {"research/a": {"state": state}}}), now=NOW)
    assert s["phase"] == sites.READY and s["joined"] == []


@pytest.mark.parametrize(("spec", "field"), [
    ({"privacy": {"budget": -1}}, "spec.privacy.budget"),
    ({"nodeSelectr": {"zone": "a"}}, "spec.nodeSelectr"),
    ({"policy": {"maxEpsilonPerJob": "lots"}}, "spec.policy.maxEpsilonPerJob"),
])
def test_an_invalid_spec_names_the_field(spec: dict[str, Any], field: str) -> None:
    b = client_body(generation=4, status={"ledger": ledger(1.0)}, **spec)
    s = site_status(b, now=NOW)
    assert s["phase"] == sites.INVALID == "Invalid"
    assert s["observedGeneration"] == 4
    assert s["message"].startswith("the spec is invalid: ") and field in s["message"], s["message"]
    (c,) = s["conditions"]
    assert (c["type"], c["status"], c["reason"], c["observedGeneration"]) == ("Ready", "False", "InvalidSpec", 4)
    assert field in c["message"]


def test_conditions_keep_their_time_and_carry_the_generation() -> None:
    first = site_status(body(4.0, {"ledger": ledger(1.0)}, generation=2), now=NOW)
    b = body(4.0, {**first, "ledger": ledger(1.0), "jobs": {"research/a": {"state": "Training"}}}, generation=3)
    second = site_status(b, now=LATER)
    assert cond(second, "Ready")["lastTransitionTime"] == NOW  # still True, now Training
    assert cond(second, "BudgetAvailable")["lastTransitionTime"] == NOW
    assert {c["observedGeneration"] for c in second["conditions"]} == {3}
    third = site_status(body(4.0, {**second, "ledger": ledger(4.0)}, generation=3), now="2026-01-01T01:00:00Z")
    assert cond(third, "Ready")["lastTransitionTime"] == "2026-01-01T01:00:00Z"


def test_changed() -> None:
    status = {"ledger": ledger(1.0), "jobs": {"research/a": {"state": "Training"}}}
    first = site_status(body(4.0, status), now=NOW)
    prior = {**status, **first}
    again = site_status(body(4.0, prior), now=LATER)
    assert changed(prior, again) is False
    assert changed(prior, {**again, "remainingBudget": 2.5}) is True
    moved = [dict(c, message="other") if c["type"] == "Ready" else c for c in again["conditions"]]
    assert changed(prior, {**again, "conditions": moved}) is True
    assert changed(prior, site_status(body(4.0, {**prior, "ledger": ledger(1.5)}), now=LATER)) is True


# -- written with a JSON merge patch (kube.patch_status) -----------------------------------------

def write(b: dict[str, Any], now: str) -> dict[str, Any]:
    """What the operator's FederatedClient handler leaves in status after one event."""
    new = site_status(b, now=now)
    if changed(b.get("status") or {}, new):
        return merge_patch(b.get("status") or {}, new)
    return b["status"]


def test_a_steady_status_converges_under_merge_patch() -> None:
    b = body(4.0, {"ledger": ledger(1.0), "jobs": {"research/a": {"state": "Training"}}})
    b["status"] = write(b, NOW)
    assert changed(b["status"], site_status(b, now=LATER)) is False
    assert b["status"]["remainingBudget"] == 3.0 and b["status"]["phase"] == sites.TRAINING


def test_removing_the_budget_removes_the_remaining_budget() -> None:
    b = body(4.0, {"ledger": ledger(1.0)})
    b["status"] = write(b, NOW)
    assert b["status"]["remainingBudget"] == 3.0
    b["spec"]["privacy"] = {}
    b["status"] = write(b, LATER)
    assert "remainingBudget" not in b["status"] and "budget" not in b["status"]


def test_a_refusal_that_ends_is_removed_from_status_refused() -> None:
    b = body(4.0, {"jobs": {"research/d": {"uid": "u4", "state": "Refused", "reason": "budget"}}})
    b["status"] = write(b, NOW)
    assert b["status"]["refused"] == {"research/d": "budget"}
    b["status"]["jobs"] = {"research/d": {"uid": "u4", "state": "Deleted", "reason": ""}}
    b["status"] = write(b, LATER)
    assert b["status"]["refused"] == {}
    assert changed(b["status"], site_status(b, now=LATER)) is False
