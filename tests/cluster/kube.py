"""A small JSON client for the Kubernetes API, used by the node agent.

The agent handles objects as plain dicts (as they are on the wire) so it never
depends on a generated client's models for fields it must pass through
unchanged (pod specs, status patches). Each call opens its own connection, so
threads need no locking; watches keep theirs open.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.parse
from typing import Any, Iterator


class KubeError(Exception):
    def __init__(self, status: int, body: str, what: str) -> None:
        self.status = status
        self.body = body
        try:
            msg = json.loads(body).get("message", body)
        except (ValueError, AttributeError):
            msg = body
        super().__init__(f"{what}: HTTP {status}: {msg}")


class Kube:
    def __init__(self, host: str, port: int, ca: str, cert: str, key: str) -> None:
        self.host, self.port = host, port
        self.ctx = ssl.create_default_context(cafile=ca)
        self.ctx.load_cert_chain(cert, key)

    def _conn(self, timeout: float) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> dict[str, Any]:
        url = path + ("?" + urllib.parse.urlencode(query) if query else "")
        conn = self._conn(timeout)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Accept": "application/json"}
            if data is not None:
                headers["Content-Type"] = content_type
            conn.request(method, url, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read().decode(errors="replace")
            if resp.status >= 300:
                raise KubeError(resp.status, raw, f"{method} {path}")
            return json.loads(raw) if raw else {}
        finally:
            conn.close()

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        return self.request("GET", path, query=query or None)

    def get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            return self.get(path)
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 60,
              **query: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        q = dict(query, watch="true", resourceVersion=resource_version,
                 timeoutSeconds=str(timeout_seconds), allowWatchBookmarks="true")
        conn = self._conn(timeout_seconds + 30)
        try:
            conn.request("GET", path + "?" + urllib.parse.urlencode(q), headers={"Accept": "application/json"})
            resp = conn.getresponse()
            if resp.status >= 300:
                raise KubeError(resp.status, resp.read().decode(errors="replace"), f"WATCH {path}")
            while True:
                line = resp.readline()
                if not line:
                    return
                ev = json.loads(line)
                if ev["type"] == "ERROR":
                    obj = ev["object"]
                    raise KubeError(obj.get("code", 500), json.dumps(obj), f"WATCH {path}")
                yield ev["type"], ev["object"]
        finally:
            conn.close()


def pod_path(ns: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{ns}/pods" + (f"/{name}" if name else "")
