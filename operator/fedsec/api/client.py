"""FederatedClient: one site, its data and its own terms (fedsec.io/v1alpha1)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedsec.api.data import DataSource
from fedsec.api.meta import API_VERSION, LabelSelector, ObjectMeta, Spec


class SitePolicy(Spec):
    """The site's own terms; a job runs here only where these hold (enforced by the privacy issue)."""

    min_secure_aggregation_threshold: float | None = Field(None, gt=0.0)
    required_modes: list[Literal["secagg", "he-ckks", "none"]] = Field(default_factory=list)
    max_epsilon_per_job: float | None = Field(None, gt=0.0)
    require_dp: bool = False
    accept_jobs: LabelSelector | None = None
    accept_namespaces: list[str] = Field(default_factory=list)
    allowed_aggregator_images: list[str] = Field(default_factory=list)


class SitePrivacy(Spec):
    budget: float | None = Field(None, gt=0.0, description="total epsilon across all jobs on this data")


class AggregatorEndpoint(Spec):
    endpoint: str = Field(min_length=1)
    ca_secret: str | None = None


class FederatedClientSpec(Spec):
    data: DataSource
    policy: SitePolicy = Field(default_factory=SitePolicy)
    privacy: SitePrivacy = Field(default_factory=SitePrivacy)
    aggregator: AggregatorEndpoint | None = None
    image: str | None = None
    resources: dict[str, dict[str, str]] = Field(default_factory=dict)
    node_selector: dict[str, str] = Field(default_factory=dict)


class FederatedClient(Spec):
    api_version: Literal["fedsec.io/v1alpha1"] = Field(API_VERSION)
    kind: Literal["FederatedClient"] = "FederatedClient"
    metadata: ObjectMeta
    spec: FederatedClientSpec

    @property
    def ref(self) -> str:
        return f"FederatedClient/{self.metadata.name}"
