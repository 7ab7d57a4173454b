"""A FederatedJob's status from one pass's observation: phase, the seven conditions, events."""

from __future__ import annotations

from typing import Any

import pytest

from fedsec.controller import status as st
from fedsec.controller.status import Observation, job_status, phase_of, transitions

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
GEN = 7
SITES = ["h1", "h2", "h3"]
INVALID = "the spec is invalid: spec.rounds: Input should be greater than or equal to 1"


def obs(**kw: Any) -> Observation:
    base: dict[str, Any] = {"generation": GEN, "rounds": 20, "admitted": list(SITES), "quorum": 2}
    return Observation(**{**base, **kw})


def keyed(**kw: Any) -> Observation:
    return obs(keys_ready=True, keys_message="CA and keys issued", **kw)


def agg(**kw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"status": "Running", "reason": "", "finished": False, "round": 4, "roundsPlanned": 20,
                           "modelVersion": 5, "keyEpoch": 1, "sites": {"h1": "live", "h2": "live", "h3": "unseen"},
                           "contributors": ["h1", "h2"], "metrics": {"auc": 0.91234567, "samples": 300},
                           "mainMetric": "auc", "epsilon": {}, "lineage": []}
    doc.update(kw)
    return doc


PHASES: dict[str, Observation] = {
    "pending": obs(sites_ready=1),
    "waiting": keyed(sites_ready=1),
    "running": keyed(sites_ready=3, aggregator_started=True, aggregator=agg()),
    "succeeded": keyed(sites_ready=3, aggregator_started=True,
                       aggregator=agg(status="Succeeded", finished=True, reason="trained 20 rounds", round=20,
                                      sites={"h1": "live", "h2": "dropped", "h3": "dropped"})),
    "failed": keyed(sites_ready=3, aggregator_started=True,
                    aggregator=agg(status="Failed", finished=True, reason="quorum lost in round 5", round=4,
                                   sites={"h1": "live", "h2": "dropped", "h3": "dropped"})),
    "invalid": obs(invalid=INVALID),
}

# (status, reason) of Ready, QuorumMet, KeysReady, Degraded, RolledBack, Reconciling, Stalled
EXPECTED: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "pending": (st.PENDING, [("False", "Pending"), ("False", "WaitingForClients"), ("False", "KeysPending"),
                             ("False", "Healthy"), ("False", "NoRollback"), ("True", "Progressing"),
                             ("False", "NotStalled")]),
    "waiting": (st.WAITING, [("False", "WaitingForQuorum"), ("False", "WaitingForClients"), ("True", "KeysIssued"),
                             ("False", "Healthy"), ("False", "NoRollback"), ("True", "Progressing"),
                             ("False", "NotStalled")]),
    "running": (st.RUNNING, [("False", "Training"), ("True", "QuorumMet"), ("True", "KeysIssued"),
                             ("False", "Healthy"), ("False", "NoRollback"), ("True", "Progressing"),
                             ("False", "NotStalled")]),
    "succeeded": (st.SUCCEEDED, [("True", "TrainingComplete"), ("True", "QuorumMet"), ("True", "KeysIssued"),
                                 ("False", "Healthy"), ("False", "NoRollback"), ("False", "Finished"),
                                 ("False", "NotStalled")]),
    "failed": (st.FAILED, [("False", "JobFailed"), ("True", "QuorumMet"), ("True", "KeysIssued"),
                           ("False", "Healthy"), ("False", "NoRollback"), ("False", "Finished"),
                           ("True", "Failed")]),
    "invalid": (st.FAILED, [("False", "InvalidSpec"), ("False", "InvalidSpec"), ("False", "NotIssued"),
                            ("False", "Healthy"), ("False", "NoRollback"), ("False", "Finished"),
                            ("True", "Failed")]),
}


def conds(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


@pytest.mark.parametrize("case", list(PHASES))
def test_phase_and_conditions(case: str) -> None:
    o = PHASES[case]
    phase, expected = EXPECTED[case]
    assert phase_of(o) == phase
    s = job_status(o, {}, now=T0)
    assert s["phase"] == phase and s["observedGeneration"] == GEN
    assert [c["type"] for c in s["conditions"]] == list(st.CONDITION_TYPES)
    assert [(c["status"], c["reason"]) for c in s["conditions"]] == expected
    for c in s["conditions"]:
        assert c["observedGeneration"] == GEN, c
        assert c["lastTransitionTime"] == T0, c
    assert s["message"] == conds(s)["Ready"]["message"]


def test_messages_of_each_phase() -> None:
    c = conds(job_status(PHASES["pending"], {}, now=T0))
    assert c["Ready"]["message"] == "waiting for keys and clients"
    assert c["QuorumMet"]["message"] == "1 of 3 admitted clients ready; rounds start at 2"
    assert c["KeysReady"]["message"] == "issuing the job's keys"
    assert c["Stalled"]["message"] == ""
    c = conds(job_status(PHASES["waiting"], {}, now=T0))
    assert c["KeysReady"]["message"] == "CA and keys issued"
    c = conds(job_status(PHASES["running"], {}, now=T0))
    assert c["Ready"]["message"] == "round 4 of 20"
    assert c["QuorumMet"]["message"] == "2 of 3 admitted clients connected; a round needs 2"
    assert c["Reconciling"]["message"] == "phase Running"
    c = conds(job_status(PHASES["succeeded"], {}, now=T0))
    assert c["Ready"]["message"] == "trained 20 rounds"
    c = conds(job_status(PHASES["failed"], {}, now=T0))
    assert c["Ready"]["message"] == c["Stalled"]["message"] == "quorum lost in round 5"
    c = conds(job_status(PHASES["invalid"], {}, now=T0))
    assert c["Ready"]["message"] == c["Stalled"]["message"] == INVALID
    assert c["QuorumMet"]["message"] == "the job cannot be planned"


def test_quorum_not_met_while_running() -> None:
    o = keyed(aggregator_started=True, aggregator=agg(sites={"h1": "live", "h2": "unseen", "h3": "dropped"}))
    c = conds(job_status(o, {}, now=T0))["QuorumMet"]
    assert (c["status"], c["reason"]) == ("False", "QuorumNotMet")
    assert c["message"].startswith("1 of 3 ")
    # before the aggregator answers, the count is of ready client pods, and a zero quorum is never met
    c = conds(job_status(obs(quorum=0, admitted=[], sites_ready=0), {}, now=T0))["QuorumMet"]
    assert (c["status"], c["reason"], c["message"]) == ("False", "WaitingForClients",
                                                        "0 of 0 admitted clients ready; rounds start at 0")


def test_degraded_names_dropped_clients_and_other_causes() -> None:
    o = keyed(aggregator_started=True, aggregator=agg(sites={"h3": "dropped", "h1": "live", "h2": "dropped"}))
    c = conds(job_status(o, {}, now=T0))["Degraded"]
    assert (c["status"], c["reason"], c["message"]) == ("True", "Degraded", "dropped clients: h2, h3")
    o = keyed(aggregator_started=True, aggregator_error="UNAVAILABLE: connection refused", refused={"h9": "budget"})
    c = conds(job_status(o, {}, now=T0))["Degraded"]
    assert c["status"] == "True"
    assert c["message"] == "aggregator unreachable: UNAVAILABLE: connection refused; 1 selected site(s) refused"
    c = conds(job_status(PHASES["running"], {}, now=T0))["Degraded"]
    assert (c["status"], c["message"]) == ("False", "all admitted clients healthy")


def test_rolled_back_reflects_the_lineage_and_the_request() -> None:
    lineage = [{"version": 6, "round": 2, "replacedVersion": 5, "restoredVersion": 3, "reason": "drift"},
               {"version": 9, "round": 3, "replacedVersion": 8, "restoredVersion": 4, "reason": "spec"}]
    s = job_status(keyed(aggregator_started=True, aggregator=agg(lineage=lineage)), {}, now=T0)
    c = conds(s)["RolledBack"]
    assert (c["status"], c["reason"], c["message"]) == ("True", "RolledBack", "rolled back to round 3 (model version 9)")
    assert s["lineage"] == lineage
    # the aggregator not reachable this pass: the lineage recorded before still holds
    c = conds(job_status(keyed(aggregator_started=True), {"lineage": lineage}, now=T0))["RolledBack"]
    assert (c["status"], c["message"]) == ("True", "rolled back to round 3 (model version 9)")
    # a request that names no kept checkpoint
    o = keyed(rollback=("CheckpointNotFound", "spec.rollback.toRound 99 has no checkpoint"), aggregator=agg())
    c = conds(job_status(o, {}, now=T0))["RolledBack"]
    assert (c["status"], c["reason"], c["message"]) == ("False", "CheckpointNotFound",
                                                        "spec.rollback.toRound 99 has no checkpoint")
    o = keyed(rollback=("RolledBack", "rolling back to round 2 as spec.rollback.toRound asks"))
    c = conds(job_status(o, {}, now=T0))["RolledBack"]
    assert (c["status"], c["reason"]) == ("True", "RolledBack")


def test_last_transition_time_moves_only_with_the_status() -> None:
    first = job_status(PHASES["pending"], {}, now=T0)
    second = job_status(PHASES["waiting"], first, now=T1)
    c = conds(second)
    assert c["KeysReady"]["status"] == "True" and c["KeysReady"]["lastTransitionTime"] == T1
    # Ready stays False (its reason changes): its time stays
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "WaitingForQuorum")
    assert c["Ready"]["lastTransitionTime"] == T0
    for t in ("QuorumMet", "Degraded", "RolledBack", "Reconciling", "Stalled"):
        assert c[t]["lastTransitionTime"] == T0, t
    third = job_status(PHASES["succeeded"], second, now="2026-01-01T01:00:00Z")
    c = conds(third)
    assert c["Ready"]["lastTransitionTime"] == c["Reconciling"]["lastTransitionTime"] == "2026-01-01T01:00:00Z"
    assert c["KeysReady"]["lastTransitionTime"] == T1
    assert c["Stalled"]["lastTransitionTime"] == T0


def test_a_prior_condition_without_a_time_gets_one() -> None:
    prior = {"conditions": [{"type": "Ready", "status": "False", "reason": "Pending", "message": ""}]}
    assert conds(job_status(PHASES["pending"], prior, now=T1))["Ready"]["lastTransitionTime"] == T1


def test_every_condition_carries_the_current_generation() -> None:
    first = job_status(PHASES["running"], {}, now=T0)
    o = keyed(sites_ready=3, aggregator_started=True, aggregator=agg())
    o.generation = GEN + 1
    second = job_status(o, first, now=T1)
    assert second["observedGeneration"] == GEN + 1
    assert {c["observedGeneration"] for c in second["conditions"]} == {GEN + 1}
    assert {c["lastTransitionTime"] for c in second["conditions"]} == {T0}


def test_status_fields() -> None:
    o = keyed(sites_ready=3, aggregator_started=True, refused={"h9": "budget"},
              aggregator=agg(epsilon={"h1": 0.5, "h2": 1.25}))
    s = job_status(o, {}, now=T0)
    assert s["quorum"] == "2/3" and s["clientsReady"] == 3 and s["round"] == 4 and s["roundsPlanned"] == 20
    assert s["modelVersion"] == 5 and s["keyEpoch"] == 1 and s["participants"] == ["h1", "h2"]
    assert s["admitted"] == SITES and s["refused"] == {"h9": "budget"}
    assert s["metrics"] == {"auc": 0.912346}  # rounded; sample counts are not a metric
    assert s["mainMetricName"] == "auc" and s["mainMetric"] == "auc=0.9123"
    assert s["epsilon"] == {"h1": 0.5, "h2": 1.25} and s["epsilonSpent"] == 1.25
    assert "epsilonSpent" not in job_status(PHASES["pending"], {}, now=T0)


def test_a_restarted_or_lying_aggregator_cannot_lower_a_sites_recorded_epsilon() -> None:
    prior = {"epsilon": {"h1": 0.5, "h2": 1.25}}
    restarted = keyed(sites_ready=3, aggregator_started=True, aggregator=agg(epsilon={"h1": 0.7, "h2": 0.1}))
    s = job_status(restarted, prior, now=T1)
    assert s["epsilon"] == {"h1": 0.7, "h2": 1.25} and s["epsilonSpent"] == 1.25


# -- events --------------------------------------------------------------------------------------

def test_failure_is_a_warning_event() -> None:
    before = job_status(PHASES["running"], {}, now=T0)
    after = job_status(PHASES["failed"], before, now=T1)
    events = transitions(before, after)
    assert ("Warning", "PhaseFailed", "phase Running -> Failed: quorum lost in round 5") in events
    assert all(reason != "RoundCommitted" for _, reason, _ in events)  # round 4 -> 4


def test_success_is_a_normal_event() -> None:
    before = job_status(PHASES["running"], {}, now=T0)
    after = job_status(PHASES["succeeded"], before, now=T1)
    events = transitions(before, after)
    assert ("Normal", "PhaseSucceeded", "phase Running -> Succeeded: trained 20 rounds") in events
    assert ("Normal", "RoundCommitted", "round 20 committed (model version 5)") in events


def test_a_committed_round_is_a_normal_event() -> None:
    before = job_status(PHASES["running"], {}, now=T0)
    o = keyed(sites_ready=3, aggregator_started=True, aggregator=agg(round=5, modelVersion=6))
    after = job_status(o, before, now=T1)
    assert transitions(before, after) == [("Normal", "RoundCommitted", "round 5 committed (model version 6)")]


def test_a_condition_that_turns_bad_is_a_warning() -> None:
    before = job_status(PHASES["running"], {}, now=T0)
    o = keyed(sites_ready=3, aggregator_started=True, aggregator=agg(sites={"h1": "live", "h2": "live", "h3": "dropped"}))
    after = job_status(o, before, now=T1)
    assert transitions(before, after) == [("Warning", "Degraded", "Degraded=True: dropped clients: h3")]


@pytest.mark.parametrize("case", list(PHASES))
def test_nothing_changed_no_event(case: str) -> None:
    first = job_status(PHASES[case], {}, now=T0)
    second = job_status(PHASES[case], first, now=T1)
    assert second["conditions"] == first["conditions"]  # times kept too
    assert transitions(first, second) == []


# -- key epochs ------------------------------------------------------------------------------------

ROTATION = {"everyRounds": 5, "graceRounds": 1, "roundsInEpoch": 2, "due": False, "acceptedEpochs": "1 to 2"}


def test_keys_ready_names_the_epoch_and_the_next_rotation() -> None:
    running = keyed(sites_ready=3, aggregator_started=True)
    c = conds(job_status(keyed(sites_ready=3, aggregator_started=True, aggregator=agg(keyEpoch=0)), {}, now=T0))
    assert c["KeysReady"]["message"] == "CA and keys issued; key epoch 0, no rotation"
    running.aggregator = agg(keyEpoch=2, keyRotation=ROTATION)
    s = job_status(running, {}, now=T0)
    assert s["keyEpoch"] == 2 and s["keyRotation"] == ROTATION
    assert conds(s)["KeysReady"]["message"] == (
        "CA and keys issued; key epoch 2, 2 of 5 rounds before the next rotation; messages verify in epoch 1 to 2")
    running.aggregator = agg(keyEpoch=2, keyRotation={**ROTATION, "roundsInEpoch": 5, "due": True})
    c = conds(job_status(running, {}, now=T0))
    assert c["KeysReady"]["status"] == "True" and "rotation to epoch 3 is due" in c["KeysReady"]["message"]


def test_a_rotation_is_a_normal_event_and_the_epoch_stays_when_the_aggregator_is_away() -> None:
    running = keyed(sites_ready=3, aggregator_started=True, aggregator=agg(keyEpoch=3, keyRotation=ROTATION))
    prior = job_status(keyed(sites_ready=3, aggregator_started=True, aggregator=agg(keyEpoch=2)), {}, now=T0)
    new = job_status(running, prior, now=T1)
    assert ("Normal", "KeysRotated", "key epoch 2 -> 3; the previous epoch verifies for 1 more round(s)") in transitions(prior, new)
    away = job_status(keyed(sites_ready=3, aggregator_started=True, aggregator_error="UNAVAILABLE"), new, now=T1)
    assert away["keyEpoch"] == 3 and away["keyRotation"] == ROTATION
    assert not [t for t in transitions(new, away) if t[1] == "KeysRotated"]
