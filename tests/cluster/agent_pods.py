"""Runs one Pod bound to the agent's Node as local processes.

A pod gets a network namespace (its own IP, see agent_net), its volumes written
to a directory, and each container runs as
    ip netns exec <pod-netns> unshare --uts --mount --propagation private -- sh launch.sh CMD...
where launch.sh sets the hostname, bind-mounts the volumes at their mount paths
(the mounts are private to that process tree) and execs the container's command.
Images are not pulled or unpacked: `command` must name a program on this machine.

Secret, configMap, downwardAPI and projected volumes are written as kubelet's AtomicWriter
writes them (pkg/volume/util/atomic_writer.go) and refreshed while the pod runs, so a process
sees a patched Secret's new keys in its mounted directory; subPath mounts keep their start content.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kube import KubeError, pod_path

if TYPE_CHECKING:
    from node_agent import Agent

log = logging.getLogger("node-agent.pods")
SH = shutil.which("sh") or "/bin/sh"
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
# The agent's own interpreter directory (the project's .venv/bin) comes first, so a pod's
# `command: [fedsec, ...]` or `[python, ...]` runs the project as installed in the work tree.
DEFAULT_PATH = f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# kubelet resyncs these volumes about once a minute; tests should not wait that long.
VOLUME_REFRESH_SECONDS = 2.0

# A volume's files: path relative to the volume -> (content, file mode).
Payload = dict[str, tuple[bytes, int]]


def _mount_order(mounts: list[dict[str, Any]], state_dir: str) -> list[dict[str, Any]]:
    """Mount order: parents before children (as a kubelet does), and any mount over a directory
    that holds the agent's state (an emptyDir at /tmp, say) last, since the volumes' sources live
    there and would be hidden from the bind mounts that follow it."""
    def covers_state(m: dict[str, Any]) -> bool:
        dst = m["mountPath"].rstrip("/") + "/"
        return (state_dir.rstrip("/") + "/").startswith(dst)

    return sorted(mounts, key=lambda m: (covers_state(m), m["mountPath"].rstrip("/").count("/")))


DATA_DIR = "..data"
DATA_TMP = "..data_tmp"


def atomic_write(d: Path, payload: Payload) -> None:
    """Projects payload into the existing directory d as kubelet's AtomicWriter does.

    The files live in a hidden timestamped directory; `..data` links to it and each top-level
    name links through `..data`. An update is one rename(2) of `..data`, so every file read through
    it is from the old set or from the new one, never a mix (a top-level name added or removed
    appears or goes just after). d itself is never replaced: it is bind-mounted into running pods,
    which would keep seeing the old inode."""
    data_link = d / DATA_DIR
    old_ts = os.readlink(data_link) if data_link.is_symlink() else None
    old_top = set(os.listdir(d / old_ts)) if old_ts and (d / old_ts).is_dir() else set()
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
    ts = Path(tempfile.mkdtemp(prefix=stamp, dir=d))
    try:
        ts.chmod(0o755)  # mkdtemp makes it 0700: a pod running as another user could not reach its files
        _write_payload(ts, payload)
        tmp = d / DATA_TMP
        tmp.unlink(missing_ok=True)  # left by an interrupted update
        tmp.symlink_to(ts.name)
        tmp.replace(data_link)
    except BaseException:
        shutil.rmtree(ts, ignore_errors=True)
        raise
    new_top = {rel.split("/", 1)[0] for rel in payload}
    for name in sorted(new_top):
        if not (d / name).is_symlink():
            (d / name).symlink_to(f"{DATA_DIR}/{name}")
    for name in old_top - new_top:
        (d / name).unlink(missing_ok=True)
    if old_ts and old_ts != ts.name:
        shutil.rmtree(d / old_ts, ignore_errors=True)


def _write_payload(root: Path, payload: Payload) -> None:
    for rel, (content, mode) in payload.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
        p.chmod(mode)


class NotYet(Exception):
    """A volume or env source does not exist yet; kubelet waits for it, so do we."""


class PodError(Exception):
    """The pod cannot run at all (e.g. no command); it fails with this message."""


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Container:
    spec: dict[str, Any]
    init: bool
    log_dir: Path
    proc: subprocess.Popen | None = None
    restarts: int = 0
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    ready: bool = False
    restart_at: float = 0.0
    next_probe: float = 0.0

    @property
    def name(self) -> str:
        return self.spec["name"]

    def log_file(self, previous: bool = False) -> Path:
        n = self.restarts - (1 if previous else 0)
        return self.log_dir / f"{max(n, 0)}.log"

    @property
    def terminated(self) -> bool:
        return "terminated" in self.state

    def status(self) -> dict[str, Any]:
        s: dict[str, Any] = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "restartCount": self.restarts,
            "started": "running" in self.state,
            "state": self.state,
        }
        if self.proc is not None:
            s["containerID"] = f"fedsec-agent://{self.proc.pid}"
        if self.last_state:
            s["lastState"] = self.last_state
        return s


class PodWorker(threading.Thread):
    def __init__(self, agent: "Agent", pod: dict[str, Any]) -> None:
        md = pod["metadata"]
        super().__init__(name=f"pod-{md['namespace']}/{md['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.uid: str = md["uid"]
        self.ns: str = md["namespace"]
        self.name: str = md["name"]
        self.dir = Path(agent.state) / "pods" / self.uid
        self.log_root = Path(agent.state) / "logs" / "pods" / f"{self.ns}_{self.name}_{self.uid}"
        self.delete_requested = threading.Event()
        self.gone = threading.Event()
        self.wake = threading.Event()
        self.ip: str | None = None
        self.netns: str | None = None
        self.phase = "Pending"
        self.message: str | None = None
        self.reason: str | None = None
        self.start_time: str | None = None
        self.initialized = False
        self._sent: str | None = None
        self.volumes: dict[str, Path] = {}
        # What each atomic-writer volume holds now, to skip rewrites when nothing changed.
        self._written: dict[str, Payload] = {}
        self._next_volume_refresh = 0.0
        # Service account tokens by (audience, expirationSeconds): (token, monotonic time to renew).
        self._tokens: dict[tuple[str, int], tuple[bytes, float]] = {}
        spec = pod["spec"]
        self.inits = [Container(c, True, self.log_root / c["name"]) for c in spec.get("initContainers") or []]
        self.apps = [Container(c, False, self.log_root / c["name"]) for c in spec["containers"]]

    # -- events from the informer -------------------------------------------------
    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.delete_requested.set()
        self.wake.set()

    def object_deleted(self) -> None:
        self.gone.set()
        self.delete_requested.set()
        self.wake.set()

    def container(self, name: str) -> Container | None:
        return next((c for c in self.inits + self.apps if c.name == name), None)

    # -- main loop ----------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception as e:  # noqa: BLE001 - one pod's bug must not take the agent down
            log.exception("pod %s/%s failed in the agent", self.ns, self.name)
            self.phase, self.reason, self.message = "Failed", "NodeAgentError", f"node agent: {e}"
            self._push_status()
        finally:
            self._stop_all()
            self.agent.net.delete_sandbox(self.uid)
            if self.ip:
                self.agent.net.release(self.ip)
            if self.delete_requested.is_set() and not self.gone.is_set():
                self._final_delete()
            if self.delete_requested.is_set():
                shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self) -> None:
        self.start_time = now()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._push_status()
        for c in self.inits + self.apps:
            if self._argv(c) is None:
                raise_msg = (f"container {c.name!r} has no command and its image {c.spec.get('image')!r} has no "
                             "entrypoint in tests/cluster/images.json: the test node agent runs no images, so set "
                             "`command` to a program on this machine or add the image there")
                self.phase, self.reason, self.message = "Failed", "NoCommand", raise_msg
                for x in self.inits + self.apps:
                    x.state = {"terminated": {"exitCode": 128, "reason": "NoCommand", "message": raise_msg,
                                              "startedAt": now(), "finishedAt": now()}}
                self._push_status()
                self._wait_for_delete()
                return
        # Volumes and env sources may not exist yet (a Secret created after the pod); retry like kubelet.
        while True:
            if self.delete_requested.is_set():
                return
            try:
                self.volumes = self._materialize_volumes()
                break
            except NotYet as e:
                for c in self.inits + self.apps:
                    c.state = {"waiting": {"reason": "ContainerCreating", "message": str(e)}}
                self._push_status()
                self.wake.wait(1)
                self.wake.clear()
        self.ip = self.agent.net.allocate()
        spec = self.pod["spec"]
        hostname = spec.get("hostname") or self.name
        fqdn = None
        if spec.get("subdomain"):
            fqdn = f"{hostname}.{spec['subdomain']}.{self.ns}.svc.cluster.local"
        search = f"{self.ns}.svc.cluster.local svc.cluster.local cluster.local"
        resolv = f"nameserver {self.agent.cluster['dns_ip']}\nsearch {search}\noptions ndots:5\n"
        self.netns = self.agent.net.create_sandbox(self.uid, self.ip, hostname, resolv, fqdn)
        self.hostname = hostname
        self._push_status()

        restart = spec.get("restartPolicy", "Always")
        for c in self.inits:
            while True:
                if self.delete_requested.is_set():
                    return
                if not self._start(c):
                    continue
                code = self._wait_exit(c)
                if code is None:
                    return
                if code == 0:
                    break
                if restart == "Never":
                    self.phase, self.reason = "Failed", "InitContainerFailed"
                    self._push_status()
                    self._wait_for_delete()
                    return
                self._backoff(c)
                if not self._sleep_until(c.restart_at):
                    return
                c.last_state = {"terminated": c.state["terminated"]}
                c.restarts += 1
        self.initialized = True
        for c in self.apps:
            self._start(c)
        self._push_status()
        self._next_volume_refresh = time.monotonic() + VOLUME_REFRESH_SECONDS
        while not self.delete_requested.is_set():
            self._tick(restart)
            self._refresh_volumes()
            # Pending until a container has started, as kubelet reports it.
            if self.phase == "Pending" and any(c.proc is not None for c in self.apps):
                self.phase = "Running"
            if all(c.terminated and c.restart_at == 0 for c in self.apps):
                failed = any(c.state["terminated"]["exitCode"] != 0 for c in self.apps)
                self.phase = "Failed" if failed else "Succeeded"
                self._push_status()
                self.agent.net.delete_sandbox(self.uid)  # a finished pod keeps its logs, not its sandbox
                self._wait_for_delete()
                return
            self._push_status()
            self.wake.wait(0.2)
            self.wake.clear()

    def _tick(self, restart: str) -> None:
        t = time.monotonic()
        for c in self.apps:
            if c.proc is not None and "running" in c.state:
                code = c.proc.poll()
                if code is not None:
                    self._record_exit(c, code)
                    if restart == "Always" or (restart == "OnFailure" and code != 0):
                        self._backoff(c)
                    else:
                        c.restart_at = 0
            elif "waiting" in c.state:
                # Its env sources were missing at the last try (CreateContainerConfigError).
                self._start(c)
            elif c.terminated and c.restart_at and t >= c.restart_at:
                c.last_state = {"terminated": c.state["terminated"]}
                c.restarts += 1
                c.restart_at = 0
                self._start(c)
            if "running" in c.state and t >= c.next_probe:
                c.ready = self._probe(c)
                c.next_probe = t + float((c.spec.get("readinessProbe") or {}).get("periodSeconds", 10) or 10)

    def _backoff(self, c: Container) -> None:
        # kubelet's back-off doubles from 10s; tests want restarts fast, so the first few are quick.
        delay = 1 + c.restarts if c.restarts < 3 else min(10 * 2 ** (c.restarts - 3), 300)
        c.restart_at = time.monotonic() + delay

    def _sleep_until(self, t: float) -> bool:
        while time.monotonic() < t:
            if self.delete_requested.is_set():
                return False
            self.wake.wait(min(0.5, t - time.monotonic()))
            self.wake.clear()
        return True

    def _wait_exit(self, c: Container) -> int | None:
        while True:
            if self.delete_requested.is_set():
                return None
            code = c.proc.poll() if c.proc else 1
            if code is not None:
                self._record_exit(c, code)
                self._push_status()
                return code
            self.wake.wait(0.2)
            self.wake.clear()

    def _record_exit(self, c: Container, code: int) -> None:
        exit_code = 128 - code if code < 0 else code  # killed by signal n -> 128+n, as a runtime reports
        started = c.state.get("running", {}).get("startedAt", now())
        c.state = {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                  "startedAt": started, "finishedAt": now(), "containerID": f"fedsec-agent://{c.proc.pid}"}}
        c.ready = False

    def _wait_for_delete(self) -> None:
        while not self.delete_requested.is_set():
            self.wake.wait(5)
            self.wake.clear()

    # -- containers ---------------------------------------------------------------------
    def _start(self, c: Container) -> bool:
        try:
            env = self._env(c.spec)
        except NotYet as e:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
            self._push_status()
            self.wake.wait(1)
            self.wake.clear()
            return False
        argv = [_expand(a, env) for a in self._argv(c) or []]
        c.log_dir.mkdir(parents=True, exist_ok=True)
        launch = self.dir / f"launch-{c.name}.sh"
        launch.write_text(self._launcher(c))
        cmd = ["ip", "netns", "exec", self.netns, UNSHARE, "--uts", "--mount", "--propagation", "private",
               "--", SH, str(launch), *argv]
        with open(c.log_file(), "ab") as out:
            c.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=env, start_new_session=True, cwd="/")
        c.state = {"running": {"startedAt": now()}}
        c.ready = not c.spec.get("readinessProbe")
        c.next_probe = time.monotonic() + float((c.spec.get("readinessProbe") or {}).get("initialDelaySeconds", 0) or 0)
        return True

    def _argv(self, c: Container) -> list[str] | None:
        """command + args, with the image's entrypoint from images.json standing in for a missing command."""
        command = c.spec.get("command") or self.agent.image_entrypoint(c.spec.get("image", ""))
        return None if not command else list(command) + list(c.spec.get("args") or [])

    def _launcher(self, c: Container) -> str:
        lines = ["set -e", f"hostname {shlex.quote(self.hostname)}"]
        for m in _mount_order(c.spec.get("volumeMounts") or [], self.agent.state):
            src = self.volumes.get(m["name"])
            if src is None:
                raise PodError(f"container {c.name!r} mounts unknown volume {m['name']!r}")
            if m.get("subPath"):
                src = src / m["subPath"]
                if not src.exists():
                    src.mkdir(parents=True)
                # In an atomic-writer volume the name is a symlink through ..data: bind what it names
                # now, so the mount keeps this content after updates, as kubelet's subPath mounts do.
                src = src.resolve()
            dst = m["mountPath"]
            self.agent.make_mountpoint(dst, is_file=src.is_file())
            lines.append(f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}")
            if m.get("readOnly"):
                lines.append(f"mount -o remount,bind,ro {shlex.quote(dst)}")
        wd = c.spec.get("workingDir")
        if wd:
            lines.append(f"mkdir -p {shlex.quote(wd)} && cd {shlex.quote(wd)}")
        sc = {**(self.pod["spec"].get("securityContext") or {}), **(c.spec.get("securityContext") or {})}
        if sc.get("runAsUser") is not None or sc.get("runAsGroup") is not None:
            uid, gid = sc.get("runAsUser", 0), sc.get("runAsGroup", sc.get("runAsUser", 0))
            lines.append(f'exec {SETPRIV} --reuid={int(uid)} --regid={int(gid)} --clear-groups -- "$@"')
        else:
            lines.append('exec "$@"')
        return "\n".join(lines) + "\n"

    def _stop_all(self) -> None:
        grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        dg = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if dg is not None:
            grace = min(grace, dg)
        running = [c for c in self.inits + self.apps if c.proc is not None and c.proc.poll() is None]
        for c in running:
            try:
                os.killpg(c.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(c.proc.poll() is None for c in running):
            time.sleep(0.05)
        for c in running:
            if c.proc.poll() is None:
                try:
                    os.killpg(c.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                c.proc.wait(10)

    def _final_delete(self) -> None:
        try:
            self.agent.kube.request("DELETE", pod_path(self.ns, self.name),
                                    {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}})
        except KubeError as e:
            if e.status not in (404, 409):
                log.warning("could not finish deleting pod %s/%s: %s", self.ns, self.name, e)

    # -- probes -------------------------------------------------------------------------
    def _probe(self, c: Container) -> bool:
        p = c.spec.get("readinessProbe")
        if not p:
            return True
        timeout = float(p.get("timeoutSeconds", 1) or 1)
        try:
            if "tcpSocket" in p:
                port = self._port(c, p["tcpSocket"]["port"])
                with socket.create_connection((self.ip, port), timeout=timeout):
                    return True
            if "httpGet" in p:
                g = p["httpGet"]
                conn = http.client.HTTPConnection(self.ip, self._port(c, g["port"]), timeout=timeout)
                if g.get("scheme", "HTTP").upper() == "HTTPS":
                    import ssl

                    conn = http.client.HTTPSConnection(self.ip, self._port(c, g["port"]), timeout=timeout,
                                                       context=ssl._create_unverified_context())  # noqa: S323
                conn.request("GET", g.get("path", "/"))
                return 200 <= conn.getresponse().status < 400
            if "exec" in p:
                r = subprocess.run(["ip", "netns", "exec", self.netns, *p["exec"]["command"]],
                                   capture_output=True, timeout=timeout + 5, env=self._env(c.spec))
                return r.returncode == 0
        except (OSError, subprocess.TimeoutExpired, NotYet, http.client.HTTPException):
            return False
        return True  # grpc probes are not implemented: treated as ready

    @staticmethod
    def _port(c: Container, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise OSError(f"no container port named {port}")

    # -- status -------------------------------------------------------------------------
    def _push_status(self) -> None:
        cond_t = now()
        apps_ready = bool(self.apps) and all(c.ready for c in self.apps)
        ready = apps_ready and self.phase == "Running"

        def cond(t: str, ok: bool) -> dict[str, Any]:
            return {"type": t, "status": "True" if ok else "False", "lastTransitionTime": cond_t}

        status: dict[str, Any] = {
            "phase": self.phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "conditions": [
                cond("PodScheduled", True),
                cond("PodReadyToStartContainers", self.netns is not None),
                cond("Initialized", self.initialized or not self.inits),
                cond("ContainersReady", apps_ready),
                cond("Ready", ready),
            ],
            "containerStatuses": [c.status() for c in self.apps],
        }
        if self.inits:
            status["initContainerStatuses"] = [c.status() for c in self.inits]
        if self.start_time:
            status["startTime"] = self.start_time
        if self.ip:
            status["podIP"] = self.ip
            status["podIPs"] = [{"ip": self.ip}]
        if self.reason:
            status["reason"] = self.reason
        if self.message:
            status["message"] = self.message
        # Conditions' times change on every push; compare without them so we only send changes.
        key = json.dumps({**status, "conditions": [(c["type"], c["status"]) for c in status["conditions"]]},
                         sort_keys=True)
        if key == self._sent:
            return
        prev = json.loads(self._sent) if self._sent else None
        if prev:
            # Keep a condition's transition time unless its status changed.
            old = dict((t, s) for t, s in prev["conditions"])
            for c in status["conditions"]:
                if old.get(c["type"]) == c["status"]:
                    c["lastTransitionTime"] = self._cond_times.get(c["type"], cond_t)
        self._cond_times = {c["type"]: c["lastTransitionTime"] for c in status["conditions"]}
        try:
            self.agent.kube.merge_patch(pod_path(self.ns, self.name) + "/status",
                                        {"metadata": {"uid": self.uid}, "status": status})
            self._sent = key
        except KubeError as e:
            if e.status == 404:
                self.object_deleted()
            else:
                log.warning("status update for %s/%s failed: %s", self.ns, self.name, e)

    # -- volumes and env ----------------------------------------------------------------------
    def _get(self, kind: str, name: str, optional: bool) -> dict[str, Any] | None:
        obj = self.agent.kube.get_or_none(f"/api/v1/namespaces/{self.ns}/{kind}/{name}")
        if obj is None and not optional:
            raise NotYet(f"{kind[:-1]} {self.ns}/{name} not found")
        return obj

    @staticmethod
    def _data(obj: dict[str, Any] | None, secret: bool) -> dict[str, bytes]:
        if obj is None:
            return {}
        if secret:
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        out = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        out |= {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
        return out

    def _field(self, path: str) -> str:
        md, spec = self.pod["metadata"], self.pod["spec"]
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return (md.get(m.group(1)) or {}).get(m.group(2), "")
        if path in ("metadata.labels", "metadata.annotations"):
            d = md.get(path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(d.items()))
        simple = {
            "metadata.name": md["name"], "metadata.namespace": md["namespace"], "metadata.uid": md["uid"],
            "spec.nodeName": spec.get("nodeName", ""), "spec.serviceAccountName": spec.get("serviceAccountName", ""),
            "status.podIP": self.ip or "", "status.podIPs": self.ip or "",
            "status.hostIP": "127.0.0.1", "status.hostIPs": "127.0.0.1",
        }
        if path not in simple:
            raise PodError(f"downward API field {path!r} is not supported by the test node agent")
        return simple[path]

    def _resource(self, spec: dict[str, Any], ref: dict[str, Any]) -> str:
        cname = ref.get("containerName") or spec["name"]
        c = next((x.spec for x in self.inits + self.apps if x.name == cname), spec)
        kind, _, res = ref["resource"].partition(".")
        val = ((c.get("resources") or {}).get(kind) or {}).get(res)
        if val is None:
            val = {"cpu": "2", "memory": str(self.agent.memory_bytes), "ephemeral-storage": "100Gi"}.get(res, "0")
        return _quantity(val, ref.get("divisor", "1"), res)

    def _env(self, spec: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {"PATH": DEFAULT_PATH, "HOSTNAME": getattr(self, "hostname", self.name), "HOME": "/root"}
        if self.pod["spec"].get("enableServiceLinks", True):
            env |= self.agent.service_env(self.ns)
        else:
            env |= self.agent.service_env(self.ns, only_kubernetes=True)
        for ef in spec.get("envFrom") or []:
            prefix = ef.get("prefix", "")
            if "configMapRef" in ef:
                r = ef["configMapRef"]
                data = self._data(self._get("configmaps", r["name"], r.get("optional", False)), False)
            else:
                r = ef["secretRef"]
                data = self._data(self._get("secrets", r["name"], r.get("optional", False)), True)
            env |= {prefix + k: v.decode(errors="replace") for k, v in data.items()}
        for e in spec.get("env") or []:
            if "valueFrom" not in e:
                env[e["name"]] = _expand(e.get("value", ""), env)
                continue
            vf = e["valueFrom"]
            if "secretKeyRef" in vf or "configMapKeyRef" in vf:
                secret = "secretKeyRef" in vf
                r = vf["secretKeyRef" if secret else "configMapKeyRef"]
                obj = self._get("secrets" if secret else "configmaps", r["name"], r.get("optional", False))
                data = self._data(obj, secret)
                if r["key"] in data:
                    env[e["name"]] = data[r["key"]].decode(errors="replace")
                elif not r.get("optional", False):
                    raise NotYet(f"key {r['key']!r} not found in {'secret' if secret else 'configmap'} "
                                 f"{self.ns}/{r['name']}")
            elif "fieldRef" in vf:
                env[e["name"]] = self._field(vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                env[e["name"]] = self._resource(spec, vf["resourceFieldRef"])
        return env

    @staticmethod
    def _project(data: dict[str, bytes], items: list[dict[str, Any]] | None, mode: int | None,
                 optional: bool, what: str) -> Payload:
        """A Secret's or ConfigMap's keys as files, as kubelet's MakePayload picks them."""
        default = mode if mode is not None else 0o644
        if not items:
            return {k: (v, default) for k, v in data.items()}
        out: Payload = {}
        for it in items:
            if it["key"] not in data:
                if optional:
                    continue
                raise NotYet(f"key {it['key']!r} not found in {what}")
            out[it["path"]] = (data[it["key"]], it["mode"] if it.get("mode") is not None else default)
        return out

    def _object_payload(self, kind: str, name: str, src: dict[str, Any], mode: int | None) -> Payload:
        # A missing optional object projects nothing (so a deleted one empties the volume); a
        # missing required one raises NotYet, which on a refresh leaves the volume as it was.
        optional = bool(src.get("optional", False))
        obj = self._get(kind, name, optional)
        return self._project(self._data(obj, kind == "secrets"), src.get("items"), mode, optional,
                             f"{kind[:-1]} {self.ns}/{name}")

    def _downward(self, items: list[dict[str, Any]], mode: int | None) -> Payload:
        default = mode if mode is not None else 0o644
        out: Payload = {}
        for it in items:
            if "fieldRef" in it:
                value = self._field(it["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in it:
                value = self._resource(self.apps[0].spec, it["resourceFieldRef"])
            else:
                continue
            out[it["path"]] = (value.encode(), it["mode"] if it.get("mode") is not None else default)
        return out

    def _token(self, src: dict[str, Any]) -> bytes:
        """A bound token, renewed at 80% of its lifetime as kubelet's token manager does (a new
        token on every refresh would rewrite the volume every time)."""
        expiration = int(src.get("expirationSeconds", 3600))
        key = (src.get("audience") or "", expiration)
        cached = self._tokens.get(key)
        if cached and time.monotonic() < cached[1]:
            return cached[0]
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        spec: dict[str, Any] = {
            "expirationSeconds": expiration,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": self.name, "uid": self.uid},
        }
        if src.get("audience"):
            spec["audiences"] = [src["audience"]]
        try:
            tr = self.agent.kube.request(
                "POST", f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        except KubeError as e:
            raise NotYet(f"token for serviceaccount {self.ns}/{sa}: {e}") from e
        token = tr["status"]["token"].encode()
        self._tokens[key] = (token, time.monotonic() + 0.8 * expiration)
        return token

    def _projected(self, p: dict[str, Any]) -> Payload:
        mode = p.get("defaultMode")
        out: Payload = {}
        for src in p.get("sources") or []:
            if "secret" in src:
                out |= self._object_payload("secrets", src["secret"]["name"], src["secret"], mode)
            elif "configMap" in src:
                out |= self._object_payload("configmaps", src["configMap"]["name"], src["configMap"], mode)
            elif "downwardAPI" in src:
                out |= self._downward(src["downwardAPI"].get("items") or [], mode)
            elif "serviceAccountToken" in src:
                s = src["serviceAccountToken"]
                out[s["path"]] = (self._token(s), mode if mode is not None else 0o600)
        return out

    def _volume_payload(self, v: dict[str, Any]) -> Payload | None:
        """The files of an atomic-writer volume (secret, configMap, downwardAPI, projected); None
        for the other types."""
        if "secret" in v:
            s = v["secret"]
            return self._object_payload("secrets", s["secretName"], s, s.get("defaultMode"))
        if "configMap" in v:
            s = v["configMap"]
            return self._object_payload("configmaps", s["name"], s, s.get("defaultMode"))
        if "downwardAPI" in v:
            return self._downward(v["downwardAPI"].get("items") or [], v["downwardAPI"].get("defaultMode"))
        if "projected" in v:
            return self._projected(v["projected"])
        return None

    def _materialize_volumes(self) -> dict[str, Path]:
        out: dict[str, Path] = {}
        vroot = self.dir / "volumes"
        for v in self.pod["spec"].get("volumes") or []:
            d = vroot / v["name"]
            payload = self._volume_payload(v)
            if payload is not None:
                # No container has started yet, so no bind mount holds d: a leftover can go.
                shutil.rmtree(d, ignore_errors=True)
                d.mkdir(parents=True)
                atomic_write(d, payload)
                self._written[v["name"]] = payload
            elif "emptyDir" in v:
                d.mkdir(parents=True, exist_ok=True)
                d.chmod(0o777)  # as kubelet makes it: writable whatever runAsUser the pod has
            elif "persistentVolumeClaim" in v:
                out[v["name"]] = self._pvc_path(v["persistentVolumeClaim"]["claimName"])
                continue
            elif "hostPath" in v:
                hp = Path(v["hostPath"]["path"])
                if v["hostPath"].get("type") == "DirectoryOrCreate":
                    hp.mkdir(parents=True, exist_ok=True)
                out[v["name"]] = hp
                continue
            else:
                raise PodError(f"volume {v['name']!r}: this volume type is not supported by the test node agent")
            out[v["name"]] = d
        return out

    def _refresh_volumes(self) -> None:
        """Brings the atomic-writer volumes up to date with their sources, as kubelet's sync loop does.
        A refresh that fails leaves a volume as it was: the pod keeps running on the old content."""
        t = time.monotonic()
        if t < self._next_volume_refresh:
            return
        self._next_volume_refresh = t + VOLUME_REFRESH_SECONDS
        for v in self.pod["spec"].get("volumes") or []:
            name = v["name"]
            if name not in self._written:
                continue
            try:
                payload = self._volume_payload(v)
                if payload is None or payload == self._written[name]:
                    continue
                atomic_write(self.volumes[name], payload)
                self._written[name] = payload
            except NotYet as e:
                log.debug("volume %s of pod %s/%s left as it is: %s", name, self.ns, self.name, e)
            except Exception as e:  # noqa: BLE001 - an API hiccup must not fail a running pod
                log.warning("could not refresh volume %s of pod %s/%s: %s", name, self.ns, self.name, e)

    def _pvc_path(self, claim: str) -> Path:
        pvc = self._get("persistentvolumeclaims", claim, False)
        pv_name = (pvc or {}).get("spec", {}).get("volumeName")
        if not pv_name or (pvc or {}).get("status", {}).get("phase") != "Bound":
            raise NotYet(f"persistentvolumeclaim {self.ns}/{claim} is not bound yet")
        pv = self.agent.kube.get(f"/api/v1/persistentvolumes/{pv_name}")
        spec = pv["spec"]
        path = (spec.get("hostPath") or spec.get("local") or {}).get("path")
        if not path:
            raise PodError(f"persistentvolume {pv_name} has neither hostPath nor local path")
        Path(path).mkdir(parents=True, exist_ok=True)
        return Path(path)


def _expand(s: str, env: dict[str, str]) -> str:
    """$(VAR) expansion as kubelet does it; $$(VAR) escapes; unknown references stay as written."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            return f"$({m.group(1)})"
        return env.get(m.group(2), m.group(0))

    return re.sub(r"\$\$\(([^)]*)\)|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, s)


_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
           "m": 10**-3, "": 1}


def _parse_q(q: str) -> float:
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    if not m:
        raise PodError(f"cannot parse quantity {q!r}")
    return float(m.group(1)) * _SUFFIX.get(m.group(2), 1)


def _quantity(val: str, divisor: str, res: str) -> str:
    import math

    return str(max(1, math.ceil(_parse_q(val) / _parse_q(divisor))))
