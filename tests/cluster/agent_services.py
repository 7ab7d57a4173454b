"""Services for pods: a DNS server for the cluster domain and a TCP proxy per
ClusterIP:port, both fed from the Services and EndpointSlices the agent watches.

It stands in for CoreDNS and kube-proxy, for TCP only. DNS answers A records for
  <svc>.<ns>.svc.cluster.local            (the ClusterIP, or ready endpoint IPs if headless)
  <hostname>.<svc>.<ns>.svc.cluster.local (endpoints with a hostname, as StatefulSets use)
  <a-b-c-d>.<ns>.pod.cluster.local
and NXDOMAIN for everything else (there is no upstream: the machine has no network).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import struct
import threading
from typing import Any, Callable

log = logging.getLogger("node-agent.services")
DOMAIN = "cluster.local"


class ServiceTable:
    """Services and EndpointSlices by namespace/name, shared by DNS and the proxy."""

    def __init__(self, apiserver: tuple[str, int]) -> None:
        self.apiserver = apiserver
        self.lock = threading.Lock()
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.slices: dict[tuple[str, str], dict[str, Any]] = {}  # (ns, slice name) -> slice
        self.changed: Callable[[], None] = lambda: None
        self._rr = itertools.count()

    def on_service(self, typ: str, obj: dict[str, Any]) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        with self.lock:
            if typ == "DELETED":
                self.services.pop(key, None)
            else:
                self.services[key] = obj
        self.changed()

    def on_slice(self, typ: str, obj: dict[str, Any]) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        with self.lock:
            if typ == "DELETED":
                self.slices.pop(key, None)
            else:
                self.slices[key] = obj

    def _ready_endpoints(self, ns: str, svc: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        out = []
        for (sns, _), sl in self.slices.items():
            if sns != ns or sl["metadata"].get("labels", {}).get("kubernetes.io/service-name") != svc:
                continue
            for ep in sl.get("endpoints") or []:
                if (ep.get("conditions") or {}).get("ready", True):
                    out.append((sl, ep))
        return out

    def resolve(self, name: str) -> list[str] | None:
        """A records for a name, [] for a name that exists without an address, None for NXDOMAIN."""
        name = name.lower().rstrip(".")
        suffix = "." + DOMAIN
        if not name.endswith(suffix):
            return None
        parts = name[: -len(suffix)].split(".")
        with self.lock:
            if len(parts) == 3 and parts[2] == "pod":
                return [parts[0].replace("-", ".")] if parts[0].count("-") == 3 else None
            if len(parts) == 3 and parts[2] == "svc":
                svc = self.services.get((parts[1], parts[0]))
                if svc is None:
                    return None
                cip = svc["spec"].get("clusterIP")
                if cip and cip != "None":
                    return [cip]
                return sorted({a for _, ep in self._ready_endpoints(parts[1], parts[0]) for a in ep["addresses"]})
            if len(parts) == 4 and parts[3] == "svc":
                for _, ep in self._ready_endpoints(parts[2], parts[1]):
                    if ep.get("hostname") == parts[0]:
                        return list(ep["addresses"])
                return None
        return None

    def listeners(self) -> set[tuple[str, int]]:
        with self.lock:
            out = set()
            for svc in self.services.values():
                cip = svc["spec"].get("clusterIP")
                if not cip or cip == "None":
                    continue
                for p in svc["spec"].get("ports") or []:
                    if p.get("protocol", "TCP") == "TCP":
                        out.add((cip, int(p["port"])))
            return out

    def backend(self, cip: str, port: int) -> tuple[str, int] | None:
        with self.lock:
            for (ns, name), svc in self.services.items():
                if svc["spec"].get("clusterIP") != cip:
                    continue
                if (ns, name) == ("default", "kubernetes"):
                    return self.apiserver
                sport = next((p for p in svc["spec"].get("ports") or [] if int(p["port"]) == port), None)
                if sport is None:
                    return None
                choices = []
                for sl, ep in self._ready_endpoints(ns, name):
                    for sp in sl.get("ports") or []:
                        if sp.get("name", "") == sport.get("name", "") and sp.get("protocol", "TCP") == "TCP":
                            choices += [(a, int(sp["port"])) for a in ep["addresses"]]
                if not choices:
                    return None
                return sorted(choices)[next(self._rr) % len(choices)]
        return None


class DNSServer(threading.Thread):
    def __init__(self, table: ServiceTable, addr: str) -> None:
        super().__init__(name="dns", daemon=True)
        self.table = table
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, 53))

    def run(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                reply = self.answer(data)
            except Exception:  # noqa: BLE001 - a malformed query must not stop DNS for every pod
                log.exception("bad DNS query from %s", peer)
                continue
            if reply:
                self.sock.sendto(reply, peer)

    def answer(self, q: bytes) -> bytes | None:
        if len(q) < 12:
            return None
        qid, flags, qdcount = struct.unpack("!HHH", q[:6])
        if qdcount != 1 or flags & 0x8000:
            return None
        labels, i = [], 12
        while q[i] != 0:
            n = q[i]
            labels.append(q[i + 1 : i + 1 + n].decode("ascii", "replace"))
            i += 1 + n
        qtype, _qclass = struct.unpack("!HH", q[i + 1 : i + 5])
        question = q[12 : i + 5]
        addrs = self.table.resolve(".".join(labels))
        rcode = 3 if addrs is None else 0
        answers = b""
        count = 0
        if addrs and qtype in (1, 255):  # A or ANY
            for a in addrs:
                answers += struct.pack("!HHHIH", 0xC00C, 1, 1, 5, 4) + socket.inet_aton(a)
                count += 1
        rflags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode
        return struct.pack("!HHHHHH", qid, rflags, 1, count, 0, 0) + question + answers


class Proxy(threading.Thread):
    """One asyncio loop, one listening socket per ClusterIP:port, a backend chosen per connection."""

    def __init__(self, table: ServiceTable) -> None:
        super().__init__(name="proxy", daemon=True)
        self.table = table
        self.loop = asyncio.new_event_loop()
        self.servers: dict[tuple[str, int], asyncio.base_events.Server] = {}
        table.changed = self.kick

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def kick(self) -> None:
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._sync()))

    async def _sync(self) -> None:
        want = self.table.listeners()
        for key in list(self.servers):
            if key not in want:
                self.servers.pop(key).close()
        for cip, port in want - set(self.servers):
            try:
                self.servers[(cip, port)] = await asyncio.start_server(
                    lambda r, w, k=(cip, port): self._conn(k, r, w), host=cip, port=port, reuse_address=True
                )
            except OSError as e:
                log.error("cannot listen on Service address %s:%d: %s", cip, port, e)

    async def _conn(self, key: tuple[str, int], r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        backend = self.table.backend(*key)
        if backend is None:
            # kube-proxy rejects connections to a Service without ready endpoints; closing is our reject.
            w.close()
            return
        try:
            br, bw = await asyncio.wait_for(asyncio.open_connection(*backend), 10)
        except (OSError, asyncio.TimeoutError):
            w.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                try:
                    if dst.can_write_eof():
                        dst.write_eof()
                except (ConnectionError, OSError):
                    pass

        await asyncio.gather(pipe(r, bw), pipe(br, w))
        for x in (w, bw):
            x.close()

    def stop(self) -> None:
        def _close() -> None:
            for s in self.servers.values():
                s.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(_close)
