"""The client process of one site: poll the aggregator, train locally, answer each phase.

The site's data never leaves this process; only what the aggregation protocol answers does (in
plaintext mode the update itself, under secure aggregation a masked one) and the global model's
metrics on the site's validation split. Every reply from the aggregator is checked like every
request is on the other side: CA-issued signer named ``aggregator``, this job, and an answer to
the request just sent (``in_reply_to``), so an old reply cannot be replayed at us.

The aggregator is not trusted with the round's terms: each Task is checked against the plan the
site admitted (``ClientConfig.plan``, :func:`fedsec.protocol.terms.check_task`) before anything is
trained or sent, and the round's seed and survivor count are the site's own derivation, never the
Task's. A refused Task is counted and audited at the site (:mod:`fedsec.runtime.site_record`) and
the site withdraws from that round.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import torch

from fedsec.aggregation.base import ClientProtocol, ClientUpdate, PeerIdentity, ProtocolRejection, RoundContext
from fedsec.aggregation.registry import mode_for
from fedsec.crypto.keyring import KeyRing
from fedsec.crypto.pki import AGGREGATOR
from fedsec.crypto.signing import IdentityError, Signer, Verifier
from fedsec.privacy.distributed import clip_and_noise
from fedsec.privacy.site import BudgetExhausted, SitePrivacyGuard
from fedsec.protocol.key_epochs import SiteEpochs
from fedsec.protocol.rejections import Rejected
from fedsec.protocol import stats as fstats
from fedsec.protocol.terms import SCALE, STATS, STATS_KINDS, TaskRefused, check_task, required_survivors, round_seed
from fedsec.runtime import exitcodes
from fedsec.runtime.aggregator import METHOD
from fedsec.runtime.config import ClientConfig
from fedsec.runtime.datasets import site_split
from fedsec.runtime.site_record import SiteRecord
from fedsec.training import data as tdata
from fedsec.training import models as tmodels
from fedsec.training.local import TrainConfig, TrainingError, evaluate, model_delta, train_local
from fedsec.wire import tensors as wire_tensors
from fedsec.wire.envelope import open_envelope, seal
from fedsec.wire.proto import round_pb2 as pb

log = logging.getLogger("fedsec.client")
CALL_TIMEOUT_SECONDS = 60.0  # above the aggregator's long poll
BUSY_BACKOFF_SECONDS = 1.0  # after a "busy" refusal: the aggregator holds too many of our calls
KEY_POLL_SECONDS = 0.5  # how often to look for a rotated key that has not reached the key directory yet


class AggregatorUnreachable(RuntimeError):
    pass


@dataclass
class _Round:
    round_id: int
    protocol: ClientProtocol | None  # None: we cannot take part (e.g. restarted after its first phase)


class SiteClient:
    def __init__(self, cfg: ClientConfig, incarnation: int = 0) -> None:
        self.cfg = cfg
        self.name = cfg.site.metadata.name
        self.incarnation = incarnation
        spec = cfg.job.spec
        mismatch = cfg.plan.matches(cfg.job, cfg.job_uid)
        if mismatch is None and self.name not in cfg.plan.roster:
            mismatch = f"the admitted roster does not name this site ({self.name!r})"
        if mismatch is not None:
            raise ValueError(f"the client configuration is not the job this site admitted: {mismatch}")
        self.record = SiteRecord(cfg.state_dir, self.name)
        self._noted: dict[str, str] = {}  # the peers last written to the site's audit as left out
        self.keys = KeyRing(cfg.pki.keys_dir, self.name)
        held = self.keys.epochs()
        if not held:
            raise ValueError(f"no identity key (id-<epoch>.crt and .key) in {cfg.pki.keys_dir}")
        # Keys are issued from the aggregator's epoch on, so the oldest held is the oldest it may be in.
        self.epochs = SiteEpochs(min(held))
        self.signer = self._signer()
        self.verifier = Verifier(cfg.pki.ca_cert.read_bytes())
        self.mode = mode_for(spec.secure_aggregation)
        self.stats_mode = mode_for(spec.secure_aggregation, for_stats=True)
        self.train, self.val = site_split(cfg.job, cfg.site)
        m = spec.model
        self.model = tmodels.build_model(
            m.kind, input_dim=m.input_dim, num_classes=m.num_classes, hidden=m.hidden,
            factory=m.factory, params=m.params, seed=m.seed,
            allowed_factories=cfg.site.spec.policy.allowed_model_factories,
        )
        t = spec.task
        self.train_config = TrainConfig(
            epochs=t.local_epochs, batch_size=t.batch_size, optimizer=t.optimizer, learning_rate=t.learning_rate,
            momentum=t.momentum, weight_decay=t.weight_decay, seed=m.seed,
        )
        self.privacy: SitePrivacyGuard | None = None
        self._exhausted = ""
        if spec.privacy.mechanism != "none":
            if cfg.ledger_dir is None:
                raise ValueError("a job with privacy needs the site's ledger directory (ledger_dir in the client config)")
            self.privacy = SitePrivacyGuard(cfg.job, cfg.job_uid, cfg.site, cfg.ledger_dir, len(self.train))
            if spec.privacy.mechanism == "dp-sgd":
                self.train_config = dataclasses.replace(
                    self.train_config, noise_multiplier=self.privacy.schedule.noise_multiplier,
                    max_grad_norm=spec.privacy.clipping_norm,
                )
        self.channel = grpc.secure_channel(
            cfg.aggregator,
            grpc.ssl_channel_credentials(
                root_certificates=cfg.pki.ca_cert.read_bytes(),
                private_key=cfg.pki.tls_key.read_bytes(),
                certificate_chain=cfg.pki.tls_cert.read_bytes(),
            ),
            options=[
                ("grpc.ssl_target_name_override", cfg.server_name),
                ("grpc.max_receive_message_length", 2 * spec.max_message_bytes),
                ("grpc.max_send_message_length", 2 * spec.max_message_bytes),
            ],
        )
        self._exchange = self.channel.unary_unary(METHOD)
        self._warm_up()
        self._round: _Round | None = None
        self._last_round_id = 0
        self._unreachable_since: float | None = None

    def _warm_up(self) -> None:
        """Pay torch's lazy first-use costs (optimizer, autograd) now, before joining, so they never
        count against a round's deadline: with many sites on few cores they add up to seconds."""
        sample = self.train.take(np.arange(min(len(self.train), 4)))
        scratch = copy.deepcopy(self.model)
        private = {"noise_multiplier": 1.0, "max_grad_norm": 1.0} if self.train_config.private else {}
        train_local(scratch, sample, TrainConfig(epochs=1, batch_size=4, optimizer=self.train_config.optimizer,
                                                 learning_rate=self.train_config.learning_rate, seed=0, **private))
        if len(self.val):
            evaluate(scratch, self.val)

    # -- keys -------------------------------------------------------------------------------------

    def _signer(self, current: Signer | None = None) -> Signer:
        """The identity key to sign with now (the rule: :class:`fedsec.protocol.key_epochs.SiteEpochs`)."""
        epoch = self.epochs.signing_epoch(self.keys.epochs())
        signer = self.keys.signer(epoch) if epoch is not None else None
        if signer is not None:
            return signer
        if current is not None:
            return current  # caught mid-swap of the key volume: keep the key in hand, look again next time
        raise IdentityError(f"no identity key in {self.cfg.pki.keys_dir}")

    def _await_key(self, epoch: int) -> bool:
        """Wait for the key of ``epoch`` to reach the key directory (a rotated Secret propagates to the
        pod's volume with a delay); False when it did not come within the give-up time."""
        deadline = time.monotonic() + self.cfg.give_up_seconds
        log.info("the aggregator signs in key epoch %d; waiting for this site's key of that epoch", epoch)
        while self.keys.signer(epoch) is None:
            if time.monotonic() > deadline:
                return False
            time.sleep(KEY_POLL_SECONDS)  # nothing to wait on: a volume update sends no signal
        return True

    def _peer_identity(self) -> PeerIdentity:
        """This round's identity towards the other sites (secure aggregation's signed key adverts)."""
        signer = self.signer

        def verify(peer_id: str, cert_der: bytes, data: bytes, signature: bytes) -> bool:
            try:
                ident = self.verifier.verify(cert_der, data, signature)
            except IdentityError:
                return False
            return ident.name == peer_id and ident.epoch in self.epochs.peers()

        return PeerIdentity(self.name, signer.cert_der, signer.sign, verify)

    # -- transport --------------------------------------------------------------------------------

    def call(self, body: pb.Join | pb.Poll | pb.Contribution, round_id: int = 0, phase: str = "") -> pb.Reply | pb.Ack:
        """Send ``body``; when the aggregator has moved to a key epoch we do not sign in yet, switch
        to (or wait for) that epoch's key and send again."""
        while True:
            signed_in = self.signer.epoch
            reply = self._call_once(body, round_id, phase)
            if not (isinstance(reply, pb.Ack) and reply.reason == "wrong-epoch"):
                return reply
            wanted = self.epochs.aggregator
            if wanted == signed_in:
                return reply  # the aggregator refuses the epoch it signs in itself: nothing to switch to
            if self.keys.signer(wanted) is None and not self._await_key(wanted):
                log.error("the key of epoch %d did not reach %s within %gs", wanted, self.cfg.pki.keys_dir,
                          self.cfg.give_up_seconds)
                return reply
            self.signer = self._signer(self.signer)

    def _call_once(self, body: pb.Join | pb.Poll | pb.Contribution, round_id: int, phase: str) -> pb.Reply | pb.Ack:
        env = seal(self.signer, body, job_uid=self.cfg.job_uid, round_id=round_id, phase=phase, recipient=AGGREGATOR)
        while True:
            try:
                raw = self._exchange(env.SerializeToString(), timeout=CALL_TIMEOUT_SECONDS, wait_for_ready=True)
                self._unreachable_since = None
                break
            except grpc.RpcError as err:
                code = err.code()  # type: ignore[attr-defined]
                # RESOURCE_EXHAUSTED: the aggregator is shedding load (its concurrent-call bound).
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                grpc.StatusCode.RESOURCE_EXHAUSTED):
                    raise
                now = time.monotonic()
                self._unreachable_since = self._unreachable_since or now
                if now - self._unreachable_since > self.cfg.give_up_seconds:
                    raise AggregatorUnreachable(
                        f"aggregator at {self.cfg.aggregator} unreachable for {self.cfg.give_up_seconds:g}s ({code.name})"
                    ) from None
                # wait_for_ready already waited for the channel; a fresh nonce keeps the retry valid
                env = seal(self.signer, body, job_uid=self.cfg.job_uid, round_id=round_id, phase=phase, recipient=AGGREGATOR)
        header = pb.Header()
        header.ParseFromString(env.header)
        reply_env = pb.Envelope()
        reply_env.ParseFromString(raw)
        opened = open_envelope(
            reply_env, self.verifier, job_uid=self.cfg.job_uid, key_epochs=self.epochs.accepted(),
            recipient=self.name, replay=None, now_ms=int(time.time() * 1000), max_bytes=2 * self.cfg.job.spec.max_message_bytes,
        )
        if opened.sender.name != AGGREGATOR:
            raise Rejected("forged-sender", f"reply signed by {opened.sender.name!r}, not the aggregator")
        if opened.header.in_reply_to != header.nonce:
            raise Rejected("replay", "reply does not answer the request just sent")
        self._follow_epoch(opened.header.key_epoch)
        return opened.body  # type: ignore[return-value]

    def _follow_epoch(self, epoch: int) -> None:
        """The aggregator signed in ``epoch``: sign in it too from now on, once we hold its key."""
        before = self.epochs.aggregator
        self.epochs.saw(epoch)
        if self.epochs.aggregator != before:
            log.info("the aggregator rotated to key epoch %d", self.epochs.aggregator)
        if self.signer.epoch != self.epochs.aggregator:
            signer = self._signer(self.signer)
            if signer.epoch != self.signer.epoch:
                log.info("%s signs in key epoch %d now", self.name, signer.epoch)
                self.signer = signer
                self.keys.forget_below(signer.epoch)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> int:
        ack = self.call(pb.Join(client_version="fedsec/0.1", num_samples=len(self.train)))
        if isinstance(ack, pb.Ack) and not ack.accepted:
            log.error("the aggregator refused %s: %s: %s", self.name, ack.reason, ack.detail)
            return exitcodes.CONFIG_ERROR
        log.info("%s joined with %d training and %d validation rows", self.name, len(self.train), len(self.val))
        while True:
            reply = self.call(pb.Poll(last_round_id=self._last_round_id, num_samples=len(self.train)))
            if isinstance(reply, pb.Ack):  # our poll was refused
                log.warning("poll refused: %s: %s", reply.reason, reply.detail)
                if reply.reason in ("unknown-sender", "wrong-job", "peer-mismatch"):
                    return exitcodes.CONFIG_ERROR
                if reply.reason == "busy":
                    time.sleep(BUSY_BACKOFF_SECONDS)  # the aggregator asked for fewer calls; nothing to wait on
                continue
            which = reply.WhichOneof("kind")
            if which == "done":
                log.info("job finished: %s (%s)", reply.done.status, reply.done.reason)
                if self.privacy is not None:
                    self.privacy.finished(f"job {reply.done.status}: {reply.done.reason}")
                return exitcodes.OK
            if which == "wait":
                if reply.wait.retry_after_ms:
                    time.sleep(reply.wait.retry_after_ms / 1000)  # the server asked for this pause
                continue
            self._handle_task(reply.task)

    def _handle_task(self, task: pb.Task) -> None:
        self._fault("train", task.round_number, before=True)
        if self._round is None or self._round.round_id != task.round_id:
            try:
                self._check_task(task)
            except TaskRefused as exc:
                self.record.refused(exc.reason, exc.detail, round_id=task.round_id, round=task.round_number,
                                    phase=task.phase)
                self._round = _Round(task.round_id, None)
                self.call(pb.Contribution(withdraw=True), task.round_id, task.phase)
                return
            try:
                protocol = self._start_round(task) if task.model else None
            except (TrainingError, tmodels.ModelError, ValueError) as exc:
                # Training diverged or the protocol refused the update (NaN, wrong shape): this
                # round goes on without us; the next one starts again from the global model.
                log.error("round %d: cannot produce an update: %s; withdrawing", task.round_number, exc)
                protocol = None
            self._round = _Round(task.round_id, protocol)
        if self._round.protocol is None:
            if self._exhausted:
                log.info("round %d: budget exhausted (%s); withdrawing", task.round_number, self._exhausted)
            else:
                log.info("round %d: cannot take part in phase %s (no state for it); withdrawing", task.round_number, task.phase)
            self.call(pb.Contribution(withdraw=True), task.round_id, task.phase)
            return
        metrics = self._metrics if task.model else {}
        try:
            response = self._round.protocol.respond(task.phase, task.request)
        except ProtocolRejection as exc:
            self.record.refused("protocol", f"{exc.reason}: {exc.detail}", round_id=task.round_id,
                                round=task.round_number, phase=task.phase)
            self.call(pb.Contribution(withdraw=True), task.round_id, task.phase)
            return
        self._note_blamed(task)
        self._slow(task.round_number)
        ack = self.call(pb.Contribution(response=response, metrics=metrics), task.round_id, task.phase)
        if isinstance(ack, pb.Ack) and not ack.accepted:
            log.warning("round %d phase %s: answer refused: %s: %s", task.round_number, task.phase, ack.reason, ack.detail)
            if ack.reason == "stale-round":
                self._round = None
        self._last_round_id = task.round_id
        self._fault(task.phase, task.round_number, before=False)

    def _required(self, kind: str, participants: int) -> int:
        """Least contributors of a round of ``participants``, by this site's own derivation."""
        mode = self.stats_mode if kind in STATS_KINDS else self.mode
        return required_survivors(mode, participants, self.cfg.plan.quorum)

    def _check_task(self, task: pb.Task) -> None:
        check_task(
            self.cfg.plan, site=self.name, rounds=self.cfg.job.spec.rounds, standardize=self.cfg.job.spec.task.standardize,
            required=lambda n: self._required(task.kind, n), round_id=task.round_id, round_number=task.round_number,
            kind=task.kind, participants=list(task.participants), min_survivors=task.min_survivors, seed=task.round_seed,
        )

    def _note_blamed(self, task: pb.Task) -> None:
        """Peers the protocol left out of this site's round (a forged advert, shares that did not
        open): the site's own audit log says so once per round."""
        protocol = self._round.protocol if self._round else None
        blamed = protocol.blamed if protocol is not None else {}
        if blamed:
            names = {task.participants[i] if i < len(task.participants) else str(i): why for i, why in blamed.items()}
            if names != self._noted:
                self._noted = names
                self.record.note("peers-left-out", round_id=task.round_id, round=task.round_number, peers=names)
                log.warning("round %d: left out of this site's round: %s", task.round_number,
                            "; ".join(f"{k}: {v}" for k, v in sorted(names.items())))

    def _start_round(self, task: pb.Task) -> ClientProtocol | None:
        """Receive the global model, evaluate it, train (or measure features), and set up the protocol."""
        started = time.monotonic()
        specs = tuple(wire_tensors.specs_of(tmodels.state_to_numpy(self.model)))
        binding = b""
        dim = self.cfg.job.spec.model.input_dim
        if task.kind == SCALE:
            update = ClientUpdate(fstats.site_scale(self.train.X), float(len(self.train)))
            specs = fstats.scale_specs(dim)
            self._metrics: dict[str, float] = {}
        elif task.kind == STATS:
            # The centre and scale arrive in the model's input_norm; the round is bound to exactly
            # them, so an aggregator cannot centre this site differently from the others.
            tmodels.load_numpy_state(self.model, wire_tensors.decode(task.model, specs))
            centre, scale = tmodels.standardization_of(self.model)
            update = ClientUpdate(fstats.site_moments(self.train.X, centre, scale), float(len(self.train)))
            clipped = [self.train.feature_names[j] for j in np.flatnonzero(update.delta["clipped"])]
            if clipped:
                log.error("round 0: this site's %s lie more than %g of the sites' typical standard deviations from "
                          "their centre (other units here?); the job will fail naming them", ", ".join(map(repr, clipped)),
                          np.sqrt(fstats.STATS_RANGE))
            specs, binding = fstats.moment_specs(dim), fstats.centre_binding(centre, scale)
            self._metrics = {}
        else:
            global_state = wire_tensors.decode(task.model, specs)
            tmodels.load_numpy_state(self.model, global_state)
            if self.privacy is not None:
                update_or_none = self._private_update(task, global_state, specs)
                if update_or_none is None:
                    return None
                update = update_or_none
            else:
                self._metrics = {k: float(v) for k, v in evaluate(self.model, self.val).items() if np.isfinite(v)} if len(self.val) else {}
                n = train_local(self.model, self.train, self.train_config)
                update = ClientUpdate(model_delta(tmodels.state_to_numpy(self.model), global_state), float(n))
        # The round's terms are this site's derivation (checked equal to the Task's in _check_task).
        ctx = RoundContext(
            job_uid=self.cfg.job_uid, round_id=task.round_id, participants=tuple(task.participants),
            min_survivors=self._required(task.kind, len(task.participants)), tensor_specs=specs,
            seed=round_seed(self.cfg.job_uid, task.round_id), binding=binding,
        )
        log.info("round %d (%s): prepared update in %.2fs", task.round_number, task.kind, time.monotonic() - started)
        mode = self.stats_mode if task.kind in STATS_KINDS else self.mode
        return mode.client(ctx, self._peer_identity(), update)

    def _private_update(self, task: pb.Task, global_state: dict[str, np.ndarray], specs: tuple) -> ClientUpdate | None:
        """Train under the job's privacy mechanism, or re-send the update already paid for; the spend
        is in the ledger before this returns (so before anything of the update leaves the site).

        Validation metrics are not sent (the validation rows are the site's data too, and only the
        training rows are covered by the accountant); the epsilon spent so far is. None: the budget
        is exhausted (withdraw)."""
        assert self.privacy is not None
        self._metrics = {}
        if self._exhausted:
            return None
        sha = hashlib.sha256(task.model).hexdigest()
        distributed = self.privacy.mechanism == "distributed-gaussian"
        weight = 1.0 if distributed else float(len(self.train))  # distributed: unweighted mean, sensitivity C
        kept = self.privacy.kept(task.round_number, sha)  # dp-sgd only: the exact bytes of a paid release
        if kept is not None:
            log.info("round %d: re-sending the update already paid for from this model (epsilon %.4f)",
                     task.round_number, kept.epsilon)
            self._metrics = {"epsilon": kept.epsilon}
            return ClientUpdate(wire_tensors.decode(kept.payload, specs), weight)
        log.info("round %d: training a new release from model %s", task.round_number, sha[:12])
        train_local(self.model, self.train, self.train_config)
        delta = model_delta(tmodels.state_to_numpy(self.model), global_state)
        if distributed:
            delta = clip_and_noise(
                delta, {k for k, _ in self.model.named_parameters()}, clipping_norm=self.privacy.clipping_norm,
                noise_multiplier=self.privacy.schedule.noise_multiplier, min_survivors=self._required(task.kind, len(task.participants)),
            )
        payload = wire_tensors.encode(delta)
        try:
            # one step under the ledger's lock: check every limit, keep the bytes, debit; nothing of
            # the update leaves before this returns
            eps = self.privacy.charge(task.round_number, task.round_id, sha, payload)
        except BudgetExhausted as exc:
            self._exhausted = str(exc)
            log.warning("%s stops training in this job (BudgetExhausted): %s", self.name, exc)
            return None
        log.info("round %d: charged release %s; epsilon spent by this job here: %.4f",
                 task.round_number, hashlib.sha256(payload).hexdigest()[:12], eps)
        self._metrics = {"epsilon": eps}  # public: what this job has spent here, for the aggregator's metrics
        # what was charged is what is sent: the decoded bytes, not the tensors that produced them
        return ClientUpdate(wire_tensors.decode(payload, specs), weight)

    # -- scenario faults --------------------------------------------------------------------------

    def _fault(self, phase: str, round_number: int, before: bool) -> None:
        for f in self.cfg.faults:
            if f.round != round_number or f.phase != phase or f.kind not in ("drop", "crash"):
                continue
            if f.kind == "crash" and self.incarnation > 0:
                continue  # crash once; the restarted process carries on
            log.error("injected fault: %s %s in round %d, phase %s", self.name, f.kind, round_number, phase)
            logging.shutdown()
            os._exit(exitcodes.INJECTED_DROP if f.kind == "drop" else exitcodes.INJECTED_CRASH)

    def _slow(self, round_number: int) -> None:
        for f in self.cfg.faults:
            if f.kind == "slow" and f.round in (None, round_number):
                log.warning("injected fault: answering round %d %.1fs late", round_number, f.delay_seconds)
                time.sleep(f.delay_seconds)  # the fault *is* the delay


def main(config_path: Path, incarnation: int) -> int:
    # force: importing opacus installs a WARNING-level root handler, which would swallow our INFO lines
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
    torch.set_num_threads(1)  # many sites share few cores; one thread each avoids oversubscription
    cfg = ClientConfig.model_validate_json(config_path.read_text())
    try:
        client = SiteClient(cfg, incarnation)
    except (tdata.DataError, tmodels.ModelError, ValueError) as exc:
        log.error("site %s cannot start: %s", cfg.site.metadata.name, exc)
        return exitcodes.CONFIG_ERROR
    try:
        return client.run()
    except AggregatorUnreachable as exc:
        log.error("%s", exc)
        return exitcodes.JOB_FAILED
    except Rejected as exc:
        log.error("reply from the aggregator refused: %s", exc)
        return exitcodes.JOB_FAILED
