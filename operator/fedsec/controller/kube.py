"""A thin, idempotent layer over the Kubernetes API: create-or-adopt, get, patch, delete.

``ensure`` creates an object and, when it exists already (409), returns the existing one: that is
how a restarted operator converges on what it made before instead of duplicating it. Nothing here
decides anything; :mod:`fedsec.controller.reconcile` does.
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from fedsec.api.meta import GROUP, VERSION

log = logging.getLogger("fedsec.operator")
MERGE = "application/merge-patch+json"


def api_client() -> client.ApiClient:
    """In a pod, its ServiceAccount; elsewhere, the kubeconfig (``$KUBECONFIG`` or ~/.kube/config)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.dyn = DynamicClient(api)
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self._resources: dict[tuple[str, str], Any] = {}

    def _res(self, api_version: str, kind: str) -> Any:
        key = (api_version, kind)
        if key not in self._resources:
            self._resources[key] = self.dyn.resources.get(api_version=api_version, kind=kind)
        return self._resources[key]

    def get(self, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            return self._res(api_version, kind).get(name=name, namespace=namespace).to_dict()  # type: ignore[no-any-return]
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def ensure(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``manifest`` unless it exists; returns (the object, whether this call created it)."""
        m = manifest["metadata"]
        res = self._res(manifest["apiVersion"], manifest["kind"])
        try:
            return res.create(body=manifest, namespace=m["namespace"]).to_dict(), True
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = self.get(manifest["apiVersion"], manifest["kind"], m["name"], m["namespace"])
        if existing is None:  # deleted between the conflict and the read: the next pass creates it
            raise RuntimeError(f"{manifest['kind']} {m['namespace']}/{m['name']} vanished while being created")
        # A job deleted and applied again under its name (a GitOps re-sync) meets its predecessor's
        # children on their way out: adopting one would leave the new job without it once it is gone.
        what = f"{manifest['kind']} {m['namespace']}/{m['name']}"
        if existing["metadata"].get("deletionTimestamp"):
            raise RuntimeError(f"{what} of an earlier object of that name is still being deleted; retrying")
        mine, theirs = _controller_uid(manifest), _controller_uid(existing)
        if mine and theirs and mine != theirs:
            raise RuntimeError(f"{what} belongs to another owner (uid {theirs}), not this one ({mine}); "
                               "if that owner was deleted, garbage collection removes it shortly")
        return existing, False

    def patch(self, api_version: str, kind: str, name: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        res = self._res(api_version, kind)
        return res.patch(body=body, name=name, namespace=namespace, content_type=MERGE).to_dict()  # type: ignore[no-any-return]

    def delete(self, api_version: str, kind: str, name: str, namespace: str) -> bool:
        try:
            self._res(api_version, kind).delete(name=name, namespace=namespace,
                                                body={"propagationPolicy": "Background"})
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def list(self, api_version: str, kind: str, *, namespace: str | None = None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        res = self._res(api_version, kind)
        out = res.get(namespace=namespace, label_selector=label_selector)
        return [i.to_dict() for i in out.items]

    # -- fedsec resources --------------------------------------------------------------------

    def list_clients(self) -> list[dict[str, Any]]:
        out = self.custom.list_cluster_custom_object(GROUP, VERSION, "federatedclients")
        return list(out.get("items", []))

    def patch_status(self, plural: str, name: str, namespace: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, plural, name, {"status": status}, _content_type=MERGE)

    def event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about ``involved`` (best effort: an Event is never worth a failed reconcile)."""
        meta = involved["metadata"]
        body = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=involved.get("apiVersion"), kind=involved.get("kind"), name=meta["name"],
                namespace=meta["namespace"], uid=meta.get("uid"), resource_version=meta.get("resourceVersion")),
            type=type_, reason=reason[:128], message=message[:1024],
            source=client.V1EventSource(component="fedsec-operator"),
            reporting_component="fedsec.io/operator", reporting_instance="fedsec-operator",
            first_timestamp=_now(), last_timestamp=_now(), count=1,
        )
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as exc:
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc.reason)


def _now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc)


def _controller_uid(obj: dict[str, Any]) -> str | None:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return next((r.get("uid") for r in refs if r.get("controller")), None)
