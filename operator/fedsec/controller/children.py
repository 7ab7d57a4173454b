"""The Kubernetes objects a FederatedJob becomes, as plain manifests. Pure: no API calls.

The aggregator and the clients get the same config files the local runner writes
(:mod:`fedsec.runtime.config`), rendered into ConfigMaps; their keys come from Secrets mounted
read-only. The pods run without a ServiceAccount token, as a non-root user (the runtime image's),
with a read-only root filesystem and no capabilities: the processes need nothing from the API
server and nothing from the host.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable

from fedsec.api.client import FederatedClient
from fedsec.api.job import FederatedJob
from fedsec.crypto import keyring
from fedsec.controller.names import (
    GRPC_PORT, METRICS_PORT, OPERATOR_POD_LABEL, ROLE_AGGREGATOR, ROLE_CLIENT, JobNames, ledger_claim,
)
from fedsec.api.admitted import AdmittedPlan
from fedsec.runtime.config import AggregatorConfig, ClientConfig, PkiPaths

CONFIG_DIR = PurePosixPath("/etc/fedsec/config")
PKI_DIR = PurePosixPath("/etc/fedsec/pki")
STATE_DIR = PurePosixPath("/var/lib/fedsec/state")
LEDGER_DIR = PurePosixPath("/var/lib/fedsec/ledger")
DATA_DIR = PurePosixPath("/var/lib/fedsec/data")
AGGREGATOR_CONFIG = "aggregator.json"
CLIENT_CONFIG = "client.json"
CONFIG_HASH = "fedsec.io/config-hash"
PKI_FILES = ("ca.crt", "tls.crt", "tls.key")  # and id-<epoch>.crt/.key (fedsec.crypto.keyring)


@dataclass(frozen=True)
class Settings:
    """What the operator's installation decides (Helm values → environment), not the job."""

    runtime_image: str = "ghcr.io/fedsec/fedsec-runtime:0.1.0"
    runtime_image_pull_policy: str = "IfNotPresent"
    operator_namespace: str = "fedsec-system"
    cluster_domain: str = "cluster.local"
    checkpoint_size: str = "1Gi"
    ledger_size: str = "64Mi"
    storage_class: str | None = None
    client_backoff_limit: int = 6


@dataclass(frozen=True)
class Owner:
    api_version: str
    kind: str
    name: str
    uid: str

    def ref(self, controller: bool = True) -> dict[str, Any]:
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name, "uid": self.uid,
                "controller": controller, "blockOwnerDeletion": True}


def _meta(name: str, namespace: str, labels: dict[str, str], owner: Owner | None,
          annotations: dict[str, str] | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if owner is not None:
        m["ownerReferences"] = [owner.ref()]
    if annotations:
        m["annotations"] = dict(annotations)
    return m


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def secret(name: str, namespace: str, labels: dict[str, str], owner: Owner | None, files: dict[str, bytes], *,
           immutable: bool = True) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(name, namespace, labels, owner),
            "type": "Opaque", "immutable": immutable, "data": {k: b64(v) for k, v in sorted(files.items())}}


def identity_patch(keys: Iterable[str], wanted: frozenset[int],
                   issue: Callable[[int], dict[str, bytes]]) -> dict[str, Any] | None:
    """The merge patch that brings a participant Secret holding ``keys`` to the identity keys of the
    ``wanted`` epochs: the missing epochs added (``issue`` makes one epoch's files), the older ones
    removed (null deletes a key); None when it holds them already."""
    held = keyring.epochs_in(keys)
    data: dict[str, str | None] = {}
    for epoch in sorted(wanted - held):
        data.update({k: b64(v) for k, v in issue(epoch).items()})
    for epoch in sorted(keyring.stale_epochs(held, wanted)):
        data.update({keyring.cert_file(epoch): None, keyring.key_file(epoch): None})
    return {"data": data} if data else None


def config_map(name: str, namespace: str, labels: dict[str, str], owner: Owner | None, files: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(name, namespace, labels, owner), "data": files}


def config_hash(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def _pki_paths() -> PkiPaths:
    return PkiPaths.under(Path(PKI_DIR / "ca.crt"), Path(PKI_DIR))


def aggregator_address(names: JobNames, namespace: str, settings: Settings) -> str:
    return f"{names.aggregator}.{namespace}.svc.{settings.cluster_domain}"


def job_in_pod(job: FederatedJob) -> FederatedJob:
    """The job as the aggregator's pod sees it: a holdout file on a claim is read where it is mounted."""
    h = job.spec.evaluation.holdout
    if h is None or h.file is None or h.file.claim_name is None:
        return job
    doc = job.model_dump(by_alias=True, exclude_none=True)
    doc["spec"]["evaluation"]["holdout"]["file"].update(path=str(DATA_DIR / h.file.path))
    del doc["spec"]["evaluation"]["holdout"]["file"]["claimName"]
    return FederatedJob.model_validate(doc)


def holdout_claim(job: FederatedJob) -> str | None:
    h = job.spec.evaluation.holdout
    return None if h is None or h.file is None else h.file.claim_name


def aggregator_config(job: FederatedJob, job_uid: str, sites: list[str], quorum: int,
                      rollback_request: str | None = None) -> str:
    cfg = AggregatorConfig(
        job=job_in_pod(job), job_uid=job_uid, sites=sites, quorum=quorum, rollback_request=rollback_request,
        listen=f"0.0.0.0:{GRPC_PORT}", metrics_listen=f"0.0.0.0:{METRICS_PORT}",
        state_dir=Path(STATE_DIR),
        pki=_pki_paths(), serve_after_finish=True,
    )
    return cfg.model_dump_json(by_alias=True, indent=1)


def site_in_pod(site: FederatedClient) -> FederatedClient:
    """The site as its pod sees it: a file on a claim is read where the claim is mounted."""
    f = site.spec.data.file
    if f is None or f.claim_name is None:
        return site
    doc = site.model_dump(by_alias=True, exclude_none=True)
    doc["spec"]["data"]["file"].update(path=str(DATA_DIR / f.path))
    del doc["spec"]["data"]["file"]["claimName"]  # mounted already: the pod reads a plain file
    return FederatedClient.model_validate(doc)


def client_config(job: FederatedJob, job_uid: str, site: FederatedClient, names: JobNames, settings: Settings,
                  plan: AdmittedPlan) -> str:
    """The site's client process config, with ``plan``: what the site admitted, its reference."""
    cfg = ClientConfig(
        job=job, job_uid=job_uid, site=site_in_pod(site), plan=plan,
        aggregator=f"{aggregator_address(names, job.metadata.namespace, settings)}:{GRPC_PORT}",
        server_name="aggregator", pki=_pki_paths(),
        ledger_dir=Path(LEDGER_DIR),
        give_up_seconds=900.0,
    )
    return cfg.model_dump_json(by_alias=True, indent=1)


_POD_SECURITY = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
}
_TMP = ({"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}, {"name": "tmp", "mountPath": "/tmp"})


def _runtime_container(role: str, image: str, settings: Settings, config_file: str, *, env: dict[str, str],
                       resources: dict[str, Any], writable: tuple[str, PurePosixPath]) -> dict[str, Any]:
    """``fedsec aggregator|client --config …`` with its config and keys mounted read-only, one
    writable volume, a scratch /tmp, and nothing else the image could need from the node."""
    name, path = writable
    return {
        "name": role,
        "image": image,
        "imagePullPolicy": settings.runtime_image_pull_policy,
        "args": [role, "--config", str(CONFIG_DIR / config_file)],
        "env": [{"name": k, "value": v} for k, v in {**env, "MPLCONFIGDIR": "/tmp/matplotlib"}.items()],
        "resources": resources,
        "securityContext": copy.deepcopy(_CONTAINER_SECURITY),
        "volumeMounts": [
            {"name": "config", "mountPath": str(CONFIG_DIR), "readOnly": True},
            {"name": "pki", "mountPath": str(PKI_DIR), "readOnly": True},
            {"name": name, "mountPath": str(path)},
            copy.deepcopy(_TMP[1]),
        ],
    }


def _pki_volume(secret_name: str) -> dict[str, Any]:
    return {"name": "pki", "secret": {"secretName": secret_name, "defaultMode": 0o440}}


def service_account(names: JobNames, namespace: str, owner: Owner) -> dict[str, Any]:
    """The aggregator's identity towards the API server: none. No token is mounted, and nothing is
    bound to it; it exists so that the pod does not run as the namespace's ``default``."""
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": _meta(names.service_account, namespace, names.labels(ROLE_AGGREGATOR), owner),
            "automountServiceAccountToken": False}


def checkpoint_claim(names: JobNames, namespace: str, owner: Owner, settings: Settings) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": settings.checkpoint_size}}}
    if settings.storage_class:
        spec["storageClassName"] = settings.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": _meta(names.checkpoints, namespace, names.labels(ROLE_AGGREGATOR), owner), "spec": spec}


def ledger_claim_manifest(site: FederatedClient, owner: Owner, settings: Settings) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": settings.ledger_size}}}
    if settings.storage_class:
        spec["storageClassName"] = settings.storage_class
    labels = {"app.kubernetes.io/managed-by": "fedsec-operator", "fedsec.io/site": site.metadata.name}
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": _meta(ledger_claim(site.metadata.name), site.metadata.namespace, labels, owner), "spec": spec}


def service(names: JobNames, namespace: str, owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(names.aggregator, namespace, names.labels(ROLE_AGGREGATOR), owner),
        "spec": {
            "selector": names.labels(ROLE_AGGREGATOR),
            "ports": [
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def network_policy(names: JobNames, namespace: str, owner: Owner, settings: Settings) -> dict[str, Any]:
    """Ingress to the aggregator's round port from this job's client pods (any namespace: sites
    live in their own) and the operator; its metrics port from inside the cluster; no egress at
    all (it calls nothing: clients call it)."""
    key, value = OPERATOR_POD_LABEL
    clients = {"namespaceSelector": {}, "podSelector": {"matchLabels": names.labels(ROLE_CLIENT)}}
    operator = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": settings.operator_namespace}},
                "podSelector": {"matchLabels": {key: value}}}
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": _meta(names.aggregator, namespace, names.labels(ROLE_AGGREGATOR), owner),
        "spec": {
            "podSelector": {"matchLabels": names.labels(ROLE_AGGREGATOR)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [clients, operator], "ports": [{"protocol": "TCP", "port": GRPC_PORT}]},
                {"from": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": METRICS_PORT}]},
            ],
            "egress": [],
        },
    }


# Where the cluster's DNS answers: CoreDNS and kube-dns both carry this label in kube-system.
DNS_NAMESPACE = "kube-system"
DNS_POD_LABELS = {"k8s-app": "kube-dns"}
DNS_PORT = 53


def client_network_policy(names: JobNames, site: FederatedClient, job_namespace: str, owner: Owner) -> dict[str, Any]:
    """A site's client pods for this job only dial out, and only where the job needs them to: the
    job's aggregator pods on the round port, and the cluster DNS to find them. No ingress at all
    (nothing calls a client). Should the job's model or any other code in the pod misbehave, it
    cannot ship the site's data or keys anywhere else over the network.

    Lives in the site's namespace beside the client Job, owned by the FederatedClient like it."""
    s = site.metadata.name
    labels = names.labels(ROLE_CLIENT, s)
    aggregator = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": job_namespace}},
                  "podSelector": {"matchLabels": names.labels(ROLE_AGGREGATOR)}}
    dns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": DNS_NAMESPACE}},
           "podSelector": {"matchLabels": dict(DNS_POD_LABELS)}}
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": _meta(names.site(s), site.metadata.namespace, labels, owner),
        "spec": {
            "podSelector": {"matchLabels": labels},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [
                # Policies apply after the Service's address translation: the pods, not the Service IP.
                {"to": [aggregator], "ports": [{"protocol": "TCP", "port": GRPC_PORT}]},
                {"to": [dns], "ports": [{"protocol": "UDP", "port": DNS_PORT}, {"protocol": "TCP", "port": DNS_PORT}]},
            ],
        },
    }


def aggregator_deployment(names: JobNames, namespace: str, owner: Owner, settings: Settings, *, image: str,
                          config_digest: str, replicas: int, holdout_claim: str | None = None) -> dict[str, Any]:
    """``image``: the one the job's plan admitted the aggregator under (sites may restrict it)."""
    labels = names.labels(ROLE_AGGREGATOR)
    container = _runtime_container(
        "aggregator", image, settings, AGGREGATOR_CONFIG,
        env={"MALLOC_ARENA_MAX": "2"},
        resources={"requests": {"cpu": "100m", "memory": "384Mi"}, "limits": {"memory": "2Gi"}},
        writable=("state", STATE_DIR),
    )
    container["ports"] = [{"name": "grpc", "containerPort": GRPC_PORT}, {"name": "metrics", "containerPort": METRICS_PORT}]
    container["readinessProbe"] = {"tcpSocket": {"port": GRPC_PORT}, "periodSeconds": 2, "failureThreshold": 3}
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": names.aggregator}},
        _pki_volume(names.aggregator_secret),
        {"name": "state", "persistentVolumeClaim": {"claimName": names.checkpoints}},
        copy.deepcopy(_TMP[0]),
    ]
    if holdout_claim is not None:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": holdout_claim, "readOnly": True}})
        container["volumeMounts"].append({"name": "data", "mountPath": str(DATA_DIR), "readOnly": True})
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(names.aggregator, namespace, labels, owner),
        "spec": {
            "replicas": replicas,
            "strategy": {"type": "Recreate"},  # one writer of the checkpoint volume, ever
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": {CONFIG_HASH: config_digest}},
                "spec": {
                    "serviceAccountName": names.service_account,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {**copy.deepcopy(_POD_SECURITY), "fsGroup": 65532},
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def client_job(names: JobNames, site: FederatedClient, owner: Owner, settings: Settings) -> dict[str, Any]:
    """One site's part in one job: a batch Job in the site's namespace, owned by its
    FederatedClient (the job's own namespace may differ, and owners cannot cross namespaces).
    A crashed or killed pod is replaced (``backoffLimit``) and rejoins the rounds."""
    s = site.metadata.name
    name = names.site(s)
    labels = names.labels(ROLE_CLIENT, s)
    container = _runtime_container(
        "client", site.spec.image or settings.runtime_image, settings, CLIENT_CONFIG, env={},
        # Modest requests by default: a site's pod mostly waits for the others; a site that
        # trains a large model says so in its FederatedClient's spec.resources.
        resources=site.spec.resources or {"requests": {"cpu": "100m", "memory": "256Mi"}},
        writable=("ledger", LEDGER_DIR),
    )
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {**copy.deepcopy(_POD_SECURITY), "fsGroup": 65532},
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": name}},
            _pki_volume(names.site_secret(s)),
            {"name": "ledger", "persistentVolumeClaim": {"claimName": ledger_claim(s)}},
            copy.deepcopy(_TMP[0]),
        ],
    }
    f = site.spec.data.file
    if f is not None and f.claim_name is not None:  # the site's data, read-only, in the site's pods only
        pod_spec["volumes"].append({"name": "data", "persistentVolumeClaim": {"claimName": f.claim_name, "readOnly": True}})
        container["volumeMounts"].append({"name": "data", "mountPath": str(DATA_DIR), "readOnly": True})
    if site.spec.node_selector:
        pod_spec["nodeSelector"] = dict(site.spec.node_selector)
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": _meta(name, site.metadata.namespace, labels, owner),
        "spec": {
            "backoffLimit": settings.client_backoff_limit,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
