"""Reconcile one FederatedJob: plan it, issue its keys, create its children, gate its start on the
quorum, and write what its aggregator reports into status.

Level-triggered and idempotent: every pass starts from what is in the cluster, every child has a
name fixed by the job (:mod:`fedsec.controller.names`), and creation adopts what exists. The plan
(which sites are admitted) is decided once and recorded in status *before* anything is created, so
an operator killed anywhere in a pass makes the same children when it comes back, and deleting the
job can find every child it made in other namespaces.

The controller writes status only, never spec.
"""

from __future__ import annotations

import base64
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
from pydantic import ValidationError

from fedsec.api.client import FederatedClient
from fedsec.api.errors import ManifestError
from fedsec.api.job import FederatedJob
from fedsec.api.meta import API_VERSION
from fedsec.api.admitted import AdmittedPlan
from fedsec.api.plan import plan_job, select_clients
from fedsec.controller import children as ch
from fedsec.controller import status as st
from fedsec.controller.kube import Kube
from fedsec.controller.parse import describe, parse_client, parse_job
from fedsec.controller.sites import JOB_ADMITTED, JOB_DELETED, JOB_DONE, JOB_FAILED, JOB_REFUSED, JOB_TRAINING
from fedsec.controller.names import GRPC_PORT, ROLE_CLIENT, JobNames, job_key
from fedsec.crypto import keyring, pki
from fedsec.privacy import budget
from fedsec.privacy.admission import planned_epsilon
from fedsec.protocol.key_epochs import RotationPolicy, issued_epochs
from fedsec.runtime import admin

log = logging.getLogger("fedsec.operator")

ACTIVE_INTERVAL = 3.0  # seconds between passes while a job runs
STOP_GRACE_SECONDS = 300.0  # how long a finished job's aggregator waits for client pods still running
IDLE_INTERVAL = 10.0  # after it finished: only a rollback (a spec edit) or a deletion can change anything



def _decode(secret: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


def ledger_spent(fc_body: dict[str, Any], *, excluding: str) -> float:
    """What other jobs spent (or, while they run, plan to spend) at this site, from its status:
    two jobs admitted at once must not both count on the same remaining budget."""
    rows = ((fc_body.get("status") or {}).get("ledger") or {}).items()
    standing = budget.total(
        budget.job_standing(float(row.get("epsilon", 0.0)), row.get("planned"), bool(row.get("active")))
        for uid, row in rows if uid != excluding and isinstance(row, dict)
    )
    return standing.spent + standing.reserved  # the same rule as every charge at the site


@dataclass
class _Cache:
    """Children known to exist, per job uid: a pass does not re-read what it created before."""

    ensured: set[tuple[str, str, str]] = field(default_factory=set)
    identity_epochs: dict[tuple[str, str, str], frozenset[int]] = field(default_factory=dict)  # per Secret, as written
    operator_pki: tuple[bytes, bytes, bytes] | None = None
    aggregator_ip: str | None = None  # a Service's cluster IP never changes


class JobReconciler:
    def __init__(self, kube: Kube, settings: ch.Settings,
                 fetch_status: Callable[..., dict[str, Any]] = admin.fetch_status) -> None:
        self.kube = kube
        self.settings = settings
        self.fetch_status = fetch_status
        self._cache: dict[str, _Cache] = {}

    # -- the pass ------------------------------------------------------------------------------

    def reconcile(self, body: dict[str, Any]) -> float:
        """One pass over one job; returns the seconds until the next."""
        meta = body["metadata"]
        ns, name, uid, gen = meta["namespace"], meta["name"], meta["uid"], int(meta.get("generation") or 1)
        prior: dict[str, Any] = dict(body.get("status") or {})
        cache = self._cache.setdefault(uid, _Cache())
        names = JobNames(name, uid)
        owner = ch.Owner(API_VERSION, "FederatedJob", name, uid)
        obs = st.Observation(generation=gen)

        try:
            job = parse_job(body)
        except ValidationError as exc:
            obs.invalid = f"the spec is invalid: {describe(exc)}"
            self._write(body, prior, obs)
            return IDLE_INTERVAL

        fc_bodies = {(c["metadata"].get("namespace"), c["metadata"]["name"]): c for c in self.kube.list_clients()}
        clients = self._parse_clients(fc_bodies)
        plan = self._plan(body, job, prior, clients, fc_bodies, obs)
        if plan is None:
            self._write(body, prior, obs)
            return IDLE_INTERVAL
        admitted, quorum, aggregator_image = plan
        obs.rounds = job.spec.rounds
        obs.quorum = quorum  # (obs.admitted: every admitted site's name, set by _plan)

        final_before = (prior.get("phase") in st.FINAL and prior.get("observedGeneration") == gen
                        and prior.get("aggregatorStopped"))
        if final_before and not self._rollback_pending(job, prior):
            self._sync_sites(job, uid, admitted, obs.refused, fc_bodies, prior, prior.get("phase", ""))
            return IDLE_INTERVAL

        epoch = int(prior.get("keyEpoch") or 0)
        ca = self._ensure_keys(job, names, owner, cache)
        self._ensure_identities(job, names, owner, cache, ca, admitted, fc_bodies, epoch, obs)
        self._ensure_job_children(job, names, owner, cache)
        run = int(prior.get("clientRun", 0))
        rollback_status, reopen = self._rollback(job, names, prior, obs)
        refused_rollback = rollback_status is not None and rollback_status[0] != "RolledBack"
        if refused_rollback and prior.get("phase") in st.FINAL and prior.get("aggregatorStopped"):
            # The job stays as it ended; only the RolledBack condition says why nothing happened.
            self._refuse_rollback(body, prior, rollback_status)
            return IDLE_INTERVAL
        if reopen:
            run += 1
            prior["clientRun"] = run
            self.kube.patch_status("federatedjobs", name, ns, {"clientRun": run, "phase": st.RUNNING,
                                                               "aggregatorStopped": False})
        digest = self._ensure_aggregator_config(job, names, owner, obs.admitted, quorum, prior)
        site_plan = AdmittedPlan.of(job, uid, obs.admitted, quorum)  # what each admitted site checks its rounds by
        for site in admitted:
            self._ensure_site(job, names, site, fc_bodies, cache, run, site_plan)
        obs.sites_ready = self._sites_ready(uid)

        deployment = self.kube.get("apps/v1", "Deployment", names.aggregator, ns)
        if deployment is None and obs.sites_ready >= quorum:
            self.kube.ensure(ch.aggregator_deployment(names, ns, owner, self.settings, image=aggregator_image,
                                                      config_digest=digest, replicas=1, holdout_claim=ch.holdout_claim(job)))
            self._event(body, "Normal", "AggregatorCreated", f"{obs.sites_ready} of {len(admitted)} clients ready; "
                        f"the quorum is {quorum}: starting the aggregator")
            deployment = self.kube.get("apps/v1", "Deployment", names.aggregator, ns)
        if deployment is not None:
            obs.aggregator_started = True
            self._roll_aggregator(names, ns, deployment, digest, reopen or (rollback_status is not None and not refused_rollback))
            ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
            if ready:
                obs.aggregator, obs.aggregator_error = self._admin_status(names, ns, cache)
                reported = int((obs.aggregator or {}).get("keyEpoch") or 0)
                if reported > epoch:  # it rotated: issue the epoch after, retire the ones before
                    self._ensure_identities(job, names, owner, cache, ca, admitted, fc_bodies, reported, obs)
            else:
                obs.aggregator_error = "its pod is not ready yet"
        if rollback_status is not None:
            obs.rollback = rollback_status

        new = self._write(body, prior, obs)
        phase = new.get("phase", "")
        self._sync_sites(job, uid, admitted, obs.refused, fc_bodies, new, phase)
        if phase in st.FINAL and obs.aggregator is not None and deployment is not None:
            finished_at = prior.get("finishedAt") or time.time()
            if not prior.get("finishedAt"):
                self.kube.patch_status("federatedjobs", name, ns, {"finishedAt": finished_at})
                prior["finishedAt"] = finished_at
            # Stop the aggregator (its checkpoints stay, for a rollback) once the outcome is in
            # status and every client pod has heard it: a pod that a Job replaced late, still
            # starting when the job ended, learns the outcome from the aggregator, not from a
            # timeout. A pod that never asks does not hold it up for more than STOP_GRACE.
            if obs.aggregator.get("outcomeDelivered") and (
                    self._clients_done(uid) or time.time() - finished_at > STOP_GRACE_SECONDS):
                self.kube.patch("apps/v1", "Deployment", names.aggregator, ns, {"spec": {"replicas": 0}})
                self.kube.patch_status("federatedjobs", name, ns, {"aggregatorStopped": True})
                return IDLE_INTERVAL
        return ACTIVE_INTERVAL

    def _clients_done(self, uid: str) -> bool:
        """Every client Job Complete or Failed. Not "no active pod": between a killed pod and its
        replacement a Job has none, yet its site has still to hear the outcome."""
        jobs = self.kube.list("batch/v1", "Job", label_selector=f"fedsec.io/job-uid={uid},fedsec.io/role={ROLE_CLIENT}")
        return all(any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                       for c in (j.get("status") or {}).get("conditions") or []) for j in jobs)

    # -- planning ------------------------------------------------------------------------------

    def _parse_clients(self, fc_bodies: dict[tuple[str, str], dict[str, Any]]) -> list[FederatedClient]:
        out = []
        for (ns, name), b in sorted(fc_bodies.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
            try:
                out.append(parse_client(b))
            except ValidationError as exc:  # its own status says so (the FederatedClient timer)
                log.info("FederatedClient %s/%s is invalid and joins no job: %s", ns, name, describe(exc))
        return out

    def _plan(self, body: dict[str, Any], job: FederatedJob, prior: dict[str, Any], clients: list[FederatedClient],
              fc_bodies: dict[tuple[str, str], dict[str, Any]], obs: st.Observation) -> tuple[list[FederatedClient], int, str] | None:
        """The job's sites, quorum and aggregator image: decided once, recorded in status, read back after."""
        uid = body["metadata"]["uid"]
        recorded = prior.get("plan")
        if isinstance(recorded, dict) and recorded.get("uid") == uid:
            # Decided before: the sites still there are the ones admitted then (a site deleted
            # since is simply absent; the aggregator counts it as dropped).
            by_key = {f"{c.metadata.namespace}/{c.metadata.name}": c for c in clients}
            admitted = [by_key[k] for k in recorded.get("admitted", []) if k in by_key]
            obs.admitted = [k.partition("/")[2] for k in recorded.get("admitted", [])]
            obs.refused = dict(recorded.get("refused", {}))
            # The image the sites admitted the aggregator under, even if the operator's setting
            # changed since (a plan recorded before images were recorded: the setting).
            return admitted, int(recorded["quorum"]), str(recorded.get("aggregatorImage") or self.settings.runtime_image)
        spent = {}
        for c in select_clients(job, clients):
            fc = fc_bodies.get((c.metadata.namespace, c.metadata.name), {})
            spent[c.metadata.name] = ledger_spent(fc, excluding=uid)
        try:
            plan = plan_job(job, clients, spent, aggregator_image=self.settings.runtime_image)
        except ManifestError as exc:
            obs.invalid = "; ".join(f"{e.path}: {e.message}" for e in exc.errors)
            return None
        obs.refused = dict(plan.refused)
        record = {"uid": uid, "admitted": [f"{c.metadata.namespace}/{c.metadata.name}" for c in plan.admitted],
                  "refused": dict(plan.refused), "quorum": plan.quorum, "aggregatorImage": plan.aggregator_image}
        # Recorded before anything is created: see the module's docstring.
        self.kube.patch_status("federatedjobs", job.metadata.name, job.metadata.namespace,
                               {"plan": record, "phase": st.PENDING, "observedGeneration": obs.generation})
        prior["plan"] = record
        self._event(body, "Normal", "Planned", f"admitted {len(plan.admitted)} site(s), refused {len(plan.refused)}; "
                    f"a round needs {plan.quorum}" + "".join(f"; {n} refused: {r}" for n, r in sorted(plan.refused.items())))
        obs.admitted = list(plan.site_names)
        return list(plan.admitted), plan.quorum, self.settings.runtime_image

    # -- keys ----------------------------------------------------------------------------------

    def _ensure_keys(self, job: FederatedJob, names: JobNames, owner: ch.Owner, cache: _Cache) -> pki.CA:
        """The job CA and the operator's admin key. The CA key never leaves the CA Secret; each pod
        mounts only its own participant's Secret (:meth:`_ensure_identities`)."""
        ns = job.metadata.namespace
        ca_obj = self.kube.get("v1", "Secret", names.ca_secret, ns)
        if ca_obj is None:
            fresh = pki.new_ca(f"{ns}/{job.metadata.name}")
            manifest = ch.secret(names.ca_secret, ns, names.labels(), owner,
                                 {"ca.crt": fresh.cert_pem, "ca.key": pki.ca_key_pem(fresh)})
            ca_obj, _ = self.kube.ensure(manifest)  # a concurrent creator wins: use what is stored
        ca = pki.load_ca(_decode(ca_obj, "ca.key"), _decode(ca_obj, "ca.crt"))
        self._ensure_participant(cache, ca, names.operator_secret, ns, names.labels("operator"), owner,
                                 pki.OPERATOR, [], identities=None)
        return ca

    def _ensure_identities(self, job: FederatedJob, names: JobNames, owner: ch.Owner, cache: _Cache, ca: pki.CA,
                           admitted: list[FederatedClient], fc_bodies: dict[tuple[str, str], dict[str, Any]],
                           epoch: int, obs: st.Observation) -> None:
        """Every participant's Secret holds the identity keys of the aggregator's key epoch and, when
        keys rotate, the next one (the rules: :mod:`fedsec.protocol.key_epochs`)."""
        r = job.spec.keys.rotation
        wanted = issued_epochs(epoch, RotationPolicy(r.every_rounds, r.grace_rounds))
        ns = job.metadata.namespace
        svc = names.aggregator
        hosts = [svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.{self.settings.cluster_domain}"]
        self._ensure_participant(cache, ca, names.aggregator_secret, ns, names.labels("aggregator"), owner,
                                 pki.AGGREGATOR, hosts, identities=wanted)
        for site in admitted:
            s, sns = site.metadata.name, site.metadata.namespace
            fc_owner = ch.Owner(API_VERSION, "FederatedClient", s, fc_bodies[(sns, s)]["metadata"]["uid"])
            self._ensure_participant(cache, ca, names.site_secret(s), sns, names.labels(ROLE_CLIENT, s), fc_owner, s, [],
                                     identities=wanted)
        obs.keys_ready = True
        obs.keys_message = f"CA and keys of the aggregator, the operator and {len(admitted)} site(s) issued"

    def _ensure_participant(self, cache: _Cache, ca: pki.CA, secret_name: str, ns: str, labels: dict[str, str],
                            owner: ch.Owner | None, cn: str, hosts: list[str], *,
                            identities: frozenset[int] | None) -> None:
        """One participant's Secret: its TLS key and, unless ``identities`` is None (the operator's
        own admin key), its identity keys of those epochs. A Secret that exists keeps its TLS key;
        its identity keys are brought to ``identities`` by one patch that adds the new epochs and
        removes the older ones (kubelet swaps a Secret volume atomically)."""
        key = ("Secret", ns, secret_name)
        if key in cache.ensured and (identities is None or cache.identity_epochs.get(key) == identities):
            return
        existing = self.kube.get("v1", "Secret", secret_name, ns)
        if existing is None:
            tls = pki.issue_tls(ca, cn, hosts)
            files = {"ca.crt": ca.cert_pem, "tls.crt": tls.cert_pem, "tls.key": tls.key_pem}
            for epoch in sorted(identities or ()):
                files.update(keyring.identity_files(ca, cn, epoch))
            # The identity keys change at every rotation; the operator's admin key never does.
            self.kube.ensure(ch.secret(secret_name, ns, labels, owner, files, immutable=identities is None))
        elif identities is not None:
            patch = ch.identity_patch((existing.get("data") or {}).keys(), identities,
                                      lambda epoch: keyring.identity_files(ca, cn, epoch))
            if patch is not None:
                self.kube.patch("v1", "Secret", secret_name, ns, patch)
                log.info("identity keys of %s in Secret %s/%s: epochs %s", cn, ns, secret_name, sorted(identities))
        cache.ensured.add(key)
        if identities is not None:
            cache.identity_epochs[key] = identities

    # -- children ------------------------------------------------------------------------------

    def _ensure_once(self, cache: _Cache, manifest: dict[str, Any]) -> None:
        key = (manifest["kind"], manifest["metadata"]["namespace"], manifest["metadata"]["name"])
        if key not in cache.ensured:
            self.kube.ensure(manifest)
            cache.ensured.add(key)

    def _ensure_job_children(self, job: FederatedJob, names: JobNames, owner: ch.Owner, cache: _Cache) -> None:
        ns = job.metadata.namespace
        self._ensure_once(cache, ch.service_account(names, ns, owner))
        self._ensure_once(cache, ch.checkpoint_claim(names, ns, owner, self.settings))
        self._ensure_once(cache, ch.service(names, ns, owner))
        self._ensure_once(cache, ch.network_policy(names, ns, owner, self.settings))

    def _ensure_aggregator_config(self, job: FederatedJob, names: JobNames, owner: ch.Owner,
                                  sites: list[str], quorum: int, prior: dict[str, Any]) -> str:
        ns = job.metadata.namespace
        files = {ch.AGGREGATOR_CONFIG: ch.aggregator_config(
            job, job.metadata.uid or "", sites, quorum,
            rollback_request=self._rollback_request(job, prior) if self._rollback_accepted(job, prior) else None)}
        digest = ch.config_hash(files)
        cm, created = self.kube.ensure(ch.config_map(names.aggregator, ns, names.labels("aggregator"), owner, files))
        if not created and (cm.get("data") or {}) != files:
            self.kube.patch("v1", "ConfigMap", names.aggregator, ns, {"data": files})
        return digest

    def _ensure_site(self, job: FederatedJob, names: JobNames, site: FederatedClient,
                     fc_bodies: dict[tuple[str, str], dict[str, Any]], cache: _Cache, run: int,
                     site_plan: AdmittedPlan) -> None:
        s, sns = site.metadata.name, site.metadata.namespace
        fc = fc_bodies[(sns, s)]
        fc_owner = ch.Owner(API_VERSION, "FederatedClient", s, fc["metadata"]["uid"])
        labels = names.labels(ROLE_CLIENT, s)
        self._ensure_once(cache, ch.ledger_claim_manifest(site, fc_owner, self.settings))
        # Before the Job: its pods are never up without the fence.
        self._ensure_once(cache, ch.client_network_policy(names, site, job.metadata.namespace, fc_owner))
        files = {ch.CLIENT_CONFIG: ch.client_config(job, job.metadata.uid or "", site, names, self.settings, site_plan)}
        self._ensure_once(cache, ch.config_map(names.site(s), sns, labels, fc_owner, files))
        manifest = ch.client_job(names, site, fc_owner, self.settings)
        if run:
            manifest["metadata"]["name"] = f"{manifest['metadata']['name']}-{run}"
        self._ensure_once(cache, manifest)

    def _sites_ready(self, uid: str) -> int:
        pods = self.kube.list("v1", "Pod", label_selector=f"fedsec.io/job-uid={uid},fedsec.io/role={ROLE_CLIENT}")
        return len({p["metadata"]["labels"].get("fedsec.io/site") for p in pods
                    if (p.get("status") or {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")})

    # -- aggregator ----------------------------------------------------------------------------

    def _roll_aggregator(self, names: JobNames, ns: str, deployment: dict[str, Any], digest: str, wake: bool) -> None:
        """A changed config (a spec edit, a rollback) restarts the aggregator: it resumes from its
        checkpoints and applies what changed at a round boundary."""
        tmpl = deployment["spec"]["template"]["metadata"].get("annotations") or {}
        patch: dict[str, Any] = {}
        if tmpl.get(ch.CONFIG_HASH) != digest:
            patch = {"spec": {"template": {"metadata": {"annotations": {ch.CONFIG_HASH: digest}}}}}
        if wake and int(deployment["spec"].get("replicas") or 0) == 0:
            patch.setdefault("spec", {})["replicas"] = 1
        if patch:
            self.kube.patch("apps/v1", "Deployment", names.aggregator, ns, patch)

    def _admin_status(self, names: JobNames, ns: str, cache: _Cache) -> tuple[dict[str, Any] | None, str | None]:
        if cache.operator_pki is None:
            sec = self.kube.get("v1", "Secret", names.operator_secret, ns)
            if sec is None:
                return None, "the operator's admin certificate is missing"
            cache.operator_pki = (_decode(sec, "ca.crt"), _decode(sec, "tls.crt"), _decode(sec, "tls.key"))
        if cache.aggregator_ip is None:
            svc = self.kube.get("v1", "Service", names.aggregator, ns)
            cache.aggregator_ip = (svc or {}).get("spec", {}).get("clusterIP") or None
        ip = cache.aggregator_ip
        if not ip:
            return None, "its Service has no cluster IP yet"
        ca_pem, cert_pem, key_pem = cache.operator_pki
        try:
            return self.fetch_status(f"{ip}:{GRPC_PORT}", ca_pem=ca_pem, cert_pem=cert_pem, key_pem=key_pem), None
        except grpc.RpcError as exc:
            return None, f"{exc.code().name}: {exc.details()}"  # type: ignore[attr-defined]
        except ValueError as exc:
            return None, str(exc)

    # -- rollback ------------------------------------------------------------------------------

    @staticmethod
    def _rollback_request(job: FederatedJob, prior: dict[str, Any]) -> str:
        """A request is identified by the generation that set ``toRound`` to its value: other spec
        edits later must not roll back again."""
        rb = job.spec.rollback
        assert rb is not None
        seen = prior.get("rollbackSeen") or {}
        gen = seen.get("generation") if seen.get("toRound") == rb.to_round else job.metadata.generation
        return f"{gen}/{rb.to_round}"

    @staticmethod
    def _rollback_accepted(job: FederatedJob, prior: dict[str, Any]) -> bool:
        """Only a request the operator checked against the kept checkpoints reaches the aggregator."""
        rb = job.spec.rollback
        return rb is not None and (prior.get("rollbackSeen") or {}).get("toRound") == rb.to_round

    def _refuse_rollback(self, body: dict[str, Any], prior: dict[str, Any], why: tuple[str, str]) -> None:
        gen = int(body["metadata"].get("generation") or 1)
        before = st.by_type(prior.get("conditions", []))
        cond = st.condition(before, "RolledBack", False, why[0], why[1], gen, st.now_rfc3339())
        old = before.get("RolledBack") or {}
        if (old.get("reason"), old.get("message")) == (cond["reason"], cond["message"]):
            return
        conds = [c for c in prior.get("conditions", []) if c.get("type") != "RolledBack"] + [cond]
        self.kube.patch_status("federatedjobs", body["metadata"]["name"], body["metadata"]["namespace"],
                               {"conditions": conds})
        self._event(body, "Warning", why[0], why[1])

    def _rollback_pending(self, job: FederatedJob, prior: dict[str, Any]) -> bool:
        rb = job.spec.rollback
        return rb is not None and (prior.get("rollbackSeen") or {}).get("toRound") != rb.to_round

    def _rollback(self, job: FederatedJob, names: JobNames, prior: dict[str, Any],
                  obs: st.Observation) -> tuple[tuple[str, str] | None, bool]:
        """((reason, message) for the RolledBack condition or None, whether the job reopens)."""
        rb = job.spec.rollback
        if rb is None or not self._rollback_pending(job, prior):
            return None, False
        known = prior.get("checkpointRounds")
        if known is not None and rb.to_round not in known:
            return ("CheckpointNotFound", f"spec.rollback.toRound {rb.to_round} has no checkpoint; "
                    f"kept rounds: {known}; pick one of them"), False
        seen = {"toRound": rb.to_round, "generation": job.metadata.generation}
        self.kube.patch_status("federatedjobs", job.metadata.name, job.metadata.namespace, {"rollbackSeen": seen})
        prior["rollbackSeen"] = seen
        self._event({"apiVersion": API_VERSION, "kind": "FederatedJob",
                     "metadata": {"name": job.metadata.name, "namespace": job.metadata.namespace, "uid": job.metadata.uid}},
                    "Normal", "RollbackRequested", f"rolling back to round {rb.to_round} (spec.rollback.toRound)")
        return ("RolledBack", f"rolling back to round {rb.to_round} as spec.rollback.toRound asks"), \
            prior.get("phase") in st.FINAL

    # -- status --------------------------------------------------------------------------------

    def _write(self, body: dict[str, Any], prior: dict[str, Any], obs: st.Observation) -> dict[str, Any]:
        meta = body["metadata"]
        new = st.job_status(obs, prior)
        if obs.aggregator is not None:
            new["checkpointRounds"] = obs.aggregator.get("checkpointRounds", [])
        comparable = {k: v for k, v in new.items() if k != "conditions"}
        old = {k: prior.get(k) for k in comparable}
        if comparable != old or st.conditions_differ(prior.get("conditions", []), new["conditions"]):
            self.kube.patch_status("federatedjobs", meta["name"], meta["namespace"], new)
            for type_, reason, message in st.transitions(prior, new):
                self._event(body, type_, reason, message)
        return {**prior, **new}

    def _event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.kube.event({"apiVersion": API_VERSION, "kind": "FederatedJob", "metadata": body["metadata"]},
                        type_, reason, message)

    def _sync_sites(self, job: FederatedJob, uid: str, admitted: list[FederatedClient], refused: dict[str, str],
                    fc_bodies: dict[tuple[str, str], dict[str, Any]], status: dict[str, Any], phase: str) -> None:
        """Each selected site's own record of this job: admitted or refused (with the reason), and
        its ledger row. Ledger rows are never removed: the budget outlives the job."""
        key = job_key(job.metadata.namespace, job.metadata.name)
        eps = status.get("epsilon") or {}
        planned = planned_epsilon(job)
        private = job.spec.privacy.mechanism != "none"
        admitted_names = {c.metadata.name for c in admitted}
        for (sns, s), fc in fc_bodies.items():
            selected = job.spec.clients.selector.matches((fc["metadata"].get("labels") or {}))
            if not selected or (s not in admitted_names and s not in refused):
                continue
            fst = fc.get("status") or {}
            if s in refused:
                row = {"uid": uid, "state": JOB_REFUSED, "reason": refused[s]}
            else:
                state = {st.SUCCEEDED: JOB_DONE, st.FAILED: JOB_FAILED, st.RUNNING: JOB_TRAINING}.get(phase, JOB_ADMITTED)
                row = {"uid": uid, "state": state, "reason": ""}
            patch: dict[str, Any] = {}
            if (fst.get("jobs") or {}).get(key) != row:
                patch["jobs"] = {key: row}
            if private and s in admitted_names:
                ledger_row = {"job": key, "epsilon": round(float(eps.get(s, 0.0)), 6),
                              "planned": None if math.isinf(planned) else planned, "active": phase not in st.FINAL}
                if (fst.get("ledger") or {}).get(uid) != ledger_row:
                    patch["ledger"] = {uid: ledger_row}
            if patch:
                self.kube.patch_status("federatedclients", s, sns, patch)

    # -- deletion ------------------------------------------------------------------------------

    def cleanup(self, body: dict[str, Any]) -> None:
        """Remove what lives outside the job's namespace (owner references cannot cross it); the
        rest goes by garbage collection. The sites' ledgers and their rows stay."""
        meta = body["metadata"]
        uid, ns, name = meta["uid"], meta["namespace"], meta["name"]
        names = JobNames(name, uid)
        plan = (body.get("status") or {}).get("plan") or {}
        key = job_key(ns, name)
        for site_key in plan.get("admitted", []):
            sns, _, s = site_key.partition("/")
            for job in self.kube.list("batch/v1", "Job", namespace=sns, label_selector=f"fedsec.io/job-uid={uid}"):
                self.kube.delete("batch/v1", "Job", job["metadata"]["name"], sns)
            self.kube.delete("v1", "ConfigMap", names.site(s), sns)
            self.kube.delete("v1", "Secret", names.site_secret(s), sns)
            self.kube.delete("networking.k8s.io/v1", "NetworkPolicy", names.site(s), sns)
            try:
                self.kube.patch_status("federatedclients", s, sns, {"jobs": {key: {"uid": uid, "state": JOB_DELETED, "reason": ""}}})
            except Exception as exc:  # the site may be gone too
                log.info("could not mark %s deleted at %s: %s", key, site_key, exc)
        self._cache.pop(uid, None)

