"""Starts and stops the test control plane: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and the node agent, on loopback.

    python tests/cluster/clusterctl.py up      # build if needed, start, wait ready, print kubeconfig path last
    python tests/cluster/clusterctl.py down    # stop every process it started, remove pod sandboxes
    python tests/cluster/clusterctl.py status  # exit 0 and print the kubeconfig path if it is up
    python tests/cluster/clusterctl.py state-dir

State (certificates, kubeconfigs, etcd data, logs, pod sandboxes) lives in one
directory per work tree: $FEDSEC_CLUSTER_STATE, else /tmp/fedsec-cluster-<uid>-<hash of
the repo path>. Two work trees on one machine therefore get different state
directories, different ports and different pod/service address ranges.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import pki  # noqa: E402

# Components in start order; `down` stops them in reverse.
COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "node-agent"]
NODE_NAME = "fedsec-node"
# A cold build took ~6 min on 2 cores here; an hour means something hangs (a module download).
BUILD_TIMEOUT = 3600


def state_dir() -> Path:
    env = os.environ.get("FEDSEC_CLUSTER_STATE")
    if env:
        return Path(env).resolve()
    digest = hashlib.sha256(str(REPO).encode()).hexdigest()[:8]
    return Path(f"/tmp/fedsec-cluster-{os.getuid()}-{digest}")


@dataclass
class Cluster:
    state: str
    bindir: str
    slot: int
    etcd_port: int
    etcd_peer_port: int
    apiserver_port: int
    kcm_port: int
    scheduler_port: int
    agent_port: int
    pod_cidr: str
    service_cidr: str
    bridge: str
    bridge_ip: str
    kubernetes_service_ip: str
    dns_ip: str
    node_name: str
    pids: dict[str, int]

    @property
    def kubeconfig(self) -> Path:
        return Path(self.state) / "admin.kubeconfig"

    @classmethod
    def load(cls, state: Path) -> "Cluster | None":
        path = state / "cluster.json"
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    def save(self) -> None:
        path = Path(self.state) / "cluster.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)


class StartError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def pick_slot(state: Path) -> int:
    """A /24 pair of address ranges and a bridge name no other cluster on this machine uses."""
    start = int(hashlib.sha256(str(state).encode()).hexdigest(), 16) % 250
    for i in range(250):
        slot = (start + i) % 250 + 1
        if not Path(f"/sys/class/net/fsbr{slot}").exists():
            return slot
    raise StartError("no free network slot: 250 bridges fsbr1..fsbr250 exist; run `make cluster-down` in other trees")


def pid_is_ours(pid: int, state: Path) -> bool:
    """A pid from the state file is ours only if it still names our state dir (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return str(state).encode() in cmdline


def wait_for(what: str, check: Callable[[], bool], timeout: float, proc: subprocess.Popen | None = None,
             logfile: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StartError(f"{what}: the process exited with code {proc.returncode}" + _tail(logfile))
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not ready yet is any error here
            pass
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise StartError(f"timed out after {timeout:.0f}s waiting for {what}" + _tail(logfile))


def _tail(logfile: Path | None, lines: int = 30) -> str:
    if logfile is None or not logfile.exists():
        return ""
    text = logfile.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {logfile} ---\n" + "\n".join(text)


def https_ok(url: str, ctx: ssl.SSLContext) -> bool:
    with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
        return r.status == 200


def admin_ssl(state: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(state / "pki" / "ca.crt"))
    ctx.load_cert_chain(str(state / "pki" / "admin.crt"), str(state / "pki" / "admin.key"))
    return ctx


def build() -> Path:
    log("building or finding the cached binaries (tests/cluster/build.sh)")
    try:
        out = subprocess.run(["bash", str(HERE / "build.sh")], stdout=subprocess.PIPE, text=True,
                             timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise StartError(f"timed out after {BUILD_TIMEOUT}s waiting for tests/cluster/build.sh; its logs are "
                         "in the cache dir's logs/ (bash tests/cluster/build.sh --print-bindir shows where)") from e
    if out.returncode != 0:
        raise StartError("tests/cluster/build.sh failed; its output is above")
    return Path(out.stdout.strip().splitlines()[-1])


def is_up(state: Path) -> Cluster | None:
    c = Cluster.load(state)
    if c is None:
        return None
    if not all(pid_is_ours(pid, state) for pid in c.pids.values()):
        return None
    try:
        if not https_ok(f"https://127.0.0.1:{c.apiserver_port}/readyz", admin_ssl(state)):
            return None
    except Exception:  # noqa: BLE001
        return None
    return c


def _side(state: Path, what: str) -> Path:
    """Files beside the state dir (it is wiped on every start): the lock, users, auto-stop mark."""
    return state.parent / f"{state.name}.{what}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def up(user: int | None = None) -> Path:
    """Starts the cluster, or reuses the running one.

    With `user` (a test session's pid) the cluster is shared: a cluster that a test session
    started stops when its last user releases it; one started by hand (`make cluster-up`,
    no user) is never stopped by a test session.
    """
    state = state_dir()
    auto_stop = _side(state, "auto-stop")
    running = is_up(state)
    if running is not None:
        log(f"already running (state {state})")
        if user is None:
            auto_stop.unlink(missing_ok=True)
        else:
            _register(state, user)
        return running.kubeconfig
    kubeconfig = _start(state)
    if user is None:
        auto_stop.unlink(missing_ok=True)
    else:
        auto_stop.touch()
        _register(state, user)
    return kubeconfig


def _register(state: Path, user: int) -> None:
    users = _side(state, "users")
    users.mkdir(exist_ok=True)
    (users / str(user)).touch()


def release(user: int) -> None:
    state = state_dir()
    users = _side(state, "users")
    (users / str(user)).unlink(missing_ok=True)
    live = []
    for f in users.glob("*") if users.exists() else []:
        if f.name.isdigit() and _pid_alive(int(f.name)):
            live.append(int(f.name))
        else:
            f.unlink(missing_ok=True)
    if live:
        log(f"left running for the test sessions still using it (pids {live})")
    elif _side(state, "auto-stop").exists():
        down()
    else:
        log("left running: it was started by `make cluster-up`; stop it with `make cluster-down`")


def _check_tools() -> None:
    missing = [t for t in ("ip", "unshare", "setpriv", "mount", "sh") if shutil.which(t) is None]
    if missing:
        raise StartError(f"missing {', '.join(missing)}, which the node agent needs; "
                         "install them with: apt-get install -y iproute2 util-linux mount")


def _start(state: Path) -> Path:
    _check_tools()
    if (state / "cluster.json").exists():
        log("found a stale cluster state; cleaning it up first")
        down()
    bindir = build()
    t0 = time.monotonic()
    # Keep the previous run's logs for a post-mortem, wipe everything else.
    if state.exists():
        old_logs = state / "logs"
        if old_logs.exists():
            prev = state.parent / f"{state.name}-previous-logs"
            shutil.rmtree(prev, ignore_errors=True)
            old_logs.rename(prev)
        shutil.rmtree(state)
    # Pod volumes under it hold Secrets: keep the state dir to its owner.
    state.mkdir(parents=True, mode=0o700)
    (state / "logs").mkdir()
    slot = pick_slot(state)
    ports = free_ports(6)
    c = Cluster(
        state=str(state), bindir=str(bindir), slot=slot,
        etcd_port=ports[0], etcd_peer_port=ports[1], apiserver_port=ports[2],
        kcm_port=ports[3], scheduler_port=ports[4], agent_port=ports[5],
        pod_cidr=f"10.250.{slot}.0/24", service_cidr=f"10.251.{slot}.0/24",
        bridge=f"fsbr{slot}", bridge_ip=f"10.250.{slot}.1",
        kubernetes_service_ip=f"10.251.{slot}.1", dns_ip=f"10.250.{slot}.1",
        node_name=NODE_NAME, pids={},
    )
    c.save()
    try:
        _make_pki(c)
        _start_all(c)
    except BaseException:
        log("start-up failed; stopping what was started")
        down()
        raise
    log(f"control plane ready in {time.monotonic() - t0:.1f}s (state {state}, logs {state / 'logs'})")
    return c.kubeconfig


def _make_pki(c: Cluster) -> None:
    state = Path(c.state)
    p = state / "pki"
    ca = pki.CA(p)
    pki.service_account_keys(p)
    ca.issue(
        "apiserver", "kube-apiserver", server=True,
        dns=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
             "kubernetes.default.svc.cluster.local"],
        ips=["127.0.0.1", c.kubernetes_service_ip, c.bridge_ip],
    )
    # A separate CA for the aggregation layer's front proxy, as kubeadm does: a client
    # certificate from it makes the API server trust X-Remote-User headers.
    pki.CA(p, "front-proxy-ca").issue("front-proxy-client", "front-proxy-client", client=True)
    ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters", client=True)
    ca.issue("node-agent-serving", c.node_name, server=True, dns=["localhost", c.node_name], ips=["127.0.0.1"])
    server = f"https://127.0.0.1:{c.apiserver_port}"
    for name, cn, org in [
        ("admin", "fedsec-test-admin", "system:masters"),
        ("controller-manager", "system:kube-controller-manager", None),
        ("scheduler", "system:kube-scheduler", None),
    ]:
        crt, key = ca.issue(name, cn, org, client=True)
        pki.kubeconfig(state / f"{name}.kubeconfig", server, p / "ca.crt", crt, key, cn)


def _spawn(c: Cluster, name: str, argv: list[str]) -> subprocess.Popen:
    state = Path(c.state)
    logf = open(state / "logs" / f"{name}.log", "ab")
    # A session of its own so the processes outlive `make cluster-up` and a Ctrl-C in
    # the shell that ran it; `down` stops them by pid.
    proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=state)
    logf.close()
    c.pids[name] = proc.pid
    c.save()
    return proc


def _start_all(c: Cluster) -> None:
    state, b, p = Path(c.state), Path(c.bindir), Path(c.state) / "pki"
    logs = state / "logs"

    t = time.monotonic()
    etcd_url = f"http://127.0.0.1:{c.etcd_port}"
    peer_url = f"http://127.0.0.1:{c.etcd_peer_port}"
    proc = _spawn(c, "etcd", [
        str(b / "etcd"), "--name=fedsec", f"--data-dir={state / 'etcd'}",
        f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=fedsec={peer_url}", "--initial-cluster-state=new",
        # Test data: losing it on a power cut is fine, and fsync dominates latency on shared disks.
        "--unsafe-no-fsync", "--log-level=warn",
    ])

    def etcd_ready() -> bool:
        with urllib.request.urlopen(f"{etcd_url}/readyz", timeout=2) as r:
            return r.status == 200

    wait_for("etcd /readyz", etcd_ready, 30, proc, logs / "etcd.log")
    log(f"etcd ready ({time.monotonic() - t:.1f}s)")

    t = time.monotonic()
    proc = _spawn(c, "kube-apiserver", [
        str(b / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1", f"--secure-port={c.apiserver_port}", "--advertise-address=127.0.0.1",
        f"--cert-dir={state / 'apiserver-certs'}",
        f"--tls-cert-file={p / 'apiserver.crt'}", f"--tls-private-key-file={p / 'apiserver.key'}",
        f"--client-ca-file={p / 'ca.crt'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={p / 'sa.pub'}", f"--service-account-signing-key-file={p / 'sa.key'}",
        "--authorization-mode=Node,RBAC",
        f"--service-cluster-ip-range={c.service_cidr}",
        "--allow-privileged=true",
        # `kubectl logs` goes apiserver -> node agent, authenticated both ways by our CA.
        f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={p / 'ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP",
        f"--requestheader-client-ca-file={p / 'front-proxy-ca.crt'}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={p / 'front-proxy-client.crt'}",
        f"--proxy-client-key-file={p / 'front-proxy-client.key'}",
        # The `kubernetes` Service's endpoint would be 127.0.0.1, which pods cannot reach;
        # the node agent forwards that Service to the API server itself.
        "--endpoint-reconciler-type=none",
        "--profiling=false", "--v=1",
    ])
    ctx = admin_ssl(state)
    wait_for("kube-apiserver /readyz", lambda: https_ok(f"https://127.0.0.1:{c.apiserver_port}/readyz", ctx),
             120, proc, logs / "kube-apiserver.log")
    log(f"kube-apiserver ready ({time.monotonic() - t:.1f}s)")

    t = time.monotonic()
    kcm = _spawn(c, "kube-controller-manager", [
        str(b / "kube-controller-manager"),
        f"--kubeconfig={state / 'controller-manager.kubeconfig'}",
        f"--authentication-kubeconfig={state / 'controller-manager.kubeconfig'}",
        f"--authorization-kubeconfig={state / 'controller-manager.kubeconfig'}",
        "--bind-address=127.0.0.1", f"--secure-port={c.kcm_port}", f"--cert-dir={state / 'kcm-certs'}",
        "--leader-elect=false",
        f"--service-account-private-key-file={p / 'sa.key'}", f"--root-ca-file={p / 'ca.crt'}",
        "--use-service-account-credentials=true",
        f"--cluster-signing-cert-file={p / 'ca.crt'}", f"--cluster-signing-key-file={p / 'ca.key'}",
        # All default controllers: Job, garbage collector, namespace, ServiceAccount,
        # EndpointSlice, PV binder, ReplicaSet/Deployment, ... (`*`).
        "--controllers=*",
        # New nodes carry a not-ready taint until the node lifecycle controller's next pass:
        # 1s instead of 5s takes seconds off every start.
        "--node-monitor-period=1s",
        "--profiling=false", "--v=1",
    ])
    sched = _spawn(c, "kube-scheduler", [
        str(b / "kube-scheduler"),
        f"--kubeconfig={state / 'scheduler.kubeconfig'}",
        f"--authentication-kubeconfig={state / 'scheduler.kubeconfig'}",
        f"--authorization-kubeconfig={state / 'scheduler.kubeconfig'}",
        "--bind-address=127.0.0.1", f"--secure-port={c.scheduler_port}", f"--cert-dir={state / 'scheduler-certs'}",
        "--leader-elect=false", "--profiling=false", "--v=1",
    ])
    insecure = ssl.create_default_context()
    # Their serving certs are self-signed by themselves; readiness is all we ask of them.
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    wait_for("kube-controller-manager /healthz",
             lambda: https_ok(f"https://127.0.0.1:{c.kcm_port}/healthz", insecure),
             60, kcm, logs / "kube-controller-manager.log")
    wait_for("kube-scheduler /readyz",
             lambda: https_ok(f"https://127.0.0.1:{c.scheduler_port}/readyz", insecure),
             60, sched, logs / "kube-scheduler.log")
    log(f"kube-controller-manager and kube-scheduler ready ({time.monotonic() - t:.1f}s)")

    t = time.monotonic()
    agent = _spawn(c, "node-agent", [sys.executable, str(HERE / "node_agent.py"), "--state", str(state)])
    ready_file = state / "node-agent.ready"
    wait_for("the node agent to register its Node, Ready", ready_file.exists, 60, agent, logs / "node-agent.log")
    log(f"node agent ready ({time.monotonic() - t:.1f}s)")

    t = time.monotonic()
    kubectl = [str(b / "kubectl"), f"--kubeconfig={c.kubeconfig}"]

    def default_sa() -> bool:
        r = subprocess.run(kubectl + ["get", "serviceaccount", "default", "-n", "default"],
                           capture_output=True, timeout=10)
        return r.returncode == 0

    wait_for("the ServiceAccount controller to create default/default", default_sa, 60, kcm,
             logs / "kube-controller-manager.log")
    log(f"ServiceAccount controller working ({time.monotonic() - t:.1f}s)")


def _stop_pid(name: str, pid: int, state: Path, grace: float) -> None:
    if not pid_is_ours(pid, state):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not pid_is_ours(pid, state) or _is_zombie(pid):
            return
        time.sleep(0.05)
    log(f"{name} (pid {pid}) did not stop within {grace:.0f}s of SIGTERM; killing it")
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def down() -> None:
    state = state_dir()
    c = Cluster.load(state)
    if c is None:
        log(f"nothing to stop (no {state / 'cluster.json'})")
        return
    _side(state, "auto-stop").unlink(missing_ok=True)
    shutil.rmtree(_side(state, "users"), ignore_errors=True)
    # The agent first: it stops the pods' processes and removes their sandboxes.
    for name in reversed(COMPONENTS):
        pid = c.pids.get(name)
        if pid:
            _stop_pid(name, pid, state, 45 if name == "node-agent" else 15)
    # Whatever the agent could not clean (it was killed, or crashed) is cleaned here.
    sys.path.insert(0, str(HERE))
    from node_agent import cleanup_leftovers  # noqa: PLC0415

    cleanup_leftovers(state, c.bridge, c.service_cidr)
    (state / "cluster.json").unlink(missing_ok=True)
    (state / "node-agent.ready").unlink(missing_ok=True)
    shutil.rmtree(state / "etcd", ignore_errors=True)
    log(f"stopped; logs kept in {state / 'logs'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up", "down", "status", "state-dir", "release"])
    ap.add_argument("--user", type=int, help="pid of a test session sharing the cluster (up, release)")
    args = ap.parse_args()
    if args.command == "state-dir":
        print(state_dir())
        return 0
    if os.geteuid() != 0:
        print("the test cluster's node agent needs root (network and mount namespaces); run as root",
              file=sys.stderr)
        return 2
    state = state_dir()
    state.parent.mkdir(parents=True, exist_ok=True)
    # One up/down/release at a time per work tree: two `make test` runs in one tree share a
    # cluster instead of starting two on the same state dir.
    lock = open(_side(state, "lock"), "a")
    if args.command != "status":
        fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        if args.command == "up":
            print(up(args.user))
        elif args.command == "release":
            if args.user is None:
                ap.error("release needs --user PID")
            release(args.user)
        elif args.command == "down":
            down()
        elif args.command == "status":
            c = is_up(state_dir())
            if c is None:
                print("down", file=sys.stderr)
                return 1
            print(c.kubeconfig)
    except StartError as e:
        print(f"cluster {args.command} failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
