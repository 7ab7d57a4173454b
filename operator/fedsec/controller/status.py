"""A FederatedJob's status from what the operator observed. Pure: no API calls.

Conditions have the metav1.Condition shape. Besides the five the design names (Ready, QuorumMet,
KeysReady, Degraded, RolledBack), the job carries ``Reconciling`` and ``Stalled``: kstatus (and so
Flux) reads a custom resource as InProgress while ``Reconciling`` is True, Failed while ``Stalled``
is True, and Current once ``observedGeneration`` caught up and ``Ready`` is True (docs/status.md;
Argo CD needs the Lua health check given there). A ``lastTransitionTime`` changes only when the condition's status does.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

PENDING, WAITING, RUNNING, SUCCEEDED, FAILED = "Pending", "WaitingForQuorum", "Running", "Succeeded", "Failed"
FINAL = (SUCCEEDED, FAILED)
CONDITION_TYPES = ("Ready", "QuorumMet", "KeysReady", "Degraded", "RolledBack", "Reconciling", "Stalled")


def now_rfc3339() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class Observation:
    """Everything one reconcile learned, in the order it learned it."""

    generation: int
    rounds: int = 0  # planned, from the spec
    invalid: str | None = None  # the spec or the plan cannot run: why
    admitted: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    quorum: int = 0
    keys_ready: bool = False
    keys_message: str = ""
    sites_ready: int = 0  # admitted sites with a running client pod
    aggregator_started: bool = False
    aggregator: dict[str, Any] | None = None  # the admin API's answer
    aggregator_error: str | None = None
    rollback: tuple[str, str] | None = None  # (reason, message) of the last rollback request
    scaled_down: bool = False


def condition(prior: dict[str, dict[str, Any]], ctype: str, status: bool | None, reason: str, message: str,
          generation: int, now: str) -> dict[str, Any]:
    value = "Unknown" if status is None else ("True" if status else "False")
    old = prior.get(ctype)
    since = old["lastTransitionTime"] if old and old.get("status") == value and old.get("lastTransitionTime") else now
    return {"type": ctype, "status": value, "reason": reason, "message": message[:32768],
            "lastTransitionTime": since, "observedGeneration": generation}


def by_type(conditions: list[Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conditions if isinstance(c, dict) and "type" in c}


def conditions_differ(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Whether a status write would change a condition (a timestamp alone does not count)."""
    def key(cs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return sorted((c.get("type"), c.get("status"), c.get("reason"), c.get("message"), c.get("observedGeneration"))
                      for c in cs)
    return key(a) != key(b)


def phase_of(o: Observation) -> str:
    if o.invalid is not None:
        return FAILED
    agg = o.aggregator
    if agg is not None and agg.get("finished"):
        return SUCCEEDED if agg.get("status") == SUCCEEDED else FAILED
    if agg is not None:
        return RUNNING
    if o.aggregator_started:
        return RUNNING
    if o.keys_ready:
        return WAITING
    return PENDING


def job_status(o: Observation, prior: dict[str, Any], *, now: str | None = None) -> dict[str, Any]:
    """The whole ``status`` the operator writes for one job (it owns every field of it)."""
    now = now or now_rfc3339()
    before = by_type(prior.get("conditions", []))
    phase = phase_of(o)
    agg = o.aggregator or {}
    g = o.generation
    n = len(o.admitted)
    conds: list[dict[str, Any]] = []

    if o.invalid is not None:
        conds.append(condition(before, "Ready", False, "InvalidSpec", o.invalid, g, now))
    elif phase == SUCCEEDED:
        conds.append(condition(before, "Ready", True, "TrainingComplete", agg.get("reason", "trained"), g, now))
    elif phase == FAILED:
        conds.append(condition(before, "Ready", False, "JobFailed", agg.get("reason", "the job failed"), g, now))
    else:
        conds.append(condition(before, "Ready", False, "Training" if phase == RUNNING else phase,
                           f"round {agg.get('round', prior.get('round', 0))} of {o.rounds}" if phase == RUNNING
                           else "waiting for keys and clients", g, now))

    if o.invalid is not None:
        conds.append(condition(before, "QuorumMet", False, "InvalidSpec", "the job cannot be planned", g, now))
    elif agg:
        live = sum(1 for v in agg.get("sites", {}).values() if v == "live")
        met = live >= o.quorum or bool(agg.get("finished"))
        conds.append(condition(before, "QuorumMet", met, "QuorumMet" if met else "QuorumNotMet",
                           f"{live} of {n} admitted clients connected; a round needs {o.quorum}", g, now))
    else:
        met = o.sites_ready >= o.quorum > 0
        conds.append(condition(before, "QuorumMet", met, "QuorumMet" if met else "WaitingForClients",
                           f"{o.sites_ready} of {n} admitted clients ready; rounds start at {o.quorum}", g, now))

    if o.invalid is not None:
        conds.append(condition(before, "KeysReady", False, "NotIssued", "no keys are issued for a job that cannot run", g, now))
    else:
        conds.append(condition(before, "KeysReady", o.keys_ready, "KeysIssued" if o.keys_ready else "KeysPending",
                           _keys_message(o, agg) if o.keys_ready else "issuing the job's keys", g, now))

    degraded_why = []
    if o.aggregator_error and phase not in FINAL:
        degraded_why.append(f"aggregator unreachable: {o.aggregator_error}")
    dropped = sorted(s for s, v in agg.get("sites", {}).items() if v == "dropped")
    if dropped and phase not in FINAL:
        degraded_why.append(f"dropped clients: {', '.join(dropped)}")
    if o.refused:
        degraded_why.append(f"{len(o.refused)} selected site(s) refused")
    conds.append(condition(before, "Degraded", bool(degraded_why), "Degraded" if degraded_why else "Healthy",
                       "; ".join(degraded_why) or "all admitted clients healthy", g, now))

    lineage = agg.get("lineage") or prior.get("lineage") or []
    if o.rollback is not None:
        reason, message = o.rollback
        conds.append(condition(before, "RolledBack", reason == "RolledBack", reason, message, g, now))
    elif lineage:
        last = lineage[-1]
        conds.append(condition(before, "RolledBack", True, "RolledBack",
                           f"rolled back to round {last['round']} (model version {last['version']})", g, now))
    else:
        conds.append(condition(before, "RolledBack", False, "NoRollback", "the model's lineage has no rollback", g, now))

    conds.append(condition(before, "Reconciling", phase not in FINAL, "Progressing" if phase not in FINAL else "Finished",
                       f"phase {phase}", g, now))
    stalled = phase == FAILED
    conds.append(condition(before, "Stalled", stalled, "Failed" if stalled else "NotStalled",
                       (o.invalid or agg.get("reason", "")) if stalled else "", g, now))

    metrics = {k: round(float(v), 6) for k, v in (agg.get("metrics") or prior.get("metrics") or {}).items()
               if k != "samples"}
    main = agg.get("mainMetric") or prior.get("mainMetricName")
    # What the aggregator relays of the sites' spend is not theirs to set: it forgets it on a restart
    # and is the job's side. A job's spend at a site never decreases, so a lower (or missing) number
    # never replaces a higher one seen before; the sites' own ledgers enforce the budget regardless.
    epsilon = _monotone_epsilon(prior.get("epsilon") or {}, agg.get("epsilon") or {})
    status: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": g,
        "round": int(agg.get("round", prior.get("round", 0))),
        "roundsPlanned": o.rounds or agg.get("roundsPlanned", prior.get("roundsPlanned")),
        "modelVersion": agg.get("modelVersion", prior.get("modelVersion")),
        "lastGoodRound": agg.get("lastGoodRound", prior.get("lastGoodRound")),
        "keyEpoch": agg.get("keyEpoch", prior.get("keyEpoch", 0)),
        "keyRotation": agg.get("keyRotation", prior.get("keyRotation")),
        "quorum": f"{o.quorum}/{n}" if n else None,
        "clientsReady": o.sites_ready,
        "participants": agg.get("contributors", prior.get("participants", [])),
        "admitted": list(o.admitted),
        "refused": dict(o.refused),
        "metrics": metrics,
        "mainMetricName": main,
        "mainMetric": f"{main}={metrics[main]:.4f}" if main and main in metrics else None,
        "epsilon": epsilon,
        "epsilonSpent": max(epsilon.values()) if epsilon else None,
        "lineage": lineage,
        "message": next((c["message"] for c in conds if c["type"] == "Ready"), ""),
        "conditions": conds,
    }
    return {k: v for k, v in status.items() if v is not None}


def _monotone_epsilon(prior: dict[str, Any], reported: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for site in sorted(set(prior) | set(reported)):
        values = [float(v) for v in (prior.get(site), reported.get(site)) if isinstance(v, (int, float))]
        if values:
            out[site] = round(max(values), 6)
    return out


def _keys_message(o: Observation, agg: dict[str, Any]) -> str:
    rot = agg.get("keyRotation") or {}
    epoch = agg.get("keyEpoch")
    if epoch is None:
        return o.keys_message
    if not rot.get("everyRounds"):
        return f"{o.keys_message}; key epoch {epoch}, no rotation"
    if rot.get("due"):
        return (f"{o.keys_message}; key epoch {epoch}: the rotation to epoch {epoch + 1} is due and happens "
                "at the first round boundary after its key reached the aggregator")
    return (f"{o.keys_message}; key epoch {epoch}, {rot['roundsInEpoch']} of {rot['everyRounds']} rounds "
            f"before the next rotation; messages verify in epoch {rot.get('acceptedEpochs', epoch)}")


def transitions(prior: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type Normal/Warning, reason, message) for every change worth a Kubernetes Event."""
    out: list[tuple[str, str, str]] = []
    if prior.get("phase") != new.get("phase"):
        kind = "Warning" if new.get("phase") == FAILED else "Normal"
        out.append((kind, f"Phase{new.get('phase')}", f"phase {prior.get('phase', 'none')} -> {new.get('phase')}: {new.get('message', '')}"))
    before = by_type(prior.get("conditions", []))
    for c in new.get("conditions", []):
        if c["type"] in ("Reconciling", "Stalled", "Ready"):
            continue  # the phase event says it
        old = before.get(c["type"])
        if old is None or old.get("status") != c["status"] or old.get("reason") != c["reason"]:
            bad = (c["type"] == "Degraded" and c["status"] == "True") or (c["type"] != "Degraded" and c["status"] == "False"
                                                                          and c["type"] != "RolledBack")
            out.append(("Warning" if bad else "Normal", c["reason"], f"{c['type']}={c['status']}: {c['message']}"))
    if int(new.get("keyEpoch") or 0) > int(prior.get("keyEpoch") or 0):
        grace = (new.get("keyRotation") or {}).get("graceRounds", 0)
        out.append(("Normal", "KeysRotated", f"key epoch {prior.get('keyEpoch') or 0} -> {new['keyEpoch']}; "
                    f"the previous epoch verifies for {grace} more round(s)"))
    if int(new.get("round") or 0) > int(prior.get("round") or 0):  # a rollback lowers it: RolledBack says so
        out.append(("Normal", "RoundCommitted", f"round {new['round']} committed (model version {new.get('modelVersion')})"))
    return out
