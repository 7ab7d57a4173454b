"""The operator, installed by its Helm chart, against the real control plane and the node agent.

The aggregator and the clients run as real processes (the node agent's pods) over real mutual TLS;
the operator reads the aggregator's admin API from its own pod. Nothing is mocked.
"""

from __future__ import annotations

import copy
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster_fixtures import ClusterInfo, Kubectl, wait_until
from operator_install import RUNTIME_IMAGE, Release, operator_pod_ready

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "breast-cancer"
JOB = yaml.safe_load((EXAMPLE / "job.yaml").read_text())
CLIENT = yaml.safe_load((EXAMPLE / "hospital-01.yaml").read_text())


class Namespaces:
    """Namespaces a test makes for a job and its sites, removed afterwards."""

    def __init__(self, kubectl: Kubectl) -> None:
        self.kubectl, self.made = kubectl, []  # type: ignore[var-annotated]
        self.tag = uuid.uuid4().hex[:5]

    def new(self, name: str) -> str:
        ns = f"{name}-{self.tag}"
        self.kubectl("create", "namespace", ns)
        self.made.append(ns)
        return ns

    def close(self) -> None:
        for ns in self.made:
            self.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture
def namespaces(kubectl: Kubectl) -> Iterator[Namespaces]:
    n = Namespaces(kubectl)
    try:
        yield n
    finally:
        n.close()


def fj(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    return kubectl.json("get", "fj", name, "-n", ns)


def status_of(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    return fj(kubectl, ns, name).get("status") or {}


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == ctype), {})


def wait_phase(kubectl: Kubectl, ns: str, name: str, phases: tuple[str, ...], timeout: float) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        s = status_of(kubectl, ns, name)
        if s.get("phase") == "Failed" and "Failed" not in phases:
            raise AssertionError(f"job {ns}/{name} failed: {s.get('message')}")
        return s if s.get("phase") in phases else None

    return wait_until(f"FederatedJob {ns}/{name} to reach {phases}", check, timeout, interval=1.0)


def small_study(kubectl: Kubectl, namespaces: Namespaces, *, sites: int = 3, rounds: int = 3,
                name: str = "small", job_spec: dict[str, Any] | None = None,
                client_spec: dict[str, Any] | None = None) -> tuple[str, list[str]]:
    """A breast-cancer job with its sites each in a namespace of their own; returns the namespaces."""
    study = f"{name}-{namespaces.tag}"
    job_ns = namespaces.new(f"{name}-job")
    site_nss = []
    for i in range(sites):
        ns = namespaces.new(f"{name}-site{i}")
        c = copy.deepcopy(CLIENT)
        c["metadata"] = {"name": f"site-{i}", "labels": {"fedsec.io/study": study}}
        c["spec"]["data"]["builtin"]["partition"].update(shards=sites, shard=i)
        c["spec"].update(client_spec or {})
        kubectl.apply(yaml.safe_dump(c), ns)
        site_nss.append(ns)
    j = copy.deepcopy(JOB)
    j["metadata"] = {"name": name}
    j["spec"].update(rounds=rounds, clients={"selector": {"matchLabels": {"fedsec.io/study": study}}},
                     quorum={"minClients": max(2, sites - 1), "roundTimeoutSeconds": 30, "joinTimeoutSeconds": 120,
                             "maxRetries": 3})
    j["spec"].update(job_spec or {})
    kubectl.apply(yaml.safe_dump(j), job_ns)
    return job_ns, site_nss


def owned_by(obj: dict[str, Any], kind: str, name: str) -> bool:
    return any(r["kind"] == kind and r["name"] == name and r.get("controller")
               for r in obj["metadata"].get("ownerReferences", []))


def client_pods(kubectl: Kubectl, uid: str) -> list[dict[str, Any]]:
    return kubectl.json("get", "pods", "-A", "-l", f"fedsec.io/job-uid={uid},fedsec.io/role=client")["items"]


@pytest.mark.slow
def test_breast_cancer_example_applied_with_kubectl_succeeds_despite_a_killed_client(
        operator_release: Release, kubectl: Kubectl, namespaces: Namespaces) -> None:
    job_ns = namespaces.new("breast-cancer")
    site_nss = {}
    for path in sorted(EXAMPLE.glob("hospital-*.yaml")):
        ns = namespaces.new(path.stem)  # every hospital in a namespace of its own
        kubectl("apply", "-n", ns, "-f", str(path))
        site_nss[path.stem] = ns
    kubectl("apply", "-n", job_ns, "-f", str(EXAMPLE / "job.yaml"))
    uid = fj(kubectl, job_ns, "breast-cancer")["metadata"]["uid"]

    # Mid-round, kill one site's pod outright: its Job replaces it, and the site rejoins.
    wait_until("round 2 committed", lambda: status_of(kubectl, job_ns, "breast-cancer").get("round", 0) >= 2, 300, 0.5)
    victim_ns = site_nss["hospital-03"]
    victim = next(p for p in client_pods(kubectl, uid) if p["metadata"]["namespace"] == victim_ns)
    kubectl("delete", "pod", "-n", victim_ns, victim["metadata"]["name"], "--grace-period=0", "--force", check=False)

    s = wait_phase(kubectl, job_ns, "breast-cancer", ("Succeeded",), 600)
    assert s["round"] == 20 and s["roundsPlanned"] == 20
    assert s["metrics"]["auc"] >= 0.95, s["metrics"]
    assert s["mainMetric"].startswith("auc=")
    assert s["quorum"] == "10/12" and len(s["admitted"]) == 12
    assert condition(s, "Ready")["status"] == "True" and condition(s, "QuorumMet")["status"] == "True"
    assert condition(s, "Reconciling")["status"] == "False" and condition(s, "Stalled")["status"] == "False"
    assert all(c["observedGeneration"] == 1 for c in s["conditions"]) and s["observedGeneration"] == 1

    def replacement_done() -> list[dict[str, Any]]:
        pods = [p for p in client_pods(kubectl, uid) if p["metadata"]["namespace"] == victim_ns]
        return pods if any(p["status"].get("phase") == "Succeeded" for p in pods) else []

    replaced = wait_until("the killed client's replacement pod to finish", replacement_done, 120, 1.0)
    assert victim["metadata"]["name"] not in {p["metadata"]["name"] for p in replaced}
    for ns in site_nss.values():  # every site's Job completes: each was told the outcome
        wait_until(f"the client Job in {ns} to complete", lambda ns=ns: all(
            j.get("status", {}).get("succeeded") == 1
            for j in kubectl.json("get", "jobs", "-n", ns, "-l", f"fedsec.io/job-uid={uid}")["items"]), 120, 1.0)

    # The children, their owners and their confinement.
    names = {"Deployment": "breast-cancer-aggregator", "Service": "breast-cancer-aggregator",
             "PersistentVolumeClaim": "breast-cancer-checkpoints", "NetworkPolicy": "breast-cancer-aggregator",
             "ServiceAccount": "breast-cancer-runtime", "Secret": "breast-cancer-ca"}
    for kind, name in names.items():
        obj = kubectl.json("get", kind.lower(), name, "-n", job_ns)
        assert owned_by(obj, "FederatedJob", "breast-cancer"), f"{kind} {name} has no owner reference to the job"
    sa = kubectl.json("get", "serviceaccount", "breast-cancer-runtime", "-n", job_ns)
    assert sa.get("automountServiceAccountToken") is False
    assert not kubectl.json("get", "rolebindings", "-n", job_ns)["items"], "the runtime's ServiceAccount must have no rights"
    dep = wait_until("the finished job's aggregator to be scaled down (its checkpoints stay)", lambda: next(
        (d for d in [kubectl.json("get", "deployment", "breast-cancer-aggregator", "-n", job_ns)]
         if d["spec"]["replicas"] == 0), None), 60, 1.0)
    pod_spec = dep["spec"]["template"]["spec"]
    assert pod_spec["automountServiceAccountToken"] is False and pod_spec["securityContext"]["runAsNonRoot"] is True
    np = kubectl.json("get", "networkpolicy", "breast-cancer-aggregator", "-n", job_ns)["spec"]
    grpc_from = np["ingress"][0]["from"]
    assert {"fedsec.io/job-uid": uid, "fedsec.io/role": "client"}.items() <= grpc_from[0]["podSelector"]["matchLabels"].items()
    assert grpc_from[1]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "fedsec-operator"}
    assert not np.get("egress") and set(np["policyTypes"]) == {"Ingress", "Egress"}  # no egress rule: none allowed
    for site, ns in site_nss.items():
        jobs = kubectl.json("get", "jobs", "-n", ns, "-l", f"fedsec.io/job-uid={uid}")["items"]
        assert len(jobs) == 1 and owned_by(jobs[0], "FederatedClient", site)
        # The site's client pods only dial out: to this job's aggregator pods and to DNS.
        nps = kubectl.json("get", "networkpolicies", "-n", ns, "-l", f"fedsec.io/job-uid={uid}")["items"]
        assert len(nps) == 1 and owned_by(nps[0], "FederatedClient", site)
        assert not nps[0]["spec"].get("ingress") and set(nps[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        to_aggregator = nps[0]["spec"]["egress"][0]["to"][0]
        assert to_aggregator["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": job_ns}
        assert {"fedsec.io/job-uid": uid, "fedsec.io/role": "aggregator"}.items() <= \
            to_aggregator["podSelector"]["matchLabels"].items()
        fc = kubectl.json("get", "fc", site, "-n", ns)
        assert fc["status"]["jobs"][f"{job_ns}/breast-cancer"]["state"] == "Finished"
    events = kubectl.json("get", "events", "-n", job_ns, "--field-selector", "involvedObject.kind=FederatedJob")["items"]
    assert {"Planned", "AggregatorCreated", "PhaseRunning", "PhaseSucceeded"} <= {e["reason"] for e in events}


def test_operator_killed_mid_reconcile_converges_without_duplicates_and_deletion_cascades(
        operator_release: Release, kubectl: Kubectl, namespaces: Namespaces) -> None:
    job_ns, site_nss = small_study(kubectl, namespaces, sites=3, rounds=2, name="restart")
    wait_until("the job CA Secret", lambda: kubectl("get", "secret", "restart-ca", "-n", job_ns, check=False).returncode == 0,
               60, 0.1)
    # Kill the operator in the middle of its first pass over the job.
    for p in kubectl.json("get", "pods", "-n", operator_release.namespace, "-l", "app.kubernetes.io/name=fedsec-operator")["items"]:
        kubectl("delete", "pod", "-n", operator_release.namespace, p["metadata"]["name"], "--grace-period=0", "--force",
                check=False)
    wait_until("a new operator pod to be Ready", lambda: operator_pod_ready(kubectl, operator_release.namespace), 120)
    s = wait_phase(kubectl, job_ns, "restart", ("Succeeded",), 300)
    uid = fj(kubectl, job_ns, "restart")["metadata"]["uid"]
    assert s["round"] == 2
    sel = f"fedsec.io/job-uid={uid}"
    assert len(kubectl.json("get", "deployments", "-n", job_ns, "-l", sel)["items"]) == 1
    assert len(kubectl.json("get", "secrets", "-n", job_ns, "-l", sel)["items"]) == 3  # CA, aggregator, operator
    for ns in site_nss:
        assert len(kubectl.json("get", "jobs", "-n", ns, "-l", sel)["items"]) == 1
        assert len(kubectl.json("get", "secrets", "-n", ns, "-l", sel)["items"]) == 1
        assert len(kubectl.json("get", "configmaps", "-n", ns, "-l", sel)["items"]) == 1

    kubectl("delete", "fj", "restart", "-n", job_ns, "--timeout=60s", timeout=90)

    def all_gone() -> bool:
        left = [kind for kind in ("deployments", "services", "secrets", "configmaps", "networkpolicies",
                                  "serviceaccounts", "persistentvolumeclaims")
                if kubectl.json("get", kind, "-n", job_ns, "-l", sel)["items"]]
        left += [f"{kind} in {ns}" for ns in site_nss for kind in ("jobs", "secrets", "configmaps", "networkpolicies")
                 if kubectl.json("get", kind, "-n", ns, "-l", sel)["items"]]
        return not left

    wait_until("every child of the deleted job to be gone", all_gone, 120, 1.0)
    for i, ns in enumerate(site_nss):
        fc = kubectl.json("get", "fc", f"site-{i}", "-n", ns)
        assert fc["status"]["jobs"][f"{job_ns}/restart"]["state"] == "Deleted"
        kubectl("get", "pvc", f"fedsec-ledger-site-{i}", "-n", ns)  # the site's ledger outlives the job


def test_rollback_through_the_spec_shows_in_status_and_the_job_finishes_again(
        operator_release: Release, kubectl: Kubectl, namespaces: Namespaces) -> None:
    job_ns, _ = small_study(kubectl, namespaces, sites=3, rounds=4, name="rollback")
    first = wait_phase(kubectl, job_ns, "rollback", ("Succeeded",), 300)
    assert first["round"] == 4 and condition(first, "RolledBack")["status"] == "False"
    # What a GitOps user commits: spec.rollback.toRound.
    kubectl("patch", "fj", "rollback", "-n", job_ns, "--type=merge", "-p", '{"spec": {"rollback": {"toRound": 2}}}')

    def rolled_back() -> dict[str, Any] | None:
        s = status_of(kubectl, job_ns, "rollback")
        return s if s.get("lineage") and condition(s, "RolledBack").get("status") == "True" else None

    s = wait_until("the rollback in status", rolled_back, 180, 1.0)
    assert s["lineage"][-1]["round"] == 2 and s["lineage"][-1]["replacedVersion"] == first["modelVersion"]
    s = wait_phase(kubectl, job_ns, "rollback", ("Succeeded",), 300)
    assert s["round"] == 4 and s["modelVersion"] > first["modelVersion"] and s["observedGeneration"] == 2
    assert condition(s, "RolledBack")["status"] == "True" and "round 2" in condition(s, "RolledBack")["message"]


def test_refused_sites_and_unplannable_jobs_say_why_in_both_statuses(
        operator_release: Release, kubectl: Kubectl, namespaces: Namespaces, cluster: ClusterInfo) -> None:
    # A site that requires differential privacy refuses a job without it, and one that lets only
    # another registry's images run the aggregator refuses the operator's; the others, which
    # accept the chart's runtime image by a pattern, train.
    job_ns, site_nss = small_study(kubectl, namespaces, sites=3, rounds=1, name="refuse",
                                   client_spec={"policy": {"allowedAggregatorImages": [f"{RUNTIME_IMAGE}:*"]}})
    study = yaml.safe_load(kubectl("get", "fc", "site-0", "-n", site_nss[0], "-o", "yaml").stdout)["metadata"]["labels"]
    strict = copy.deepcopy(CLIENT)
    strict["metadata"] = {"name": "strict-site", "labels": study}
    strict["spec"]["policy"] = {"requireDp": True}
    pinned = copy.deepcopy(CLIENT)
    pinned["metadata"] = {"name": "pinned-site", "labels": study}
    pinned["spec"]["policy"] = {"allowedAggregatorImages": ["registry.hospital.example/fedsec-runtime@sha256:*"]}
    # (applied after the job: the plan was possibly made already; a second job below sees them)
    strict_ns, pinned_ns = namespaces.new("refuse-strict"), namespaces.new("refuse-pinned")
    kubectl.apply(yaml.safe_dump(strict), strict_ns)
    kubectl.apply(yaml.safe_dump(pinned), pinned_ns)
    first = wait_phase(kubectl, job_ns, "refuse", ("Succeeded",), 300)
    assert {"site-0", "site-1", "site-2"} <= set(first["admitted"]), first
    agg = kubectl.json("get", "deployments", "-n", job_ns, "-l", "fedsec.io/job=refuse")["items"][0]
    assert agg["spec"]["template"]["spec"]["containers"][0]["image"] == f"{RUNTIME_IMAGE}:e2e"

    j = copy.deepcopy(JOB)
    j["metadata"] = {"name": "second"}
    j["spec"].update(rounds=1, clients={"selector": {"matchLabels": study}},
                     quorum={"minClients": 2, "roundTimeoutSeconds": 30, "joinTimeoutSeconds": 120, "maxRetries": 3})
    kubectl.apply(yaml.safe_dump(j), job_ns)
    s = wait_phase(kubectl, job_ns, "second", ("Succeeded",), 300)
    assert "strict-site" in s["refused"] and "differential privacy" in s["refused"]["strict-site"]
    assert "strict-site" not in s["admitted"]
    row = kubectl.json("get", "fc", "strict-site", "-n", strict_ns)["status"]["jobs"][f"{job_ns}/second"]
    assert row["state"] == "Refused" and "differential privacy" in row["reason"]
    assert "allowedAggregatorImages" in s["refused"]["pinned-site"] and f"{RUNTIME_IMAGE}:e2e" in s["refused"]["pinned-site"]
    row = kubectl.json("get", "fc", "pinned-site", "-n", pinned_ns)["status"]["jobs"][f"{job_ns}/second"]
    assert row["state"] == "Refused" and "allowedAggregatorImages" in row["reason"], row

    # A job whose quorum cannot be met: Failed, Stalled, and the field named.
    bad = copy.deepcopy(j)
    bad["metadata"] = {"name": "impossible"}
    bad["spec"]["quorum"] = {"minClients": 9, "roundTimeoutSeconds": 30}
    kubectl.apply(yaml.safe_dump(bad), job_ns)
    s = wait_phase(kubectl, job_ns, "impossible", ("Failed",), 60)
    assert condition(s, "Stalled")["status"] == "True" and condition(s, "Ready")["reason"] == "InvalidSpec"
    assert "spec.quorum.minClients" in s["message"]
    assert not kubectl.json("get", "deployments", "-n", job_ns, "-l", "fedsec.io/job=impossible")["items"]
    # kstatus (built by tests/cluster/build.sh), as Flux reads health: Failed.
    obj = kubectl("get", "fj", "impossible", "-n", job_ns, "-o", "json").stdout
    out = subprocess.run([str(cluster.bindir / "kstatus")], input=obj, capture_output=True, text=True, check=True).stdout
    assert '"Failed"' in out, out


def test_a_sites_own_file_on_its_volume_is_mounted_read_only_and_trained_on(
        operator_release: Release, kubectl: Kubectl, namespaces: Namespaces) -> None:
    from fedsec.training.data import builtin_site_data

    study = f"files-{namespaces.tag}"
    job_ns = namespaces.new("files-job")
    for i in range(2):
        ns = namespaces.new(f"files-site{i}")
        kubectl.apply(yaml.safe_dump({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "site-data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}}), ns)
        pv = wait_until(f"the site's data volume in {ns} to bind", lambda ns=ns: kubectl.json(
            "get", "pvc", "site-data", "-n", ns).get("spec", {}).get("volumeName"), 60, 0.5)
        host_dir = Path(kubectl.json("get", "pv", pv)["spec"]["hostPath"]["path"])
        # The site's own rows (disjoint from the aggregator's builtin holdout), as a CSV on its volume.
        t = builtin_site_data("breast-cancer", holdout_fraction=0.2, seed=42, scheme="iid", shards=2, shard=i, alpha=0.5)
        header = ",".join([f"f{k}" for k in range(t.X.shape[1])] + ["diagnosis"])
        rows = [",".join([*(f"{v:.6g}" for v in x), str(int(y))]) for x, y in zip(t.X, t.y)]
        (host_dir / "rows.csv").write_text("\n".join([header, *rows]) + "\n")
        kubectl.apply(yaml.safe_dump({
            "apiVersion": "fedsec.io/v1alpha1", "kind": "FederatedClient",
            "metadata": {"name": f"file-site-{i}", "labels": {"fedsec.io/study": study}},
            "spec": {"data": {"file": {"path": "rows.csv", "claimName": "site-data"}}}}), ns)
    j = copy.deepcopy(JOB)
    j["metadata"] = {"name": "files"}
    j["spec"]["task"]["target"] = "diagnosis"
    j["spec"].update(rounds=2, clients={"selector": {"matchLabels": {"fedsec.io/study": study}}},
                     quorum={"minClients": 2, "roundTimeoutSeconds": 30, "joinTimeoutSeconds": 120, "maxRetries": 3})
    kubectl.apply(yaml.safe_dump(j), job_ns)
    s = wait_phase(kubectl, job_ns, "files", ("Succeeded",), 300)
    assert s["round"] == 2 and s["metrics"]["auc"] >= 0.9, s["metrics"]
    uid = fj(kubectl, job_ns, "files")["metadata"]["uid"]
    pod = client_pods(kubectl, uid)[0]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "data")
    assert vol["persistentVolumeClaim"] == {"claimName": "site-data", "readOnly": True}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "data")
    assert mount["readOnly"] is True


def test_keys_rotate_through_the_secrets_and_the_epoch_shows_in_status(
        operator_release: Release, kubectl: Kubectl, namespaces: Namespaces) -> None:
    # Many local epochs make a round last a fraction of a second, so the job runs for several
    # seconds: time for the operator to see rotations and write later epochs' keys into the Secrets
    # (epoch 1's keys come with the job; epoch 2's only from the operator, mid-run) and for the
    # pods' Secret volumes to follow. No grace: a site still signing in the old epoch is refused
    # and must switch to the new key without a restart.
    rounds = 40
    job_ns, site_nss = small_study(
        kubectl, namespaces, sites=3, rounds=rounds, name="rotate",
        job_spec={"keys": {"rotation": {"everyRounds": 2, "graceRounds": 0}},
                  "task": {**JOB["spec"]["task"], "localEpochs": 100}})
    uid = fj(kubectl, job_ns, "rotate")["metadata"]["uid"]

    def epochs_in_secret(ns: str, name: str) -> set[int]:
        data = kubectl.json("get", "secret", name, "-n", ns).get("data") or {}
        return {int(k[3:-4]) for k in data if k.startswith("id-") and k.endswith(".crt")}

    s = wait_until("key epoch 2 in status", lambda: (lambda st: st if st.get("keyEpoch", 0) >= 2 else None)(
        status_of(kubectl, job_ns, "rotate")), 300, 0.5)
    assert s["keyRotation"]["everyRounds"] == 2 and s["keyRotation"]["graceRounds"] == 0
    final = wait_phase(kubectl, job_ns, "rotate", ("Succeeded",), 300)
    assert final["round"] == rounds and final["keyEpoch"] >= 2  # no round lost to a rotation
    assert final["metrics"]["auc"] >= 0.9, final["metrics"]
    keys_ready = condition(final, "KeysReady")
    assert keys_ready["status"] == "True" and f"key epoch {final['keyEpoch']}" in keys_ready["message"]
    epoch = final["keyEpoch"]
    # Every participant's Secret holds the current epoch and the next; the older ones are retired.
    secrets = [(x["metadata"]["namespace"], x["metadata"]["name"])
               for x in kubectl.json("get", "secrets", "-A", "-l", f"fedsec.io/job-uid={uid}")["items"]
               if x["metadata"]["name"].endswith("-pki") and "operator" not in x["metadata"]["name"]]
    assert sorted(ns for ns, _ in secrets) == sorted([job_ns, *site_nss]), secrets  # the aggregator's and each site's
    for ns, name in secrets:
        wait_until(f"Secret {ns}/{name} to hold epochs {epoch} and {epoch + 1}",
                   lambda ns=ns, name=name: epochs_in_secret(ns, name) == {epoch, epoch + 1}, 30, 0.5)
    events = kubectl.json("get", "events", "-n", job_ns, "--field-selector", "involvedObject.kind=FederatedJob")["items"]
    rotated = [e["message"] for e in events if e["reason"] == "KeysRotated"]
    assert rotated and any(f"-> {epoch};" in m for m in rotated), rotated
    for ns in site_nss:  # every site ran to the end in its one pod: no client restarted for a rotation
        def finished(ns: str = ns) -> list[dict[str, Any]]:
            pods = [p for p in client_pods(kubectl, uid) if p["metadata"]["namespace"] == ns]
            return pods if all(p["status"].get("phase") in ("Succeeded", "Failed") for p in pods) else []

        pods = wait_until(f"the client pod in {ns} to finish", finished, 120, 1.0)
        assert [p["status"]["phase"] for p in pods] == ["Succeeded"], pods
        assert pods[0]["status"]["containerStatuses"][0]["restartCount"] == 0
