"""Workloads through the real controller-manager and scheduler, run by the node agent."""

from __future__ import annotations

import base64
import json
import os
import sys
import textwrap
import urllib.request

import pytest
from cluster_fixtures import ClusterInfo, Kubectl, wait_until

pytestmark = pytest.mark.cluster

# The node agent runs no images: commands are programs on this machine.
PY = sys.executable


def py_container(name: str, code: str, **extra: object) -> dict[str, object]:
    return {"name": name, "image": "not-pulled.invalid/python", "command": [PY, "-c", textwrap.dedent(code)],
            **extra}


def apply_obj(kubectl: Kubectl, namespace: str, *objs: dict[str, object]) -> None:
    kubectl.apply("\n---\n".join(json.dumps(o) for o in objs), namespace)


def pod_phase(kubectl: Kubectl, ns: str, name: str) -> str:
    return kubectl("get", "pod", name, "-n", ns, "-o", "jsonpath={.status.phase}", check=False).stdout


def test_job_becomes_a_pod_that_runs_to_succeeded(kubectl: Kubectl, cluster: ClusterInfo, namespace: str) -> None:
    apply_obj(kubectl, namespace, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "hello"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [py_container("main", "import socket; print('job done on', socket.gethostname())")]}}},
    })
    kubectl("wait", "--for=condition=Complete", "job/hello", "-n", namespace, "--timeout=60s", timeout=70)
    pods = kubectl.json("get", "pods", "-n", namespace, "-l", "job-name=hello")["items"]
    assert len(pods) == 1
    pod = pods[0]
    assert pod["spec"]["nodeName"] == cluster.node_name
    # Bound by the real kube-scheduler, not by anything of ours.
    events = kubectl.json("get", "events", "-n", namespace,
                          "--field-selector", f"involvedObject.name={pod['metadata']['name']},reason=Scheduled")
    assert [e["source"].get("component") or e.get("reportingComponent") for e in events["items"]] == [
        "default-scheduler"]
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    logs = kubectl("logs", "-n", namespace, pod["metadata"]["name"]).stdout
    assert f"job done on {pod['metadata']['name']}" in logs


def test_two_pods_behind_a_service_talk_by_dns_name(kubectl: Kubectl, namespace: str) -> None:
    server = """
        import http.server, socket
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = socket.gethostname().encode()
                self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
                self.wfile.write(body)
        # Both replicas listen on the same port: each pod has an address of its own.
        http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
    """
    apply_obj(kubectl, namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [py_container(
                "web", server, ports=[{"name": "http", "containerPort": 8080}],
                readinessProbe={"tcpSocket": {"port": "http"}, "periodSeconds": 1})]}}},
    }, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    })
    kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=60s", timeout=70)
    client = f"""
        import socket, sys, time, urllib.request
        seen = set()
        deadline = time.time() + 40
        # Short name via the resolv.conf search path, and the full name.
        for url in ["http://web/", "http://web.{namespace}.svc.cluster.local/"] * 20:
            while True:
                try:
                    seen.add(urllib.request.urlopen(url, timeout=5).read().decode()); break
                except OSError as e:
                    if time.time() > deadline: raise
                    time.sleep(0.2)
        print("backends:", sorted(seen), "web ->", socket.gethostbyname("web"))
        sys.exit(0 if len(seen) == 2 else 1)
    """
    apply_obj(kubectl, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
        "spec": {"restartPolicy": "Never", "containers": [py_container("client", client)]},
    })
    wait_until("pod client to finish", lambda: pod_phase(kubectl, namespace, "client") in ("Succeeded", "Failed"), 90)
    logs = kubectl("logs", "-n", namespace, "client").stdout
    assert pod_phase(kubectl, namespace, "client") == "Succeeded", logs
    svc_ip = kubectl("get", "svc", "web", "-n", namespace, "-o", "jsonpath={.spec.clusterIP}").stdout
    assert f"web -> {svc_ip}" in logs
    ips = {p["status"]["podIP"] for p in kubectl.json("get", "pods", "-n", namespace, "-l", "app=web")["items"]}
    assert len(ips) == 2
    # The test process (on the host) reaches pod IPs and ClusterIPs directly: no port-forward needed.
    names = {pod["metadata"]["name"]
             for pod in kubectl.json("get", "pods", "-n", namespace, "-l", "app=web")["items"]}
    for ip in ips:
        assert urllib.request.urlopen(f"http://{ip}:8080/", timeout=5).read().decode() in names
    assert urllib.request.urlopen(f"http://{svc_ip}/", timeout=5).read().decode() in names


def test_env_and_volumes_from_secrets_configmaps_downward_api(kubectl: Kubectl, namespace: str) -> None:
    kubectl("create", "secret", "generic", "creds", "-n", namespace, "--from-literal=password=s3cret")
    kubectl("create", "configmap", "settings", "-n", namespace, "--from-literal=mode=fast",
            "--from-literal=rounds=3")
    code = """
        import json, os, pathlib
        sa = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
        print(json.dumps({
            "env": {k: os.environ.get(k) for k in ["PASSWORD", "MODE", "CFG_rounds", "POD_NAME", "POD_IP", "GREETING"]},
            "secret_file": pathlib.Path("/etc/creds/password").read_text(),
            "config_file": pathlib.Path("/etc/settings/mode").read_text(),
            "labels": pathlib.Path("/etc/podinfo/labels").read_text(),
            "scratch_writable": pathlib.Path("/scratch").is_dir() and os.access("/scratch", os.W_OK),
            "sa_namespace": (sa / "namespace").read_text(),
            "sa_token": bool((sa / "token").read_text()),
        }))
    """
    apply_obj(kubectl, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "envs", "labels": {"tier": "test"}},
        "spec": {"restartPolicy": "Never", "containers": [py_container(
            "main", code,
            env=[
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "GREETING", "value": "hi $(POD_NAME)"},
            ],
            envFrom=[{"prefix": "CFG_", "configMapRef": {"name": "settings"}}],
            volumeMounts=[
                {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
                {"name": "settings", "mountPath": "/etc/settings"},
                {"name": "podinfo", "mountPath": "/etc/podinfo"},
                {"name": "scratch", "mountPath": "/scratch"},
            ])],
            "volumes": [
                {"name": "creds", "secret": {"secretName": "creds"}},
                {"name": "settings", "configMap": {"name": "settings"}},
                {"name": "podinfo", "downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
                {"name": "scratch", "emptyDir": {}},
            ]},
    })
    wait_until("pod envs to succeed", lambda: pod_phase(kubectl, namespace, "envs") == "Succeeded", 60)
    out = json.loads(kubectl("logs", "-n", namespace, "envs").stdout)
    pod = kubectl.json("get", "pod", "envs", "-n", namespace)
    assert out["env"] == {"PASSWORD": "s3cret", "MODE": "fast", "CFG_rounds": "3", "POD_NAME": "envs",
                          "POD_IP": pod["status"]["podIP"], "GREETING": "hi envs"}
    assert out["secret_file"] == "s3cret" and out["config_file"] == "fast"
    assert 'tier="test"' in out["labels"]
    assert out["scratch_writable"] and out["sa_token"] and out["sa_namespace"] == namespace


def test_pod_reaches_the_api_server_with_its_serviceaccount(kubectl: Kubectl, namespace: str) -> None:
    code = """
        import json, os, ssl, urllib.request
        sa = "/var/run/secrets/kubernetes.io/serviceaccount"
        ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        for url in ["https://kubernetes.default.svc/version", f"https://{host}/version"]:
            req = urllib.request.Request(url, headers={"Authorization": "Bearer " + open(sa + "/token").read()})
            print(json.load(urllib.request.urlopen(req, context=ctx, timeout=10))["gitVersion"])
    """
    apply_obj(kubectl, namespace, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "api"},
                                   "spec": {"restartPolicy": "Never", "containers": [py_container("main", code)]}})
    wait_until("pod api to finish", lambda: pod_phase(kubectl, namespace, "api") in ("Succeeded", "Failed"), 60)
    logs = kubectl("logs", "-n", namespace, "api").stdout
    assert pod_phase(kubectl, namespace, "api") == "Succeeded", logs
    version = json.loads(kubectl("get", "--raw", "/version").stdout)["gitVersion"]
    assert logs.split() == [version, version]


def test_pvc_is_provisioned_and_keeps_data_between_pods(kubectl: Kubectl, namespace: str) -> None:
    apply_obj(kubectl, namespace, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    })

    def pod(name: str, code: str) -> dict[str, object]:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {
            "restartPolicy": "Never",
            "containers": [py_container("main", code, volumeMounts=[{"name": "d", "mountPath": "/data"}])],
            "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}}

    apply_obj(kubectl, namespace, pod("writer", "open('/data/model.bin', 'w').write('round-7')"))
    wait_until("pod writer to succeed", lambda: pod_phase(kubectl, namespace, "writer") == "Succeeded", 60)
    apply_obj(kubectl, namespace, pod("reader", "print(open('/data/model.bin').read())"))
    wait_until("pod reader to succeed", lambda: pod_phase(kubectl, namespace, "reader") == "Succeeded", 60)
    assert kubectl("logs", "-n", namespace, "reader").stdout.strip() == "round-7"
    pv = kubectl("get", "pvc", "data", "-n", namespace, "-o", "jsonpath={.spec.volumeName}").stdout
    kubectl("delete", "pod", "writer", "reader", "-n", namespace, "--timeout=60s", timeout=70)
    kubectl("delete", "pvc", "data", "-n", namespace, "--timeout=60s", timeout=70)
    wait_until(f"the provisioner to delete released volume {pv}",
               lambda: kubectl("get", "pv", pv, check=False).returncode != 0, 60)


def test_restart_policy_and_exit_codes(kubectl: Kubectl, namespace: str) -> None:
    flaky = """
        import os, sys
        p = "/state/attempts"
        n = int(open(p).read()) if os.path.exists(p) else 0
        open(p, "w").write(str(n + 1))
        print("attempt", n + 1)
        sys.exit(3 if n == 0 else 0)
    """
    apply_obj(kubectl, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "flaky"},
        "spec": {"restartPolicy": "OnFailure",
                 "containers": [py_container("main", flaky, volumeMounts=[{"name": "s", "mountPath": "/state"}])],
                 "volumes": [{"name": "s", "emptyDir": {}}]},
    }, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fails"},
        "spec": {"restartPolicy": "Never", "containers": [py_container("main", "raise SystemExit(7)")]},
    })
    wait_until("pod flaky to succeed after a restart",
               lambda: pod_phase(kubectl, namespace, "flaky") == "Succeeded", 60)
    st = kubectl.json("get", "pod", "flaky", "-n", namespace)["status"]["containerStatuses"][0]
    assert st["restartCount"] == 1
    assert st["lastState"]["terminated"]["exitCode"] == 3
    assert kubectl("logs", "-n", namespace, "flaky", "--previous").stdout.strip() == "attempt 1"
    assert kubectl("logs", "-n", namespace, "flaky").stdout.strip() == "attempt 2"
    wait_until("pod fails to fail", lambda: pod_phase(kubectl, namespace, "fails") == "Failed", 60)
    st = kubectl.json("get", "pod", "fails", "-n", namespace)["status"]["containerStatuses"][0]
    assert st["state"]["terminated"]["exitCode"] == 7 and st["restartCount"] == 0


def test_deleting_a_pod_stops_its_processes(kubectl: Kubectl, namespace: str) -> None:
    apply_obj(kubectl, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"},
        "spec": {"terminationGracePeriodSeconds": 5,
                 "containers": [py_container("main", "import time; print('up', flush=True); time.sleep(3600)")]},
    })
    kubectl("wait", "--for=condition=Ready", "pod/sleeper", "-n", namespace, "--timeout=60s", timeout=70)
    cid = kubectl("get", "pod", "sleeper", "-n", namespace,
                  "-o", "jsonpath={.status.containerStatuses[0].containerID}").stdout
    pid = int(cid.rsplit("/", 1)[1])
    assert os.path.exists(f"/proc/{pid}")
    kubectl("delete", "pod", "sleeper", "-n", namespace, "--timeout=30s", timeout=40)
    wait_until(f"process {pid} of pod sleeper to end", lambda: not os.path.exists(f"/proc/{pid}"), 10)


def test_logs_follow_until_the_container_exits(kubectl: Kubectl, namespace: str) -> None:
    code = """
        import time
        for i in range(3):
            print("line", i, flush=True)
            time.sleep(0.5)
    """
    apply_obj(kubectl, namespace, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "talker"},
                                   "spec": {"restartPolicy": "Never", "containers": [py_container("main", code)]}})
    wait_until("pod talker to start", lambda: pod_phase(kubectl, namespace, "talker") in ("Running", "Succeeded"), 60)
    # -f returns once the container has exited, with every line.
    out = kubectl("logs", "-f", "-n", namespace, "talker", timeout=30).stdout
    assert out.splitlines() == ["line 0", "line 1", "line 2"]
    assert kubectl("logs", "--tail=1", "-n", namespace, "talker").stdout.strip() == "line 2"


def test_pod_waits_for_a_secret_created_after_it(kubectl: Kubectl, namespace: str) -> None:
    code = "import os; print(os.environ['TOKEN'], open('/etc/late/key').read())"
    apply_obj(kubectl, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "patient"},
        "spec": {"restartPolicy": "Never", "containers": [py_container(
            "main", code,
            env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late-env", "key": "token"}}}],
            volumeMounts=[{"name": "late", "mountPath": "/etc/late"}])],
            "volumes": [{"name": "late", "secret": {"secretName": "late-vol"}}]},
    })

    def waiting_reason() -> str:
        st = kubectl.json("get", "pod", "patient", "-n", namespace)["status"].get("containerStatuses") or [{}]
        return (st[0].get("state") or {}).get("waiting", {}).get("reason", "")

    wait_until("pod patient to wait for its volume's secret", lambda: waiting_reason() == "ContainerCreating", 30)
    kubectl("create", "secret", "generic", "late-vol", "-n", namespace, "--from-literal=key=v1")
    wait_until("pod patient to wait for its env's secret",
               lambda: waiting_reason() == "CreateContainerConfigError", 30)
    assert pod_phase(kubectl, namespace, "patient") == "Pending"
    kubectl("create", "secret", "generic", "late-env", "-n", namespace, "--from-literal=token=t0")
    wait_until("pod patient to succeed", lambda: pod_phase(kubectl, namespace, "patient") == "Succeeded", 30)
    assert kubectl("logs", "-n", namespace, "patient").stdout.strip() == "t0 v1"


def test_running_pod_sees_secret_and_configmap_updates(kubectl: Kubectl, namespace: str) -> None:
    # Key rotation relies on this: the operator patches a Secret and the process re-reads the directory.
    kubectl("create", "secret", "generic", "rot", "-n", namespace, "--from-literal=id-1.crt=c1",
            "--from-literal=id-1.key=k1", "--from-literal=ca.crt=ca")
    kubectl("create", "configmap", "knobs", "-n", namespace, "--from-literal=mode=fast")
    # Prints what it sees whenever that changes. Hidden names are the volume's ..data machinery; a
    # name listed just before an update may be gone when read (as with kubelet): read again then.
    code = """
        import json, os, pathlib, time
        def files(d):
            return {n: (pathlib.Path(d) / n).read_text() for n in sorted(os.listdir(d)) if not n.startswith(".")}
        last = None
        while True:
            try:
                seen = json.dumps({"secret": files("/etc/rot"), "config": files("/etc/knobs"),
                                   "pinned": pathlib.Path("/etc/pinned.crt").read_text(),
                                   "atomic": os.path.islink("/etc/rot/..data")}, sort_keys=True)
            except FileNotFoundError:
                continue
            if seen != last:
                print(seen, flush=True)
                last = seen
            time.sleep(0.1)
    """
    apply_obj(kubectl, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "watcher"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [py_container(
            "main", code, volumeMounts=[
                {"name": "rot", "mountPath": "/etc/rot", "readOnly": True},
                {"name": "knobs", "mountPath": "/etc/knobs"},
                {"name": "rot", "mountPath": "/etc/pinned.crt", "subPath": "id-1.crt"},
            ])],
            "volumes": [{"name": "rot", "secret": {"secretName": "rot"}},
                        {"name": "knobs", "configMap": {"name": "knobs"}}]},
    })

    def seen() -> dict[str, object]:
        lines = kubectl("logs", "-n", namespace, "watcher", check=False).stdout.splitlines()
        return json.loads(lines[-1]) if lines else {}

    start = wait_until("pod watcher to report its volumes", seen, 60)
    assert start == {"secret": {"ca.crt": "ca", "id-1.crt": "c1", "id-1.key": "k1"}, "config": {"mode": "fast"},
                     "pinned": "c1", "atomic": True}

    def b64(s: str) -> str:
        return base64.b64encode(s.encode()).decode()

    # A rotation: a changed key, new keys, an old key gone.
    kubectl("patch", "secret", "rot", "-n", namespace, "--type=merge", "-p", json.dumps({"data": {
        "id-1.crt": b64("c1-renewed"), "id-1.key": None, "id-2.crt": b64("c2"), "id-2.key": b64("k2")}}))
    kubectl("patch", "configmap", "knobs", "-n", namespace, "--type=merge", "-p", '{"data": {"mode": "slow"}}')
    want = {"secret": {"ca.crt": "ca", "id-1.crt": "c1-renewed", "id-2.crt": "c2", "id-2.key": "k2"},
            "config": {"mode": "slow"}, "pinned": "c1", "atomic": True}
    wait_until("pod watcher to see the updated secret and configmap", lambda: seen() == want, 20)
    assert pod_phase(kubectl, namespace, "watcher") == "Running"


def test_run_as_user_can_write_its_volumes(kubectl: Kubectl, namespace: str) -> None:
    apply_obj(kubectl, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nonroot"},
        "spec": {"restartPolicy": "Never", "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
                 "containers": [{"name": "main", "image": "not-pulled.invalid/sh",
                                 "command": ["/bin/sh", "-c", "id -u; id -g; touch /scratch/x && echo wrote"],
                                 "volumeMounts": [{"name": "s", "mountPath": "/scratch"}]}],
                 "volumes": [{"name": "s", "emptyDir": {}}]},
    })
    wait_until("pod nonroot to finish", lambda: pod_phase(kubectl, namespace, "nonroot") in ("Succeeded", "Failed"), 60)
    logs = kubectl("logs", "-n", namespace, "nonroot").stdout
    assert logs.split() == ["1000", "1000", "wrote"], logs


def test_image_entrypoints_stand_in_for_a_missing_command(kubectl: Kubectl, namespace: str) -> None:
    # images.json maps the project's image to its entrypoint, found on the pods' PATH (.venv/bin).
    apply_obj(kubectl, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "cli"},
        "spec": {"restartPolicy": "Never",
                 "containers": [{"name": "main", "image": "registry.invalid/team/fedsec:dev", "args": ["--help"]}]},
    }, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unknown"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "registry.invalid/other:1"}]},
    })
    wait_until("pod cli to succeed", lambda: pod_phase(kubectl, namespace, "cli") == "Succeeded", 60)
    assert "usage" in kubectl("logs", "-n", namespace, "cli").stdout.lower()
    wait_until("pod unknown to fail", lambda: pod_phase(kubectl, namespace, "unknown") == "Failed", 60)
    st = kubectl.json("get", "pod", "unknown", "-n", namespace)["status"]
    assert st["reason"] == "NoCommand" and "images.json" in st["message"]
