"""The aggregator's admin API: what the operator reads into the FederatedJob's status.

It is served on the aggregator's gRPC port, behind the same mutual TLS as the rounds, but only to
the peer whose certificate the job CA issued to the operator (common name ``fedsec-operator``):
a site holds a certificate from the same CA and must not read other sites' progress. The answer is
a small JSON document (no pickles, no model weights, no keys): the status subresource is public to
anyone who may read the FederatedJob.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import grpc

from fedsec.crypto.pki import OPERATOR
from fedsec.protocol import engine as eng

if TYPE_CHECKING:
    from fedsec.runtime.aggregator import Aggregator

SERVICE = "fedsec.v1.Admin"
STATUS_METHOD = f"/{SERVICE}/Status"
MAX_LINEAGE = 20  # the newest rollbacks in status; the whole lineage is in the checkpoints and audit log


def status_document(agg: Aggregator) -> dict[str, Any]:
    """The job as the aggregator sees it now. Call with ``agg.cond`` held."""
    store, engine, state = agg.store, agg.engine, agg.engine.state
    latest = store.latest()
    meta = latest.meta if latest is not None else {}
    metas = [store.get(v).meta for v in store.versions()]
    last_train = next((m for m in reversed(metas) if m.get("kind") in ("train", "rollback")), None)
    contributors = list(last_train.get("contributors", [])) if last_train else []
    lineage = [
        {"version": m["version"], "round": m["round"], "replacedVersion": m.get("rollback_of"),
         "restoredVersion": m.get("restored_version"), "reason": m.get("reason", "")}
        for m in metas if m.get("kind") == "rollback"
    ][-MAX_LINEAGE:]
    return {
        "jobUid": agg.cfg.job_uid,
        "generation": agg.job.metadata.generation,
        "status": state.status,
        "reason": state.reason,
        "roundsPlanned": agg.spec.rounds,
        "round": max(0, int(meta.get("round", 0))),
        "roundInProgress": engine.current_round_number if not engine.finished else None,
        "roundId": engine.current_round_id,
        "attempts": state.attempts_total,
        "modelVersion": agg.version,
        "lastGoodRound": max(0, int(last_train["round"])) if last_train else 0,
        "checkpointRounds": sorted({int(m["round"]) for m in metas if int(m.get("round", -1)) >= 0}),
        "keyEpoch": agg.key_epoch,
        "keyRotation": {
            "everyRounds": agg.rotation.every_rounds,
            "graceRounds": agg.rotation.grace_rounds,
            "roundsInEpoch": agg.epochs.rounds,
            "due": agg.epochs.due(agg.rotation),
            "acceptedEpochs": str(agg.epochs.accepted(agg.rotation)),
        },
        "quorum": agg.cfg.quorum,
        "sites": engine.site_states(),
        "contributors": contributors,
        "metrics": {k: float(v) for k, v in (meta.get("metrics") or {}).items()},
        "mainMetric": agg.spec.evaluation.main_metric,
        "epsilon": dict(sorted(agg.history.site_epsilon.items())),
        "rejectedMessages": dict(sorted(agg.history.rejected.items())),
        "lineage": lineage,
        "finished": state.status != eng.RUNNING,
        "outcomeDelivered": agg.outcome_delivered,
    }


def peer_is_operator(context: grpc.ServicerContext) -> bool:
    names = {v.decode() for v in context.auth_context().get("x509_common_name", [])}
    return names == {OPERATOR}


def handlers(agg: Aggregator) -> grpc.GenericRpcHandler:
    def status(request: bytes, context: grpc.ServicerContext) -> bytes:
        if not peer_is_operator(context):
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "the admin API answers the job's operator only")
        with agg.cond:
            doc = status_document(agg)
        return json.dumps(doc, sort_keys=True).encode()

    return grpc.method_handlers_generic_handler(SERVICE, {"Status": grpc.unary_unary_rpc_method_handler(status)})


def fetch_status(target: str, *, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, server_name: str = "aggregator",
                 timeout: float = 5.0) -> dict[str, Any]:
    """The operator's side: one Status call over mutual TLS. Raises grpc.RpcError when unreachable."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)
    with grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", server_name)]) as ch:
        raw = ch.unary_unary(STATUS_METHOD)(b"", timeout=timeout)
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("the aggregator's admin API answered something that is not a JSON object")
    return doc
