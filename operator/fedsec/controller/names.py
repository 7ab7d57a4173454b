"""Names and labels of everything the operator creates. Pure.

Every child's name is a function of its job (and site), never of a counter or a random suffix: a
restarted operator finds what it created before instead of creating it again, and deleting a job
can name its children in other namespaces without listing them.
"""

from __future__ import annotations

import hashlib
import re

GROUP = "fedsec.io"
LABEL_JOB = "fedsec.io/job"
LABEL_JOB_UID = "fedsec.io/job-uid"
LABEL_SITE = "fedsec.io/site"
LABEL_ROLE = "fedsec.io/role"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
MANAGED_BY = "fedsec-operator"
OPERATOR_POD_LABEL = ("app.kubernetes.io/name", "fedsec-operator")
ROLE_AGGREGATOR, ROLE_CLIENT = "aggregator", "client"

GRPC_PORT = 7443
METRICS_PORT = 9090

_TRIM = re.compile(r"^-+|-+$")


def _short(text: str, n: int) -> str:
    return _TRIM.sub("", text[:n])


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:8]


class JobNames:
    """Children of one FederatedJob in its own namespace (owned by it: deletion cascades)."""

    def __init__(self, name: str, uid: str) -> None:
        self.job, self.uid = name, uid
        # 40 + suffixes stays under 63 (Service names are DNS labels; pods append more).
        base = name if len(name) <= 40 else f"{_short(name, 31)}-{_digest(name)}"
        self.base = base

    @property
    def ca_secret(self) -> str:
        return f"{self.base}-ca"

    @property
    def aggregator_secret(self) -> str:
        return f"{self.base}-aggregator-pki"

    @property
    def operator_secret(self) -> str:
        return f"{self.base}-operator-pki"

    @property
    def aggregator(self) -> str:  # Deployment, Service, ConfigMap, NetworkPolicy
        return f"{self.base}-aggregator"

    @property
    def checkpoints(self) -> str:
        return f"{self.base}-checkpoints"

    @property
    def service_account(self) -> str:
        return f"{self.base}-runtime"

    def site(self, site: str) -> str:
        """The client Job, its ConfigMap and its Secret in the site's namespace: unique per
        (job uid, site) even when two jobs of one name live in different namespaces."""
        return f"{_short(self.job, 20)}-{_short(site, 25)}-{_digest(self.uid, site)}"

    def site_secret(self, site: str) -> str:
        return f"{self.site(site)}-pki"

    def labels(self, role: str | None = None, site: str | None = None) -> dict[str, str]:
        out = {LABEL_MANAGED: MANAGED_BY, LABEL_JOB: _short(self.job, 63), LABEL_JOB_UID: self.uid}
        if role:
            out[LABEL_ROLE] = role
        if site:
            out[LABEL_SITE] = site
        return out


def ledger_claim(site: str) -> str:
    """The site's privacy-ledger volume, owned by its FederatedClient: it outlives every job."""
    if len(site) <= 48:
        return f"fedsec-ledger-{site}"
    return f"fedsec-ledger-{_short(site, 39)}-{_digest(site)}"  # two long names never share a ledger


def job_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"
