"""The manifests a FederatedJob becomes: what runs, as whom, reachable by whom, with which config."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from fedsec.api.meta import API_VERSION
from fedsec.controller import children as ch
from fedsec.controller.names import (
    GRPC_PORT, LABEL_JOB, LABEL_JOB_UID, LABEL_ROLE, LABEL_SITE, METRICS_PORT, JobNames, ledger_claim,
)
from fedsec.api.admitted import AdmittedPlan
from fedsec.runtime.config import AggregatorConfig, ClientConfig

from controller_bodies import JOB_UID, SITE_UID, client, job

NS = "research"
SETTINGS = ch.Settings(operator_namespace="fedsec-ops", cluster_domain="corp.example", runtime_image="reg/rt:9",
                       client_backoff_limit=4)
NAMES = JobNames("breast-cancer", JOB_UID)
OWNER = ch.Owner(API_VERSION, "FederatedJob", "breast-cancer", JOB_UID)
SITE_OWNER = ch.Owner(API_VERSION, "FederatedClient", "hospital-01", SITE_UID)
AGG_SELECTOR = {"app.kubernetes.io/managed-by": "fedsec-operator", LABEL_JOB: "breast-cancer",
                LABEL_JOB_UID: JOB_UID, LABEL_ROLE: "aggregator"}
CLIENT_SELECTOR = {**AGG_SELECTOR, LABEL_ROLE: "client"}


def _owner_ref(owner: ch.Owner) -> list[dict[str, object]]:
    return [{"apiVersion": API_VERSION, "kind": owner.kind, "name": owner.name, "uid": owner.uid,
             "controller": True, "blockOwnerDeletion": True}]


# -- the aggregator ------------------------------------------------------------------------------

@pytest.fixture
def deployment() -> dict:
    return ch.aggregator_deployment(NAMES, NS, OWNER, SETTINGS, image=SETTINGS.runtime_image, config_digest="0123456789abcdef", replicas=1)


def test_deployment_identity_and_strategy(deployment: dict) -> None:
    assert (deployment["apiVersion"], deployment["kind"]) == ("apps/v1", "Deployment")
    assert deployment["metadata"]["name"] == "breast-cancer-aggregator"
    assert deployment["metadata"]["namespace"] == NS
    assert deployment["metadata"]["ownerReferences"] == _owner_ref(OWNER)
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert spec["selector"] == {"matchLabels": AGG_SELECTOR}
    assert spec["template"]["metadata"]["labels"] == AGG_SELECTOR
    assert spec["template"]["metadata"]["annotations"] == {ch.CONFIG_HASH: "0123456789abcdef"}
    assert ch.aggregator_deployment(NAMES, NS, OWNER, SETTINGS, image=SETTINGS.runtime_image, config_digest="d", replicas=0)["spec"]["replicas"] == 0


def test_deployment_runs_unprivileged_without_a_token(deployment: dict) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == NAMES.service_account == "breast-cancer-runtime"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert c["image"] == "reg/rt:9"
    assert c["args"] == ["aggregator", "--config", "/etc/fedsec/config/aggregator.json"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}
    assert c["readinessProbe"]["tcpSocket"] == {"port": GRPC_PORT}


def test_deployment_mounts_config_keys_checkpoints(deployment: dict) -> None:
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"] == {"name": "breast-cancer-aggregator"}
    assert volumes["pki"]["secret"]["secretName"] == "breast-cancer-aggregator-pki"
    assert volumes["pki"]["secret"]["defaultMode"] == 0o440
    assert volumes["state"]["persistentVolumeClaim"] == {"claimName": "breast-cancer-checkpoints"}
    assert "emptyDir" in volumes["tmp"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert set(mounts) == set(volumes) == {"config", "pki", "state", "tmp"}
    assert (mounts["config"]["mountPath"], mounts["config"]["readOnly"]) == ("/etc/fedsec/config", True)
    assert (mounts["pki"]["mountPath"], mounts["pki"]["readOnly"]) == ("/etc/fedsec/pki", True)
    assert mounts["state"]["mountPath"] == "/var/lib/fedsec/state" and not mounts["state"].get("readOnly")
    assert mounts["tmp"]["mountPath"] == "/tmp"


def test_service_account_has_no_token() -> None:
    sa = ch.service_account(NAMES, NS, OWNER)
    assert sa["kind"] == "ServiceAccount" and sa["metadata"]["name"] == "breast-cancer-runtime"
    assert sa["automountServiceAccountToken"] is False


def test_checkpoint_claim() -> None:
    pvc = ch.checkpoint_claim(NAMES, NS, OWNER, SETTINGS)
    assert pvc["metadata"]["name"] == "breast-cancer-checkpoints"
    assert pvc["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    pvc = ch.checkpoint_claim(NAMES, NS, OWNER, ch.Settings(storage_class="fast", checkpoint_size="5Gi"))
    assert pvc["spec"]["storageClassName"] == "fast"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"


def test_service_ports() -> None:
    svc = ch.service(NAMES, NS, OWNER)
    assert (svc["kind"], svc["metadata"]["name"]) == ("Service", "breast-cancer-aggregator")
    assert svc["spec"]["selector"] == AGG_SELECTOR
    assert svc["spec"]["ports"] == [
        {"name": "grpc", "port": 7443, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"},
    ]


def test_network_policy_admits_the_jobs_clients_and_the_operator_only() -> None:
    np = ch.network_policy(NAMES, NS, OWNER, SETTINGS)
    assert (np["apiVersion"], np["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
    spec = np["spec"]
    assert spec["podSelector"] == {"matchLabels": AGG_SELECTOR}
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    assert spec["egress"] == []  # Egress listed with no rule: nothing leaves the aggregator
    grpc_rule, metrics_rule = spec["ingress"]
    assert grpc_rule["ports"] == [{"protocol": "TCP", "port": GRPC_PORT}]
    clients, operator = grpc_rule["from"]
    # the job's client pods in any namespace (every site lives in its own)
    assert clients == {"namespaceSelector": {}, "podSelector": {"matchLabels": CLIENT_SELECTOR}}
    # the operator's pods in the operator's namespace only
    assert operator == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "fedsec-ops"}},
                        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "fedsec-operator"}}}
    assert metrics_rule == {"from": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": METRICS_PORT}]}


def test_network_policy_client_selector_matches_the_client_pods_and_not_another_jobs() -> None:
    pod_labels = ch.client_job(NAMES, client(), SITE_OWNER, SETTINGS)["spec"]["template"]["metadata"]["labels"]
    sel = ch.network_policy(NAMES, NS, OWNER, SETTINGS)["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert sel.items() <= pod_labels.items()
    other = JobNames("breast-cancer", "99999999-9999-4999-8999-999999999999")
    other_pod = ch.client_job(other, client(), SITE_OWNER, SETTINGS)["spec"]["template"]["metadata"]["labels"]
    assert not sel.items() <= other_pod.items()


# -- a site's client -----------------------------------------------------------------------------

def test_client_job_defaults() -> None:
    site = client()
    j = ch.client_job(NAMES, site, SITE_OWNER, SETTINGS)
    assert (j["apiVersion"], j["kind"]) == ("batch/v1", "Job")
    assert j["metadata"]["name"] == NAMES.site("hospital-01")
    assert j["metadata"]["namespace"] == "site-a"  # the site's namespace, not the job's
    assert j["metadata"]["ownerReferences"] == _owner_ref(SITE_OWNER)
    labels = {**CLIENT_SELECTOR, LABEL_SITE: "hospital-01"}
    assert j["metadata"]["labels"] == labels
    assert j["spec"]["backoffLimit"] == 4
    tmpl = j["spec"]["template"]
    assert tmpl["metadata"]["labels"] == labels
    pod = tmpl["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "nodeSelector" not in pod
    (c,) = pod["containers"]
    assert c["image"] == "reg/rt:9"
    assert c["args"] == ["client", "--config", "/etc/fedsec/config/client.json"]
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"}}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"] == {"name": NAMES.site("hospital-01")}
    assert volumes["pki"]["secret"]["secretName"] == NAMES.site_secret("hospital-01")
    assert volumes["ledger"]["persistentVolumeClaim"] == {"claimName": ledger_claim("hospital-01")}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {"config": "/etc/fedsec/config", "pki": "/etc/fedsec/pki", "ledger": "/var/lib/fedsec/ledger",
                      "tmp": "/tmp"}


def test_client_job_honours_the_sites_image_resources_and_nodes() -> None:
    resources = {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"nvidia.com/gpu": "1"}}
    site = client(image="hospital.example/fedsec:pinned", resources=resources, nodeSelector={"zone": "secure"})
    pod = ch.client_job(NAMES, site, SITE_OWNER, SETTINGS)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"zone": "secure"}
    assert pod["containers"][0]["image"] == "hospital.example/fedsec:pinned"
    assert pod["containers"][0]["resources"] == resources


def test_ledger_claim_manifest_is_owned_by_the_site() -> None:
    pvc = ch.ledger_claim_manifest(client(), SITE_OWNER, SETTINGS)
    assert pvc["metadata"]["name"] == "fedsec-ledger-hospital-01"
    assert pvc["metadata"]["namespace"] == "site-a"
    assert pvc["metadata"]["ownerReferences"] == _owner_ref(SITE_OWNER)
    assert pvc["spec"]["resources"]["requests"]["storage"] == "64Mi"


def _client_policy(site_ns: str = "site-a") -> dict:
    return ch.client_network_policy(NAMES, client(namespace=site_ns), NS, SITE_OWNER)


def test_client_network_policy_lives_beside_the_client_job_owned_by_the_site() -> None:
    site = client(namespace="site-a")
    np, j = _client_policy(), ch.client_job(NAMES, site, SITE_OWNER, SETTINGS)
    assert (np["apiVersion"], np["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
    assert (np["metadata"]["name"], np["metadata"]["namespace"]) == (j["metadata"]["name"], "site-a")
    assert np["metadata"]["ownerReferences"] == _owner_ref(SITE_OWNER)
    assert np["metadata"]["labels"] == j["metadata"]["labels"]  # found and cleaned up like the site's other children


def test_client_network_policy_fences_this_jobs_pods_at_this_site_only() -> None:
    sel = _client_policy()["spec"]["podSelector"]["matchLabels"]
    pod = ch.client_job(NAMES, client(), SITE_OWNER, SETTINGS)["spec"]["template"]["metadata"]["labels"]
    assert sel.items() <= pod.items()
    other_job = JobNames("breast-cancer", "99999999-9999-4999-8999-999999999999")
    assert not sel.items() <= ch.client_job(other_job, client(), SITE_OWNER, SETTINGS)["spec"]["template"]["metadata"]["labels"].items()
    other_site = ch.client_job(NAMES, client(name="hospital-02"), SITE_OWNER, SETTINGS)["spec"]["template"]["metadata"]["labels"]
    assert not sel.items() <= other_site.items()


def test_client_pods_take_no_ingress_and_dial_only_the_aggregator_and_dns() -> None:
    spec = _client_policy()["spec"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    assert spec["ingress"] == []  # Ingress listed with no rule: nothing reaches a client pod
    to_aggregator, to_dns = spec["egress"]
    assert to_aggregator == {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}},
                "podSelector": {"matchLabels": AGG_SELECTOR}}],
        "ports": [{"protocol": "TCP", "port": GRPC_PORT}],
    }
    assert to_dns == {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }


def test_client_egress_selects_the_aggregator_pods_on_the_port_they_serve() -> None:
    dep = ch.aggregator_deployment(NAMES, NS, OWNER, SETTINGS, image=SETTINGS.runtime_image, config_digest="d", replicas=1)
    rule = _client_policy()["spec"]["egress"][0]
    agg_pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert rule["to"][0]["podSelector"]["matchLabels"].items() <= agg_pod_labels.items()
    served = {p["containerPort"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"] if p["name"] == "grpc"}
    assert {p["port"] for p in rule["ports"]} == served
    # and the aggregator's own policy lets exactly these pods in on that port
    agg_in = ch.network_policy(NAMES, NS, OWNER, SETTINGS)["spec"]["ingress"][0]
    assert agg_in["from"][0]["podSelector"]["matchLabels"].items() <= _client_policy()["spec"]["podSelector"]["matchLabels"].items()


# -- Secrets and ConfigMaps ----------------------------------------------------------------------

def test_secrets_are_immutable_and_base64() -> None:
    files = {"tls.key": b"\x00key\xff", "ca.crt": b"-----BEGIN CERTIFICATE-----\n"}
    s = ch.secret("x-pki", NS, {"a": "b"}, OWNER, files)
    assert (s["kind"], s["type"], s["immutable"]) == ("Secret", "Opaque", True)
    assert list(s["data"]) == ["ca.crt", "tls.key"]
    assert {k: base64.b64decode(v, validate=True) for k, v in s["data"].items()} == files
    assert s["metadata"]["labels"] == {"a": "b"} and s["metadata"]["ownerReferences"] == _owner_ref(OWNER)
    assert "ownerReferences" not in ch.secret("x", NS, {}, None, {})["metadata"]


def test_config_hash_follows_the_content() -> None:
    a = ch.config_hash({"aggregator.json": "{}"})
    assert a == ch.config_hash({"aggregator.json": "{}"})
    assert a != ch.config_hash({"aggregator.json": "{ }"})
    assert re.fullmatch(r"[0-9a-f]{16}", a), a


# -- the runtime's config files ------------------------------------------------------------------

def test_aggregator_config_round_trips() -> None:
    j = job()
    text = ch.aggregator_config(j, JOB_UID, ["hospital-01", "hospital-02"], 2, rollback_request="3/5")
    cfg = AggregatorConfig.model_validate_json(text)
    assert cfg.job == j
    assert (cfg.job_uid, cfg.sites, cfg.quorum, cfg.rollback_request) == (JOB_UID, ["hospital-01", "hospital-02"], 2, "3/5")
    assert cfg.serve_after_finish is True
    assert cfg.listen == "0.0.0.0:7443" and cfg.metrics_listen == "0.0.0.0:9090"
    assert cfg.state_dir == Path("/var/lib/fedsec/state")
    assert cfg.pki.ca_cert == Path("/etc/fedsec/pki/ca.crt")
    assert {p.name for p in (cfg.pki.tls_cert, cfg.pki.tls_key)} <= set(ch.PKI_FILES)
    assert {p.parent for p in (cfg.pki.tls_cert, cfg.pki.tls_key)} | {cfg.pki.keys_dir} == {Path("/etc/fedsec/pki")}
    assert AggregatorConfig.model_validate_json(text).model_dump_json(by_alias=True, indent=1) == text
    assert json.loads(text)["job"]["spec"]["secureAggregation"]["mode"] == "secagg"  # the wire's camelCase


def test_client_config_round_trips_with_the_fqdn_aggregator() -> None:
    j, site = job(), client()
    plan = AdmittedPlan.of(j, JOB_UID, [site.metadata.name, "other-site"], 2)
    text = ch.client_config(j, JOB_UID, site, NAMES, SETTINGS, plan)
    cfg = ClientConfig.model_validate_json(text)
    assert cfg.job == j and cfg.site == site and cfg.job_uid == JOB_UID
    # the site's reference travels with it, and binds the very job in the config
    assert cfg.plan == plan and cfg.plan.matches(cfg.job, cfg.job_uid) is None
    assert cfg.aggregator == "breast-cancer-aggregator.research.svc.corp.example:7443"
    assert cfg.server_name == "aggregator"
    assert cfg.ledger_dir == Path("/var/lib/fedsec/ledger")
    assert cfg.pki.ca_cert == Path("/etc/fedsec/pki/ca.crt") and cfg.pki.keys_dir == Path("/etc/fedsec/pki")
    assert ClientConfig.model_validate_json(text).model_dump_json(by_alias=True, indent=1) == text
    assert ch.aggregator_address(NAMES, "research", ch.Settings()) == "breast-cancer-aggregator.research.svc.cluster.local"


# -- identity keys at rotation -------------------------------------------------------------------

def _issue(epoch: int) -> dict[str, bytes]:
    return {f"id-{epoch}.key": f"key {epoch}".encode(), f"id-{epoch}.crt": f"cert {epoch}".encode()}


def test_identity_patch_adds_the_next_epoch_and_retires_the_older() -> None:
    held = ["ca.crt", "tls.crt", "tls.key", "id-0.crt", "id-0.key", "id-1.crt", "id-1.key"]
    patch = ch.identity_patch(held, frozenset({1, 2}), _issue)
    assert patch == {"data": {"id-2.key": ch.b64(b"key 2"), "id-2.crt": ch.b64(b"cert 2"),
                              "id-0.crt": None, "id-0.key": None}}
    assert ch.identity_patch(held, frozenset({0, 1}), _issue) is None  # holds them: no write


def test_identity_patch_completes_a_half_written_epoch_and_keeps_newer_ones() -> None:
    patch = ch.identity_patch(["tls.key", "id-3.crt", "id-5.crt", "id-5.key"], frozenset({3, 4}), _issue)
    assert patch is not None
    assert set(patch["data"]) == {"id-3.key", "id-3.crt", "id-4.key", "id-4.crt"}  # nothing of epoch 5 removed


def test_participant_secrets_are_mutable_only_where_keys_rotate() -> None:
    assert ch.secret("s", "ns", {}, None, {"a": b"1"})["immutable"] is True
    assert ch.secret("s", "ns", {}, None, {"a": b"1"}, immutable=False)["immutable"] is False
