"""``fedsec operator``: the kopf handlers and how the operator is started.

One daemon per FederatedJob runs :class:`~fedsec.controller.reconcile.JobReconciler` passes until
the job is deleted; a finalizer lets the deletion remove the children that live in the sites'
namespaces. Every change to a FederatedClient recomputes the site's phase and budget in its status. kopf's
own bookkeeping goes to annotations under ``fedsec.io/``; the spec is never written.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import kopf
from kubernetes.client.rest import ApiException
from prometheus_client import Counter, Gauge, start_http_server

from fedsec.api.meta import GROUP, VERSION
from fedsec.controller import children as ch
from fedsec.controller import sites
from fedsec.controller.kube import Kube, api_client
from fedsec.controller.reconcile import JobReconciler
from fedsec.controller.status import now_rfc3339

log = logging.getLogger("fedsec.operator")

RECONCILES = Counter("fedsec_operator_reconciles_total", "Reconcile passes over FederatedJobs", ["result"])
JOBS = Gauge("fedsec_operator_jobs", "FederatedJobs this operator reconciles")
ERROR_BACKOFF_SECONDS = 5.0


def settings_from_env() -> ch.Settings:
    env = os.environ
    d = ch.Settings()
    return ch.Settings(
        runtime_image=env.get("FEDSEC_RUNTIME_IMAGE", d.runtime_image),
        runtime_image_pull_policy=env.get("FEDSEC_RUNTIME_IMAGE_PULL_POLICY", d.runtime_image_pull_policy),
        operator_namespace=env.get("FEDSEC_OPERATOR_NAMESPACE", d.operator_namespace),
        cluster_domain=env.get("FEDSEC_CLUSTER_DOMAIN", d.cluster_domain),
        checkpoint_size=env.get("FEDSEC_CHECKPOINT_SIZE", d.checkpoint_size),
        ledger_size=env.get("FEDSEC_LEDGER_SIZE", d.ledger_size),
        storage_class=env.get("FEDSEC_STORAGE_CLASS") or None,
    )


def register(registry: kopf.OperatorRegistry, reconciler: JobReconciler, kube: Kube) -> None:
    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = "fedsec.io/cleanup"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="fedsec.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="fedsec.io", key="last-handled-configuration")
        settings.execution.max_workers = 64  # each job's daemon holds one thread
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 60

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)  # in-cluster ServiceAccount, else the kubeconfig

    @kopf.daemon(GROUP, VERSION, "federatedjobs", registry=registry, cancellation_timeout=30.0)
    def job_daemon(stopped: kopf.DaemonStopped, body: kopf.Body, **_: Any) -> None:
        JOBS.inc()
        last_error = ""
        try:
            while not stopped:
                if body.metadata.get("deletionTimestamp"):
                    return
                try:
                    delay = reconciler.reconcile(copy.deepcopy(dict(body)))
                    RECONCILES.labels("ok").inc()
                except ApiException as exc:
                    # Conflicts and transient API errors: the next pass starts over from the cluster.
                    RECONCILES.labels("api-error").inc()
                    log.warning("reconciling %s/%s: API error %s %s", body.metadata.namespace, body.metadata.name,
                                exc.status, exc.reason)
                    delay = ERROR_BACKOFF_SECONDS
                except Exception as exc:
                    RECONCILES.labels("error").inc()
                    log.exception("reconciling %s/%s failed; retrying", body.metadata.namespace, body.metadata.name)
                    message = f"{type(exc).__name__}: {exc}"[:1000]
                    if message != last_error:  # once per distinct failure, not every few seconds
                        kube.event({"apiVersion": f"{GROUP}/{VERSION}", "kind": "FederatedJob",
                                    "metadata": copy.deepcopy(dict(body.metadata))},
                                   "Warning", "ReconcileError", f"{message}; retrying (operator log has the trace)")
                        last_error = message
                    delay = ERROR_BACKOFF_SECONDS
                stopped.wait(delay)
        finally:
            JOBS.dec()

    @kopf.on.delete(GROUP, VERSION, "federatedjobs", registry=registry)
    def job_deleted(body: kopf.Body, **_: Any) -> None:
        reconciler.cleanup(copy.deepcopy(dict(body)))

    # An event handler, not a timer: kopf puts a finalizer on whatever has timers or daemons, and a
    # site must stay deletable while the operator is down. The jobs' status writes are events too,
    # and a write that changes nothing raises no new one.
    @kopf.on.event(GROUP, VERSION, "federatedclients", registry=registry)
    def site_changed(body: kopf.Body, type: str | None, **_: Any) -> None:
        if type == "DELETED" or body.metadata.get("deletionTimestamp"):
            return
        b = copy.deepcopy(dict(body))
        new = sites.site_status(b, now=now_rfc3339())
        if sites.changed(b.get("status") or {}, new):
            kube.patch_status("federatedclients", b["metadata"]["name"], b["metadata"]["namespace"], new)


def run(*, namespaces: list[str], liveness_port: int | None, metrics_port: int | None, verbose: bool = False) -> int:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kopf.objects", "kubernetes.client.rest", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    kube = Kube(api_client())
    settings = settings_from_env()
    registry = kopf.OperatorRegistry()
    register(registry, JobReconciler(kube, settings), kube)
    if metrics_port:
        start_http_server(metrics_port)
    log.info("fedsec operator: runtime image %s, %s", settings.runtime_image,
             "all namespaces" if not namespaces else f"namespaces {', '.join(namespaces)}")
    kopf.run(
        registry=registry,
        standalone=True,  # one replica (the chart's Recreate strategy); no peering objects needed
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None,
    )  # kopf stops on SIGINT/SIGTERM: daemons are told, and in-flight passes finish or are cancelled
    return 0
