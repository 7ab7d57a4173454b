"""Pod networking for the node agent: one Linux bridge per test cluster, one
network namespace per pod with a veth into the bridge and an address of its
own, and the Service range routed to the host as local addresses so that the
agent's proxy can listen on every ClusterIP.

Pods get no default route: only the pod range (on the bridge) and the Service
range (via the bridge address) are reachable, so nothing a test pod sends can
leave the machine.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

IP = shutil.which("ip") or "/usr/sbin/ip"


class NetError(RuntimeError):
    pass


def ip(*args: str, check: bool = True, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [IP, *(["-n", netns] if netns else []), *args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise NetError(f"`{' '.join(argv)}` failed: {r.stderr.strip()}")
    return r


class Network:
    def __init__(self, slot: int, bridge: str, bridge_ip: str, pod_cidr: str, service_cidr: str) -> None:
        self.slot = slot
        self.bridge = bridge
        self.bridge_ip = bridge_ip
        self.pod_net = ipaddress.ip_network(pod_cidr)
        self.service_cidr = service_cidr
        self._free = [str(h) for h in self.pod_net.hosts() if str(h) != bridge_ip]
        self._lock = threading.Lock()

    def setup(self) -> None:
        if not Path(f"/sys/class/net/{self.bridge}").exists():
            ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "replace", f"{self.bridge_ip}/{self.pod_net.prefixlen}", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        # Every address of the Service range is local to the host: the agent's proxy binds
        # ClusterIP:port directly (kube-proxy's old userspace mode, without iptables).
        ip("route", "replace", "local", self.service_cidr, "dev", "lo", "table", "local")

    def teardown(self) -> None:
        ip("route", "del", "local", self.service_cidr, "dev", "lo", "table", "local", check=False)
        ip("link", "del", self.bridge, check=False)

    def allocate(self) -> str:
        with self._lock:
            if not self._free:
                raise NetError(f"no free pod address left in {self.pod_net}")
            return self._free.pop(0)

    def release(self, addr: str) -> None:
        with self._lock:
            if addr not in self._free:
                self._free.append(addr)

    def netns_name(self, uid: str) -> str:
        return f"fs{self.slot}-{uid[:13]}"

    def create_sandbox(self, uid: str, addr: str, hostname: str, resolv: str, fqdn: str | None) -> str:
        ns = self.netns_name(uid)
        host_if = f"fv{self.slot}{uid[:8]}"[:15]
        peer_if = f"fp{self.slot}{uid[:8]}"[:15]
        self.delete_sandbox(uid)
        ip("netns", "add", ns)
        ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        ip("link", "set", peer_if, "netns", ns)
        ip("link", "set", host_if, "master", self.bridge)
        ip("link", "set", host_if, "up")
        ip("link", "set", peer_if, "name", "eth0", netns=ns)
        ip("addr", "add", f"{addr}/{self.pod_net.prefixlen}", "dev", "eth0", netns=ns)
        ip("link", "set", "eth0", "up", netns=ns)
        ip("link", "set", "lo", "up", netns=ns)
        ip("route", "add", self.service_cidr, "via", self.bridge_ip, netns=ns)
        # `ip netns exec` bind-mounts /etc/netns/<ns>/* over /etc/*: the pod's own DNS and hosts.
        etc = Path("/etc/netns") / ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(resolv)
        names = f"{fqdn} {hostname}" if fqdn else hostname
        (etc / "hosts").write_text(
            f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{addr}\t{names}\n"
        )
        (etc / "hostname").write_text(hostname + "\n")
        return ns

    def delete_sandbox(self, uid: str) -> None:
        delete_netns(self.netns_name(uid))


def netns_pids(ns: str) -> list[int]:
    r = ip("netns", "pids", ns, check=False)
    return [int(p) for p in r.stdout.split()] if r.returncode == 0 else []


def delete_netns(ns: str) -> None:
    """Kills every process still inside the pod's network namespace, then removes it."""
    if not Path(f"/run/netns/{ns}").exists():
        shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        return
    for pid in netns_pids(ns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    ip("netns", "del", ns, check=False)
    shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


def leftover_netns(slot: int) -> list[str]:
    r = ip("netns", "list", check=False)
    prefix = f"fs{slot}-"
    return [line.split()[0] for line in r.stdout.splitlines() if line.startswith(prefix)]
