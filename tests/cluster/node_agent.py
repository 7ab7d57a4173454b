"""Node agent for the test control plane: a stand-in for a kubelet (plus
kube-proxy, CoreDNS and a local-path PVC provisioner) that runs the Pods bound to
its Node as local processes. Test infrastructure, not product: see
docs/test-cluster.md for what it does and, as plainly, what it does not.

    python tests/cluster/node_agent.py --state <cluster state dir>

clusterctl.py starts it; it reads cluster.json and admin.kubeconfig's credentials
from the state dir, and touches node-agent.ready once its Node is Ready.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_net import Network, delete_netns, leftover_netns  # noqa: E402
from agent_pods import PodWorker, now  # noqa: E402
from agent_services import DNSServer, Proxy, ServiceTable  # noqa: E402
from kube import Kube, KubeError  # noqa: E402

log = logging.getLogger("node-agent")
PROVISIONER = "fedsec.io/local-dir"
STORAGE_CLASS = "fedsec-local"
LEASE_SECONDS = 40


class Informer(threading.Thread):
    """List, then watch from the list's resourceVersion; relist when the watch expires."""

    def __init__(self, kube: Kube, path: str, handler: Callable[[str, dict[str, Any]], None],
                 stop: threading.Event, **query: Any) -> None:
        super().__init__(name=f"informer {path}", daemon=True)
        self.kube, self.path, self.handler, self.stop, self.query = kube, path, handler, stop, query
        self.cache: dict[str, dict[str, Any]] = {}
        self.synced = threading.Event()

    def _emit(self, typ: str, obj: dict[str, Any]) -> None:
        try:
            self.handler(typ, obj)
        except Exception:  # noqa: BLE001 - a handler bug must not stop the watch
            log.exception("handler for %s failed on %s", self.path, obj.get("metadata", {}).get("name"))

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                lst = self.kube.get(self.path, **self.query)
                rv = lst["metadata"]["resourceVersion"]
                fresh = {o["metadata"]["uid"]: o for o in lst["items"]}
                for uid in set(self.cache) - set(fresh):
                    self._emit("DELETED", self.cache.pop(uid))
                for uid, o in fresh.items():
                    self._emit("MODIFIED" if uid in self.cache else "ADDED", o)
                self.cache = fresh
                self.synced.set()
                while not self.stop.is_set():
                    for typ, o in self.kube.watch(self.path, rv, 55, **self.query):
                        rv = o["metadata"].get("resourceVersion", rv)
                        if typ == "BOOKMARK":
                            continue
                        uid = o["metadata"]["uid"]
                        if typ == "DELETED":
                            self.cache.pop(uid, None)
                        else:
                            self.cache[uid] = o
                        self._emit(typ, o)
                        if self.stop.is_set():
                            return
            except KubeError as e:
                if e.status != 410:
                    log.warning("watch %s: %s; relisting", self.path, e)
                    self.stop.wait(1)
            except Exception as e:  # noqa: BLE001 - the API server restarting, a dropped connection
                log.warning("watch %s: %s; relisting", self.path, e)
                self.stop.wait(1)


class Agent:
    def __init__(self, state: Path) -> None:
        self.state = str(state)
        self.cluster: dict[str, Any] = json.loads((state / "cluster.json").read_text())
        pki = state / "pki"
        self.kube = Kube("127.0.0.1", self.cluster["apiserver_port"], str(pki / "ca.crt"),
                         str(pki / "admin.crt"), str(pki / "admin.key"))
        self.node = self.cluster["node_name"]
        self.net = Network(self.cluster["slot"], self.cluster["bridge"], self.cluster["bridge_ip"],
                           self.cluster["pod_cidr"], self.cluster["service_cidr"])
        self.stop = threading.Event()
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()
        self.services = ServiceTable(("127.0.0.1", self.cluster["apiserver_port"]))
        self.memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        self.mountpoints_file = state / "created-mountpoints"

    # -- lifecycle ----------------------------------------------------------------
    def run(self) -> None:
        t0 = time.monotonic()
        self.net.setup()
        self.register_node()
        log.info("network set up and node registered (%.1fs)", time.monotonic() - t0)
        self.ensure_storage_class()
        self.proxy = Proxy(self.services)
        self.proxy.start()
        DNSServer(self.services, self.cluster["dns_ip"]).start()
        informers = [
            Informer(self.kube, "/api/v1/services", self.services.on_service, self.stop),
            Informer(self.kube, "/apis/discovery.k8s.io/v1/endpointslices", self.services.on_slice, self.stop),
            Informer(self.kube, "/api/v1/pods", self.on_pod, self.stop, fieldSelector=f"spec.nodeName={self.node}"),
            Informer(self.kube, "/api/v1/persistentvolumeclaims", self.on_pvc, self.stop),
            Informer(self.kube, "/api/v1/persistentvolumes", self.on_pv, self.stop),
        ]
        for i in informers:
            i.start()
        self.serve_logs()
        threading.Thread(target=self.heartbeat, name="heartbeat", daemon=True).start()
        for i in informers:
            if not i.synced.wait(30):
                raise RuntimeError(f"timed out after 30s waiting for the first list of {i.path}")
        log.info("informers synced (%.1fs)", time.monotonic() - t0)
        self.wait_node_ready()
        Path(self.state, "node-agent.ready").touch()
        log.info("node %s ready", self.node)
        self.stop.wait()
        self.shutdown()

    def shutdown(self) -> None:
        log.info("stopping: ending every pod's processes and removing sandboxes")
        with self.lock:
            workers = list(self.workers.values())
        for w in workers:
            w.pod["metadata"]["deletionGracePeriodSeconds"] = min(
                5, w.pod["spec"].get("terminationGracePeriodSeconds", 30))
            w.gone.set()  # do not delete pod objects: the API server is going away too
            w.delete_requested.set()
            w.wake.set()
        for w in workers:
            w.join(15)
        if hasattr(self, "proxy"):
            self.proxy.stop()
        cleanup_leftovers(Path(self.state), self.net.bridge, self.net.service_cidr)
        log.info("stopped")

    # -- node ---------------------------------------------------------------------
    def _node_status(self) -> dict[str, Any]:
        t = now()
        mem_ki = f"{self.memory_bytes // 1024}Ki"
        cpus = str(os.cpu_count() or 2)

        def cond(typ: str, status: str, reason: str, msg: str) -> dict[str, str]:
            return {"type": typ, "status": status, "reason": reason, "message": msg,
                    "lastHeartbeatTime": t, "lastTransitionTime": self._ready_since}

        resources = {"cpu": cpus, "memory": mem_ki, "pods": "110", "ephemeral-storage": "100Gi"}
        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                cond("Ready", "True", "KubeletReady", "fedsec test node agent is running pods"),
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "not measured"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "not measured"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "not measured"),
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": self.node}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.log_port}},
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": os.uname().release,
                "osImage": "fedsec test node agent", "containerRuntimeVersion": "fedsec-agent://0.1",
                "kubeletVersion": self._version, "kubeProxyVersion": "", "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def register_node(self) -> None:
        self.log_port = self.cluster["agent_port"]
        self._version = self.kube.get("/version")["gitVersion"]
        self._ready_since = now()
        node = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.node, "labels": {
                "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "fedsec-test"}},
            "spec": {"podCIDR": self.cluster["pod_cidr"], "podCIDRs": [self.cluster["pod_cidr"]]},
            # Created Ready, as kubelet registers: the not-ready taint that admission adds anyway
            # is then lifted at the node lifecycle controller's next pass.
            "status": self._node_status(),
        }
        try:
            self.kube.request("POST", "/api/v1/nodes", node)
        except KubeError as e:
            if e.status != 409:
                raise
        self.kube.merge_patch(f"/api/v1/nodes/{self.node}/status", {"status": self._node_status()})

    def heartbeat(self) -> None:
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"
        while not self.stop.is_set():
            try:
                t = dt_micro()
                lease = self.kube.get_or_none(lease_path)
                spec = {"holderIdentity": self.node, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": t}
                if lease is None:
                    self.kube.request("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": self.node, "namespace": "kube-node-lease"}, "spec": spec})
                else:
                    self.kube.merge_patch(lease_path, {"spec": spec})
                self.kube.merge_patch(f"/api/v1/nodes/{self.node}/status", {"status": self._node_status()})
            except Exception as e:  # noqa: BLE001 - keep beating; the API server may be restarting
                log.warning("heartbeat failed: %s", e)
            self.stop.wait(10)

    def wait_node_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            node = self.kube.get(f"/api/v1/nodes/{self.node}")
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))
            taints = [t for t in node["spec"].get("taints") or [] if t["effect"] in ("NoSchedule", "NoExecute")]
            if ready and not taints:
                return
            self.stop.wait(0.2)
        raise RuntimeError(f"timed out after 30s waiting for node {self.node} to be Ready without taints")

    # -- pods ---------------------------------------------------------------------
    def on_pod(self, typ: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            w = self.workers.get(uid)
            if typ == "DELETED":
                if w is not None:
                    w.object_deleted()
                    self.workers.pop(uid, None)
                return
            if w is not None:
                w.update(pod)
                return
            if pod["status"].get("phase") in ("Succeeded", "Failed"):
                if pod["metadata"].get("deletionTimestamp"):
                    # A finished pod we never ran (agent restart): nothing to stop, just finish the delete.
                    try:
                        self.kube.request("DELETE", f"/api/v1/namespaces/{pod['metadata']['namespace']}/pods/"
                                          f"{pod['metadata']['name']}", {"gracePeriodSeconds": 0})
                    except KubeError:
                        pass
                return
            w = PodWorker(self, pod)
            if pod["metadata"].get("deletionTimestamp"):
                w.delete_requested.set()
            self.workers[uid] = w
            w.start()

    def image_entrypoint(self, image: str) -> list[str] | None:
        if not hasattr(self, "_images"):
            path = Path(__file__).resolve().parent / "images.json"
            self._images = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
        repo = image.split("@", 1)[0]
        last = repo.rsplit("/", 1)[-1]
        if ":" in last:
            repo = repo[: len(repo) - len(last)] + last.split(":", 1)[0]
        return self._images.get(repo) or self._images.get(repo.rsplit("/", 1)[-1])

    def worker_by_name(self, ns: str, name: str) -> PodWorker | None:
        with self.lock:
            return next((w for w in self.workers.values() if w.ns == ns and w.name == name), None)

    def service_env(self, ns: str, only_kubernetes: bool = False) -> dict[str, str]:
        """Docker-link style variables, as kubelet sets them, for the Services of the pod's namespace."""
        env: dict[str, str] = {}
        with self.services.lock:
            svcs = [(k, v) for k, v in self.services.services.items()
                    if k == ("default", "kubernetes") or (k[0] == ns and not only_kubernetes)]
        for (_, name), svc in svcs:
            cip = svc["spec"].get("clusterIP")
            ports = svc["spec"].get("ports") or []
            if not cip or cip == "None" or not ports:
                continue
            prefix = name.upper().replace("-", "_")
            env[f"{prefix}_SERVICE_HOST"] = cip
            env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
            for p in ports:
                proto = p.get("protocol", "TCP")
                if p.get("name"):
                    env[f"{prefix}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}"] = str(p["port"])
                base = f"{prefix}_PORT_{p['port']}_{proto}"
                env[base] = f"{proto.lower()}://{cip}:{p['port']}"
                env[f"{base}_PROTO"], env[f"{base}_PORT"], env[f"{base}_ADDR"] = proto.lower(), str(p["port"]), cip
            env[f"{prefix}_PORT"] = f"{ports[0].get('protocol', 'TCP').lower()}://{cip}:{ports[0]['port']}"
        return env

    def make_mountpoint(self, path: str, is_file: bool) -> None:
        """Creates a missing mount point on the host (pods share its filesystem) and remembers what
        it created, so that cleanup_leftovers can remove it again."""
        p = Path(path)
        if p.exists():
            return
        top = p
        while not top.parent.exists():
            top = top.parent
        with self.lock:
            with open(self.mountpoints_file, "a") as f:
                f.write(str(top) + "\n")
        if is_file:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
        else:
            p.mkdir(parents=True, exist_ok=True)

    # -- storage ------------------------------------------------------------------------
    def ensure_storage_class(self) -> None:
        sc = {
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS,
                         "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate",
        }
        try:
            self.kube.request("POST", "/apis/storage.k8s.io/v1/storageclasses", sc)
        except KubeError as e:
            if e.status != 409:
                raise

    def on_pvc(self, typ: str, pvc: dict[str, Any]) -> None:
        if typ == "DELETED" or pvc["spec"].get("volumeName") or pvc["status"].get("phase") == "Bound":
            return
        cls = pvc["spec"].get("storageClassName")
        if cls is None:
            return
        if cls != STORAGE_CLASS:
            sc = self.kube.get_or_none(f"/apis/storage.k8s.io/v1/storageclasses/{cls}")
            if sc is None or sc.get("provisioner") != PROVISIONER:
                return
        md = pvc["metadata"]
        name = f"pvc-{md['uid']}"
        path = Path(self.state) / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)  # as local-path-provisioner does: writable for any runAsUser
        pv = {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {
                "capacity": {"storage": pvc["spec"]["resources"]["requests"]["storage"]},
                "accessModes": pvc["spec"].get("accessModes") or ["ReadWriteOnce"],
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": md["namespace"],
                             "name": md["name"], "uid": md["uid"]},
                "storageClassName": cls,
                "persistentVolumeReclaimPolicy": "Delete",
                "volumeMode": pvc["spec"].get("volumeMode", "Filesystem"),
            },
        }
        try:
            self.kube.request("POST", "/api/v1/persistentvolumes", pv)
            log.info("provisioned %s for pvc %s/%s at %s", name, md["namespace"], md["name"], path)
        except KubeError as e:
            if e.status != 409:
                raise

    def on_pv(self, typ: str, pv: dict[str, Any]) -> None:
        ann = pv["metadata"].get("annotations") or {}
        if typ == "DELETED" or ann.get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
            return
        if pv["status"].get("phase") == "Released" and pv["spec"].get("persistentVolumeReclaimPolicy") == "Delete":
            path = (pv["spec"].get("hostPath") or {}).get("path")
            if path and path.startswith(str(Path(self.state) / "volumes") + "/"):
                shutil.rmtree(path, ignore_errors=True)
            try:
                self.kube.request("DELETE", f"/api/v1/persistentvolumes/{pv['metadata']['name']}")
            except KubeError as e:
                if e.status != 404:
                    raise

    # -- logs (the kubelet API's containerLogs, which `kubectl logs` reaches through the API server) --
    def serve_logs(self) -> None:
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("logs: " + fmt, *args)

            def do_GET(self) -> None:  # noqa: N802
                u = urllib.parse.urlsplit(self.path)
                q = urllib.parse.parse_qs(u.query)
                parts = u.path.strip("/").split("/")
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self.send_error(501, "the fedsec test node agent serves containerLogs only "
                                         "(no exec, attach, port-forward, stats)")
                    return
                _, ns, pod, cname = parts
                w = agent.worker_by_name(ns, pod)
                c = w.container(cname) if w else None
                if c is None:
                    self.send_error(404, f"container {cname} of pod {ns}/{pod} not found on this node")
                    return
                previous = q.get("previous", ["false"])[0] == "true"
                follow = q.get("follow", ["false"])[0] == "true" and not previous
                path = c.log_file(previous)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                data = path.read_bytes() if path.exists() else b""
                tail = q.get("tailLines", [None])[0]
                if tail is not None:
                    lines = data.splitlines(keepends=True)
                    data = b"".join(lines[-int(tail):]) if int(tail) > 0 else b""
                limit = q.get("limitBytes", [None])[0]
                if limit is not None:
                    data = data[: int(limit)]
                try:
                    self.wfile.write(data)
                    self.wfile.flush()
                    if not follow:
                        return
                    pos = path.stat().st_size if path.exists() else 0
                    restarts = c.restarts
                    while not agent.stop.is_set():
                        done = "running" not in c.state or c.restarts != restarts
                        if path.exists() and path.stat().st_size > pos:
                            with open(path, "rb") as f:
                                f.seek(pos)
                                chunk = f.read()
                            pos += len(chunk)
                            self.wfile.write(chunk)
                            self.wfile.flush()
                        elif done:
                            return
                        time.sleep(0.2)
                except (BrokenPipeError, ConnectionResetError):
                    return

        pki = Path(self.state) / "pki"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(pki / "node-agent-serving.crt"), str(pki / "node-agent-serving.key"))
        ctx.load_verify_locations(str(pki / "ca.crt"))
        # Only the API server (its kubelet-client certificate, from our CA) may read logs.
        ctx.verify_mode = ssl.CERT_REQUIRED
        server = ThreadingHTTPServer(("127.0.0.1", self.cluster["agent_port"]), Handler)
        server.daemon_threads = True
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, name="logs", daemon=True).start()


def dt_micro() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def cleanup_leftovers(state: Path, bridge: str, service_cidr: str) -> None:
    """Removes what a killed or crashed agent left: pod processes and network namespaces,
    the bridge, the Service route and the mount points it created. Safe to run twice."""
    from agent_net import ip

    slot = int(bridge.removeprefix("fsbr"))
    for ns in leftover_netns(slot):
        delete_netns(ns)
    ip("route", "del", "local", service_cidr, "dev", "lo", "table", "local", check=False)
    ip("link", "del", bridge, check=False)
    created = state / "created-mountpoints"
    if created.exists():
        for p in sorted(set(created.read_text().split("\n")) - {""}, key=len, reverse=True):
            _remove_empty_tree(Path(p))
        created.unlink()


def _remove_empty_tree(top: Path) -> None:
    """rmdir bottom-up, never deleting a file: only what is still empty goes."""
    if top.is_file():
        if top.stat().st_size == 0:
            top.unlink()
        return
    if not top.is_dir() or top.is_symlink():
        return
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda x: len(x[0]), reverse=True):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--state", required=True, type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    agent = Agent(args.state.resolve())
    signal.signal(signal.SIGTERM, lambda *_: agent.stop.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stop.set())
    try:
        agent.run()
    except Exception:
        log.exception("node agent failed; cleaning up")
        agent.stop.set()
        agent.shutdown()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
