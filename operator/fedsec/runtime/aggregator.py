"""The aggregator process: a gRPC server over mutual TLS that drives the round engine.

This is the thin I/O layer around :mod:`fedsec.protocol.engine`. For each message it checks the
envelope (``fedsec.wire.envelope``), checks the TLS peer is the signer, hands the body to the
engine under one lock, and carries out the engine's effects: persist counters before a round's
first task leaves, apply and checkpoint an aggregate before anything else happens, audit and count
everything. A poll that finds nothing to do waits on a condition until the engine changes (long
poll), and a ticker thread wakes at the engine's next deadline, so nothing spins or sleeps blindly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from fedsec.aggregation.base import TensorSpec, Tensors
from fedsec.aggregation.registry import mode_for
from fedsec.crypto.keyring import KeyRing
from fedsec.crypto.pki import AGGREGATOR
from fedsec.crypto.signing import IdentityError, Verifier
from fedsec.protocol import engine as eng
from fedsec.protocol import stats as fstats
from fedsec.protocol.key_epochs import EpochState, RotationPolicy, peer_epochs
from fedsec.protocol.rejections import REASONS, Rejected
from fedsec.protocol.replay import ReplayGuard
from fedsec.runtime import admin, exitcodes, limits
from fedsec.runtime.checkpoints import Checkpoint, CheckpointError, CheckpointStore
from fedsec.runtime.config import AggregatorConfig
from fedsec.runtime.datasets import load_holdout
from fedsec.runtime.report import write_plot, write_summary
from fedsec.telemetry.audit import AuditLog
from fedsec.telemetry.metrics import AggregatorMetrics
from fedsec.training import models as tmodels
from fedsec.training.local import evaluate
from fedsec.wire import tensors as wire_tensors
from fedsec.wire.envelope import SerializedBody, open_envelope, seal
from fedsec.wire.proto import round_pb2 as pb

log = logging.getLogger("fedsec.aggregator")

SERVICE = "fedsec.v1.Rounds"
METHOD = f"/{SERVICE}/Exchange"
LONG_POLL_SECONDS = 10.0
SITE_METRICS = frozenset({"loss", "accuracy", "auc", "samples", "epsilon"})  # all a site may report


class EventSink:
    """Progress events as JSON lines (stdout): the local runner draws its display from them."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def emit(self, event: str, **data: Any) -> None:
        if self.stream is None:
            return
        with self._lock:
            self.stream.write(json.dumps({"event": event, **data}, default=_jsonable) + "\n")
            self.stream.flush()


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def stats_specs(input_dim: int) -> tuple[TensorSpec, ...]:
    """The larger of round 0's two steps (:mod:`fedsec.protocol.stats`): what answers are sized for."""
    return max(fstats.scale_specs(input_dim), fstats.moment_specs(input_dim), key=len)


@dataclass
class _History:
    rejected: dict[str, int] = field(default_factory=dict)
    done_delivered: set[str] = field(default_factory=set)
    site_epsilon: dict[str, float] = field(default_factory=dict)  # what each site reported it has spent


class Aggregator:
    def __init__(self, cfg: AggregatorConfig, events: EventSink, incarnation: int = 0) -> None:
        self.cfg = cfg
        self.job = cfg.job
        self.spec = cfg.job.spec
        self.events = events
        self.incarnation = incarnation
        self.outcome_delivered = False  # every live site was told the job's end, or the linger ran out
        rotation = self.spec.keys.rotation
        self.rotation = RotationPolicy(rotation.every_rounds, rotation.grace_rounds)
        self.keys = KeyRing(cfg.pki.keys_dir, AGGREGATOR)
        self._rotation_pending_logged = False
        self.verifier = Verifier(cfg.pki.ca_cert.read_bytes())
        self.replay = ReplayGuard()
        self.calls = limits.CallLimiter(limits.MAX_CALLS_PER_SITE, limits.max_in_flight(len(cfg.sites)))
        self.cond = threading.Condition()
        self.metrics = AggregatorMetrics(self.job.metadata.name)
        self.store = CheckpointStore(cfg.state_dir)
        self.audit = AuditLog(cfg.state_dir / "audit.jsonl")
        # The server checks each secagg key advert's signature itself, so a forged one blames its
        # sender instead of costing every neighbour its check.
        self.mode = mode_for(self.spec.secure_aggregation, verify_advert=self._verify_advert)
        self.holdout = load_holdout(self.job)
        self.history = _History()
        self._accepted_this_round = 0
        # Replies that are the same for many sites (a round's Task), serialized and hashed once.
        self._reply_cache: dict[tuple[int, str, int, bytes], SerializedBody] = {}

        m = self.spec.model
        self.model = tmodels.build_model(
            m.kind, input_dim=m.input_dim, num_classes=m.num_classes, hidden=m.hidden,
            factory=m.factory, params=m.params, seed=m.seed,
        )
        latest = self.store.latest()
        saved = self.store.load_engine() or {}
        if latest is None:
            initial = tmodels.state_to_numpy(self.model)
            latest = self.store.commit(
                initial, {"round": -1 if self.spec.task.standardize else 0, "round_id": 0, "kind": "initial", "metrics": {}}
            )
        rolled_back = self._rollback_requested(latest)
        if rolled_back is not None:
            latest = rolled_back
            saved.update(status=eng.RUNNING, reason="")  # a rollback reopens a finished job
            saved.pop("attempt", None)  # ... and someone chose to retry: the round's retries start over
        self.state_tensors: Tensors = latest.load_model()
        tmodels.load_numpy_state(self.model, self.state_tensors)
        self.version = latest.version
        self._model_bytes = wire_tensors.encode(self.state_tensors)
        self.history.rejected = {k: int(v) for k, v in saved.get("rejected", {}).items()}
        self.epochs = EpochState.from_json(saved)  # the epoch only grows: a rollback keeps it
        self.signer = self.keys.require(self.epochs.epoch)
        state = eng.EngineState(
            next_round=latest.round + 1,
            last_round_id=int(saved.get("last_round_id", 0)),
            # The retries of a round survive a restart, or an aggregator that dies in every attempt
            # would retry forever; counted only for the logical round they were saved for.
            attempt=int(saved.get("attempt", 0)) if saved.get("attempt_round") == latest.round + 1 else 0,
            attempts_total=int(saved.get("attempts_total", 0)),
            status=saved.get("status", eng.RUNNING),
            reason=saved.get("reason", ""),
        )
        if state.next_round > self.spec.rounds and state.status == eng.RUNNING:
            state.status, state.reason = eng.SUCCEEDED, f"trained {self.spec.rounds} rounds"
        self.engine = eng.RoundEngine(
            eng.EngineConfig(
                job_uid=cfg.job_uid,
                sites=tuple(sorted(cfg.sites)),
                rounds=self.spec.rounds,
                standardize=self.spec.task.standardize,
                quorum=cfg.quorum,
                round_timeout_s=self.spec.quorum.round_timeout_seconds,
                join_timeout_s=self.spec.quorum.join_timeout_seconds,
                max_retries=self.spec.quorum.max_retries,
                model_specs=wire_tensors.specs_of(self.state_tensors),
                stats_specs=fstats.moment_specs(m.input_dim),
                scale_specs=fstats.scale_specs(m.input_dim),
                feature_names=self._feature_names(),
            ),
            self.mode,
            state,
            now=time.monotonic(),
            stats_mode=mode_for(self.spec.secure_aggregation, for_stats=True, verify_advert=self._verify_advert),
        )
        if rolled_back is not None:
            self._save_engine()
        self.audit.append(
            "aggregator-started", sync=True, incarnation=incarnation, model_version=self.version,
            next_round=state.next_round, last_round_id=state.last_round_id, mode=self.mode.info.name,
        )
        self.metrics.model_version.labels(self.metrics.job).set(self.version)
        self.metrics.key_epoch.labels(self.metrics.job).set(self.epochs.epoch)
        self._size_caps = self._answer_caps(m.input_dim)
        if state.status == eng.RUNNING and state.attempt > self.spec.quorum.max_retries:
            # Every attempt the round was allowed has started, and the last was lost with the
            # process (one discarded in the open would have failed the job then): stop here.
            with self.cond:  # _apply notifies waiters; nobody waits yet, but notify needs the lock
                self._apply(self.engine.fail(
                    f"round {state.next_round} was attempted {state.attempt} times without committing (maxRetries is "
                    f"{self.spec.quorum.max_retries}); the aggregator stopped during the last attempt. Its log says why."
                ))

    def _feature_names(self) -> tuple[str, ...]:
        """Names for the features in messages: the job's list, else the holdout's columns."""
        if self.spec.task.features:
            return tuple(self.spec.task.features)
        return tuple(self.holdout.feature_names) if self.holdout is not None else ()

    def _answer_caps(self, input_dim: int) -> dict[str, int]:
        """Bytes an answer may have in each phase (``""``: a phase the mode does not have)."""
        args = (wire_tensors.specs_of(self.state_tensors), len(self.cfg.sites), self.spec.max_message_bytes,
                stats_specs(input_dim))
        phases = ("", *limits.SECAGG_PHASES, limits.PLAINTEXT_UPDATE)
        return {p: limits.answer_cap(self.mode.info.name, p, *args) for p in phases}

    def _size_cap(self, header: pb.Header) -> int:
        """What a message of this kind can need in this job, by its signed header (limits.py)."""
        if header.body_type == "Contribution":
            return self._size_caps.get(header.phase, self._size_caps[""])
        return min(limits.CONTROL_MESSAGE_BYTES, self.spec.max_message_bytes)

    def largest_message(self) -> int:
        """The most any message a site may send this job can need: the gRPC receive limit follows it."""
        return max(max(self._size_caps.values()), min(limits.CONTROL_MESSAGE_BYTES, self.spec.max_message_bytes))

    @property
    def key_epoch(self) -> int:
        return self.epochs.epoch

    def _verify_advert(self, site: str, cert_der: bytes, data: bytes, signature: bytes) -> bool:
        """Whether ``site``'s identity key, certified by the job CA in an epoch this aggregator
        accepts, signed ``data`` (a secagg key advert). Never raises for bad input."""
        try:
            ident = self.verifier.verify(cert_der, data, signature)
        except IdentityError:
            return False
        return ident.name == site and ident.epoch in peer_epochs(self.epochs.epoch)

    # -- key rotation ------------------------------------------------------------------------------

    def _maybe_rotate(self, round_number: int) -> None:
        """At a round boundary: rotate if it is due and the next epoch's key is in the key directory
        (the rules: :mod:`fedsec.protocol.key_epochs`). Call with ``self.cond`` held."""
        if not self.epochs.due(self.rotation):
            return
        nxt = self.epochs.epoch + 1
        try:
            signer = self.keys.signer(nxt)
        except IdentityError as exc:  # wrong material in our own Secret: keep the valid key, say so
            log.error("cannot rotate to key epoch %d: %s", nxt, exc)
            signer = None
        if signer is None:
            if not self._rotation_pending_logged:
                log.warning("key rotation to epoch %d is due, but its key is not in %s yet; round %d runs in "
                            "epoch %d", nxt, self.cfg.pki.keys_dir, round_number, self.epochs.epoch)
                self._rotation_pending_logged = True
            return
        previous = self.epochs.epoch
        self.epochs = self.epochs.rotated()
        self.signer = signer
        self.keys.forget_below(self.epochs.epoch)
        self._rotation_pending_logged = False
        self.audit.append("key-rotated", sync=True, from_epoch=previous, to_epoch=self.epochs.epoch,
                          round=round_number, grace_rounds=self.rotation.grace_rounds)
        self.metrics.key_epoch.labels(self.metrics.job).set(self.epochs.epoch)
        self.metrics.key_rotations.labels(self.metrics.job).inc()
        self.events.emit("key_epoch", epoch=self.epochs.epoch, round=round_number)
        log.info("rotated to key epoch %d before round %d; epoch %d verifies for %d more round(s)",
                 self.epochs.epoch, round_number, previous, self.rotation.grace_rounds)

    # -- rollback ---------------------------------------------------------------------------------

    def _rollback_requested(self, latest: Checkpoint) -> Checkpoint | None:
        """Honour ``spec.rollback.toRound`` once per request: a GitOps commit asks for it, and the
        request stays in the spec, so it must not roll back again at every restart."""
        rb = self.spec.rollback
        if rb is None:
            return None
        request = self.cfg.rollback_request or f"{self.job.metadata.generation or 0}/{rb.to_round}"
        if any(self.store.get(v).meta.get("rollback_request") == request for v in self.store.versions()):
            return None
        try:
            cp = self.store.rollback(rb.to_round, "spec.rollback.toRound", {"rollback_request": request})
        except CheckpointError as exc:
            # Refused, not fatal: a crash loop would stop the job for a request it cannot honour.
            log.error("rollback to round %d refused: %s", rb.to_round, exc)
            self.audit.append("rollback-refused", sync=True, to_round=rb.to_round, reason=str(exc))
            return None
        self.audit.append("rollback", sync=True, to_round=rb.to_round, new_version=cp.version,
                          replaced_version=latest.version, reason="spec.rollback.toRound")
        self.events.emit("rollback", to_round=rb.to_round, version=cp.version)
        log.warning("rolled back to round %d as the spec asks (model version %d)", rb.to_round, cp.version)
        return cp

    # -- message handling -------------------------------------------------------------------------

    def exchange(self, raw: bytes, peer_names: frozenset[str]) -> bytes:
        # Counted by TLS peer, before anything is parsed; a call over a bound is still opened (it is
        # small: the size caps hold) so that its refusal answers it, then refused without waiting.
        peer = ",".join(sorted(peer_names))
        busy = self.calls.enter(peer)
        try:
            return self._exchange(raw, peer_names, busy)
        finally:
            if not busy:
                self.calls.leave(peer)

    def _exchange(self, raw: bytes, peer_names: frozenset[str], busy: str) -> bytes:
        now_ms = int(time.time() * 1000)
        sender, phase, nonce, round_id = "", "", b"", 0
        try:
            env = pb.Envelope()
            if len(raw) > self.spec.max_message_bytes:
                raise Rejected("oversized", f"message of {len(raw)} bytes exceeds the limit of {self.spec.max_message_bytes}")
            try:
                env.ParseFromString(raw)
            except DecodeError:
                raise Rejected("malformed", "not a fedsec envelope") from None
            opened = open_envelope(
                env, self.verifier, job_uid=self.cfg.job_uid, key_epochs=self.epochs.accepted(self.rotation),
                recipient=AGGREGATOR, replay=self.replay, now_ms=now_ms, max_bytes=self.spec.max_message_bytes,
                size_cap=self._size_cap,
            )
            sender, phase, nonce = opened.header.sender, opened.header.phase, opened.header.nonce
            round_id = opened.header.round_id
            if sender not in peer_names:
                raise Rejected("peer-mismatch", f"signed by {sender!r} but the TLS peer is {sorted(peer_names)}")
            if busy:
                raise Rejected("busy", busy)
            reply = self._dispatch(sender, opened.header, opened.body)
        except Rejected as rej:
            with self.cond:  # a refusal may have ended an attempt (a protocol error on this answer)
                self._apply(self.engine.take_pending())
            if not sender and rej.sender in peer_names:  # authenticated, over its own channel: answer it
                sender, nonce = rej.sender, rej.nonce
            reply = self._rejected(rej, sender, round_id, phase)
        except Exception:
            # A bug, not bad input (bad input raises Rejected). The engine may be ahead of what is on
            # disk, so do not serve on: die, and let the restart resume from the last commit.
            log.exception("internal error while handling a message from %s; exiting to resume from disk", sender)
            logging.shutdown()
            os._exit(exitcodes.INTERNAL_ERROR)
        with self.cond:
            current = self.engine.current_round_id
        env_out = seal(self.signer, reply, job_uid=self.cfg.job_uid, round_id=current, phase=phase,
                       recipient=sender, in_reply_to=nonce)
        return env_out.SerializeToString()

    def _rejected(self, rej: Rejected, sender: str, round_id: int, phase: str) -> pb.Ack:
        with self.cond:
            self.history.rejected[rej.reason] = self.history.rejected.get(rej.reason, 0) + 1
        self.metrics.rejected.labels(self.metrics.job, rej.reason).inc()
        if rej.reason in ("invalid-update", "duplicate", "stale-round", "wrong-phase", "not-participant"):
            self.metrics.updates.labels(self.metrics.job, "rejected").inc()
        self.audit.append("message-rejected", reason=rej.reason, detail=rej.detail[:500], sender=sender,
                          round_id=round_id, phase=phase)
        log.warning("rejected message from %s: %s: %s", sender or "(unauthenticated)", rej.reason, rej.detail)
        return pb.Ack(accepted=False, reason=rej.reason, detail=rej.detail)

    def _dispatch(self, sender: str, header: pb.Header, body: Any) -> pb.Reply | pb.Ack | SerializedBody:
        with self.cond:
            if isinstance(body, pb.Join):
                self._apply(self.engine.seen(sender, time.monotonic()))
                self.audit.append("site-joined", site=sender, samples=int(body.num_samples))
                self.events.emit("site_joined", site=sender, live=len(self.engine.live_sites), sites=len(self.cfg.sites))
                self.cond.notify_all()
                return pb.Ack(accepted=True)
            if isinstance(body, pb.Poll):
                return self._long_poll(sender, body)
            if isinstance(body, pb.Contribution):
                return self._contribution(sender, header, body)
        raise Rejected("malformed", f"{header.body_type} is not something a client sends")

    def _long_poll(self, sender: str, body: pb.Poll) -> pb.Reply | SerializedBody:
        deadline = time.monotonic() + LONG_POLL_SECONDS
        while True:
            result, effects = self.engine.poll(sender, body.last_round_id, time.monotonic())
            self._apply(effects)
            if isinstance(result, eng.TaskView):
                return self._task_reply(result)
            if isinstance(result, eng.DoneView):
                self.history.done_delivered.add(sender)
                self.cond.notify_all()
                return pb.Reply(done=pb.Done(status=result.status, reason=result.reason))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return pb.Reply(wait=pb.Wait(reason=result.reason, retry_after_ms=0))
            self.cond.wait(remaining)

    def _task_reply(self, t: eng.TaskView) -> SerializedBody:
        key = (t.round_id, t.phase, self.version, hashlib.sha256(t.request).digest())
        cached = self._reply_cache.get(key)
        if cached is None:
            if len(self._reply_cache) > 64 or (self._reply_cache and next(iter(self._reply_cache))[0] != t.round_id):
                self._reply_cache.clear()  # only the current round's replies are worth keeping
            cached = self._reply_cache[key] = SerializedBody.of(pb.Reply(task=self._task(t)))
        return cached

    def _task(self, t: eng.TaskView) -> pb.Task:
        return pb.Task(
            round_id=t.round_id, round_number=t.round_number, kind=t.kind, phase=t.phase,
            model=self._model_bytes if t.first_phase else b"", request=t.request, round_seed=t.seed,
            participants=list(t.participants), min_survivors=t.min_survivors, model_version=self.version,
        )

    def _contribution(self, sender: str, header: pb.Header, body: pb.Contribution) -> pb.Ack:
        metrics = {k: float(v) for k, v in body.metrics.items() if k in SITE_METRICS and np.isfinite(v)}
        # The sender is live again, which may start a round: carry that out (persist the new round
        # id) now, because contribute() drops the effects of seeing the sender when it then refuses
        # the answer (a stale one from before a restart), and a round id not on disk is reused later.
        self._apply(self.engine.seen(sender, time.monotonic()))
        number = self.engine.current_round_number
        response = body.response  # one copy: upb copies a bytes field on every read
        effects = self.engine.contribute(
            sender, header.round_id, header.phase, response, metrics, body.withdraw, time.monotonic()
        )
        outcome = "withdrawn" if body.withdraw else "accepted"
        self.metrics.updates.labels(self.metrics.job, outcome).inc()
        self.audit.append(f"update-{outcome}", site=sender, round_id=header.round_id, phase=header.phase,
                          bytes=len(response))
        self._accepted_this_round += 0 if body.withdraw else 1
        self.events.emit("answer", site=sender, round_id=header.round_id, phase=header.phase, outcome=outcome)
        self._maybe_inject_crash(number)
        self._apply(effects)
        self.cond.notify_all()
        return pb.Ack(accepted=True)

    def _maybe_inject_crash(self, number: int) -> None:
        """Scenario fault: die after the answer that makes ``afterUpdates`` in round ``number``,
        before its effects (maybe a commit) are carried out."""
        for f in self.cfg.faults:
            if self.incarnation > 0 and not f.every_incarnation:
                continue  # an injected crash happens once; the restarted aggregator must survive
            if f.kind == "aggregator-crash" and f.round == number and self._accepted_this_round >= f.after_updates:
                log.error("injected fault: aggregator crashes in round %d after %d answers", number, self._accepted_this_round)
                self.audit.close()
                os._exit(exitcodes.INJECTED_CRASH)

    # -- effects ----------------------------------------------------------------------------------

    def _apply(self, effects: list[eng.Effect]) -> None:
        for e in effects:
            if isinstance(e, eng.RoundStarted):
                self._maybe_rotate(e.round_number)  # before the round's first task is signed
                self._save_engine()  # the round id (and key epoch) must be on disk before any task carries it
                self._accepted_this_round = 0
                self.metrics.participants.labels(self.metrics.job).set(len(e.participants))
                self.audit.append("round-started", round=e.round_number, round_id=e.round_id, kind=e.kind,
                                  attempt=e.attempt, participants=list(e.participants))
                self.events.emit("round_started", round=e.round_number, round_id=e.round_id, kind=e.kind,
                                 attempt=e.attempt, participants=list(e.participants), rounds=self.spec.rounds)
            elif isinstance(e, eng.ScaleMeasured):
                self._scale_measured(e)
            elif isinstance(e, eng.RoundCommitted):
                self._commit(e)
            elif isinstance(e, eng.RoundDiscarded):
                self.metrics.rounds.labels(self.metrics.job, "discarded").inc()
                self._save_engine()
                self.audit.append("round-discarded", sync=True, round=e.round_number, round_id=e.round_id,
                                  attempt=e.attempt, reason=e.reason)
                self.events.emit("round_discarded", round=e.round_number, round_id=e.round_id, attempt=e.attempt,
                                 reason=e.reason)
                log.warning("round %d attempt %d discarded: %s", e.round_number, e.attempt, e.reason)
            elif isinstance(e, eng.SitesBlamed):
                self.audit.append("sites-blamed", sync=True, round=e.round_number, round_id=e.round_id,
                                  blamed={k: v[:200] for k, v in e.blamed.items()})
                self.events.emit("sites_blamed", round=e.round_number, round_id=e.round_id, blamed=dict(e.blamed))
                log.warning("round %d: left out of its retries: %s", e.round_number,
                            "; ".join(f"{k}: {v}" for k, v in sorted(e.blamed.items())))
            elif isinstance(e, eng.JobFinished):
                self._save_engine()
                self.audit.append("job-finished", sync=True, status=e.status, reason=e.reason)
                self._write_outputs()
                self.events.emit("job_finished", status=e.status, reason=e.reason)
                log.info("job %s: %s", e.status, e.reason)
            self.cond.notify_all()

    def _scale_measured(self, e: eng.ScaleMeasured) -> None:
        """Round 0's first step: the centre and scale go to the sites in the model's input_norm (its
        second step's first task carries the model). Not a checkpoint: a restart measures again."""
        tmodels.set_standardization(self.model, e.centre, e.scale)
        self.state_tensors = tmodels.state_to_numpy(self.model)
        self._model_bytes = wire_tensors.encode(self.state_tensors)
        self.audit.append("stats-scaled", round=e.round_number, round_id=e.round_id,
                          contributors=list(e.contributors))
        self.events.emit("stats_scaled", round=e.round_number, round_id=e.round_id, contributors=len(e.contributors),
                         seconds=e.seconds)

    def _commit(self, e: eng.RoundCommitted) -> None:
        agg = e.aggregate
        standardization: dict[str, Any] = {}
        if e.kind == eng.STATS:
            assert e.standardization is not None  # the engine computes it for every stats commit
            tmodels.set_standardization(self.model, e.standardization.mean, e.standardization.std)
            self.state_tensors = tmodels.state_to_numpy(self.model)
            # The round's own numbers (float64), before input_norm stores them as float32.
            standardization = {"standardization": {"mean": e.standardization.mean.tolist(),
                                                   "std": e.standardization.std.tolist()}}
        else:
            self.state_tensors = {k: v + agg.mean_delta[k] for k, v in self.state_tensors.items()}
            tmodels.load_numpy_state(self.model, self.state_tensors)
        holdout = evaluate(self.model, self.holdout) if self.holdout is not None else {}
        holdout = {k: float(v) for k, v in holdout.items() if np.isfinite(v)}
        site_metrics = _weighted_site_metrics(e.site_metrics)
        cp = self.store.commit(
            self.state_tensors,
            {
                "round": e.round_number, "round_id": e.round_id, "kind": e.kind,
                "participants": list(e.participants), "contributors": list(agg.contributors),
                "total_weight": agg.total_weight, "metrics": holdout, "site_metrics": site_metrics,
                "seconds": round(e.seconds, 3), "audit_head": self.audit.head, "committed_at": time.time(),
                "key_epoch": self.epochs.epoch, **standardization,
            },
        )
        self.version = cp.version
        self._model_bytes = wire_tensors.encode(self.state_tensors)
        if e.kind == eng.TRAIN:
            self.epochs = self.epochs.committed()
        self._save_engine()
        self.store.prune(self.spec.checkpoints.keep)
        self.audit.append("round-committed", sync=True, round=e.round_number, round_id=e.round_id, kind=e.kind,
                          version=cp.version, contributors=list(agg.contributors), model_sha256=cp.meta["model_sha256"],
                          metrics=holdout)
        self.metrics.rounds.labels(self.metrics.job, "committed").inc()
        self.metrics.round_seconds.labels(self.metrics.job).observe(e.seconds)
        self.metrics.contributors.labels(self.metrics.job).set(len(agg.contributors))
        self.metrics.observe_site_metrics(e.site_metrics)
        for site, m in e.site_metrics.items():
            if "epsilon" in m:
                self.history.site_epsilon[site] = float(m["epsilon"])
        self.metrics.current_round.labels(self.metrics.job).set(e.round_number)
        self.metrics.model_version.labels(self.metrics.job).set(cp.version)
        for k, v in holdout.items():
            self.metrics.metric.labels(self.metrics.job, k).set(v)
        self.events.emit("round_committed", round=e.round_number, round_id=e.round_id, kind=e.kind, version=cp.version,
                         contributors=len(agg.contributors), participants=len(e.participants), metrics=holdout,
                         site_metrics=site_metrics, seconds=e.seconds, rounds=self.spec.rounds)

    def _save_engine(self) -> None:
        s = self.engine.state
        self.store.save_engine({
            "last_round_id": s.last_round_id, "attempts_total": s.attempts_total, "status": s.status,
            "attempt": s.attempt, "attempt_round": s.next_round,
            "reason": s.reason, "rejected": self.history.rejected, "job_uid": self.cfg.job_uid,
            **self.epochs.to_json(),
        })

    def _write_outputs(self) -> None:
        """summary.json and the plot; called at the job's end and again at shutdown."""
        summary = write_summary(self)
        try:
            write_plot(summary, self.cfg.state_dir / "metrics.png")
        except Exception as exc:  # a plot must never turn a finished job into a crash
            log.warning("could not draw the metrics plot: %s", exc)

    # -- serving ----------------------------------------------------------------------------------

    def tick_forever(self, stop: threading.Event) -> None:
        """Wake at the engine's deadlines; once the job ends, linger until every live site knows."""
        linger_until: float | None = None
        with self.cond:
            while True:
                now = time.monotonic()
                self._apply(self.engine.tick(now))
                if self.engine.finished:
                    linger_until = linger_until or now + self.cfg.linger_seconds
                    if self._everyone_told() or now >= linger_until:
                        self.outcome_delivered = True
                        break
                    self.cond.wait(linger_until - now)
                    continue
                nxt = self.engine.next_deadline(now)
                self.cond.wait(None if nxt is None else max(0.0, nxt - now))
        stop.set()

    def _everyone_told(self) -> bool:
        return self.engine.live_sites <= self.history.done_delivered

    def exit_code(self) -> int:
        return exitcodes.OK if self.engine.state.status == eng.SUCCEEDED else exitcodes.JOB_FAILED


def _weighted_site_metrics(per_site: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean of the sites' validation metrics, weighted by their validation sample counts."""
    total = sum(m.get("samples", 0.0) for m in per_site.values())
    if total <= 0:
        return {}
    keys = {k for m in per_site.values() for k in m if k != "samples"}
    out = {}
    for k in sorted(keys):
        pairs = [(m[k], m.get("samples", 0.0)) for m in per_site.values() if k in m]
        w = sum(s for _, s in pairs)
        if w > 0:
            out[k] = sum(v * s for v, s in pairs) / w
    return out


def _peer_names(context: grpc.ServicerContext) -> frozenset[str]:
    auth = context.auth_context()
    return frozenset(v.decode() for v in auth.get("x509_common_name", []))


def serve(cfg: AggregatorConfig, events: EventSink, incarnation: int = 0) -> int:
    try:
        agg = Aggregator(cfg, events, incarnation)
    except IdentityError as exc:
        log.error("the aggregator cannot sign: %s", exc)
        return exitcodes.CONFIG_ERROR
    n_workers = limits.rpc_workers(len(cfg.sites))  # every live site may hold one long poll
    # Twice the largest message a site may send: a message up to that is answered "oversized"; gRPC
    # refuses beyond. With the bound on admitted RPCs this caps what sites can make us hold in memory.
    receive_limit = min(2 * cfg.job.spec.max_message_bytes, 2 * agg.largest_message())
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="rpc"),
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs(len(cfg.sites)),
        options=[
            ("grpc.max_receive_message_length", receive_limit),
            ("grpc.max_send_message_length", 2 * cfg.job.spec.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )

    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        return agg.exchange(request, _peer_names(context))

    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Exchange": grpc.unary_unary_rpc_method_handler(handle)}),
         admin.handlers(agg))
    )
    creds = grpc.ssl_server_credentials(
        [(cfg.pki.tls_key.read_bytes(), cfg.pki.tls_cert.read_bytes())],
        root_certificates=cfg.pki.ca_cert.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port(cfg.listen, creds)
    if port == 0:
        log.error("cannot listen on %s (address in use?)", cfg.listen)
        return exitcodes.CONFIG_ERROR
    metrics_port = agg.metrics.serve(*_split_port(cfg.metrics_listen)) if cfg.metrics_listen else None
    server.start()
    events.emit("listening", port=port, metrics_port=metrics_port, pid=os.getpid())
    events.emit("key_epoch", epoch=agg.key_epoch)  # a resumed run's launcher issues the next epoch's keys
    log.info("aggregator for %s listening on port %d (metrics on %s)", cfg.job.metadata.name, port, metrics_port)
    stop = threading.Event()
    terminated = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: (terminated.set(), stop.set()))
    ticker = threading.Thread(target=agg.tick_forever, args=(stop,), name="ticker", daemon=True)
    ticker.start()
    stop.wait()
    if cfg.serve_after_finish and not terminated.is_set():
        # Under the operator the aggregator is a Deployment's pod: exiting would only restart it.
        # It keeps answering (late clients learn the outcome, the operator reads the status)
        # until the operator scales it down.
        log.info("job finished (%s); serving its outcome until terminated", agg.engine.state.status)
        terminated.wait()
    server.stop(grace=2.0).wait()
    with agg.cond:
        agg._write_outputs()  # again: rejections while lingering belong in the summary too
    agg.audit.close()
    if terminated.is_set() and not agg.engine.finished:
        return exitcodes.TERMINATED
    return agg.exit_code()


def _split_port(listen: str) -> tuple[int, str]:
    host, _, port = listen.rpartition(":")
    return int(port), host or "127.0.0.1"


def main(config_path: Path, incarnation: int, listen: str | None = None) -> int:
    # force: importing opacus installs a WARNING-level root handler, which would swallow our INFO lines
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
    cfg = AggregatorConfig.model_validate_json(config_path.read_text())
    if listen:
        cfg = cfg.model_copy(update={"listen": listen})
    return serve(cfg, EventSink(sys.stdout), incarnation)


__all__ = ["Aggregator", "EventSink", "serve", "main", "REASONS"]
