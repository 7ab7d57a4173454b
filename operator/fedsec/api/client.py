"""FederatedClient: one site, its data and its own terms (fedsec.io/v1alpha1)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from fedsec.api.data import DataSource
from fedsec.api.meta import API_VERSION, FactoryRef, LabelSelector, ObjectMeta, Spec

# An image reference as a pod spec names it (registry/repository:tag or @sha256:digest), where `*`
# stands for any run of characters. No whitespace, no other glob characters: what a site writes
# is what is compared.
ImagePattern = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^[A-Za-z0-9*][A-Za-z0-9._/:@*+-]*$")]



class SitePolicy(Spec):
    """The site's own terms; a job runs here only where these hold."""

    min_secure_aggregation_threshold: float | None = Field(
        None,
        gt=0.0,
        description="least threshold the job's secure aggregation must use: a fraction (at most 1) of a round, "
        "or a count (above 1) of survivors",
    )
    required_modes: list[Literal["secagg", "he-ckks", "none"]] = Field(
        default_factory=list, description="secure-aggregation modes the site accepts (empty: any)"
    )
    max_epsilon_per_job: float | None = Field(None, gt=0.0, description="refuse jobs whose target epsilon exceeds this")
    require_dp: bool = Field(False, description="refuse jobs without differential privacy")
    accept_jobs: LabelSelector | None = Field(None, description="label selector over the jobs' labels (unset: any job)")
    accept_namespaces: list[str] = Field(default_factory=list, description="job namespaces the site accepts (empty: any)")
    allowed_aggregator_images: list[ImagePattern] = Field(
        default_factory=list,
        description="aggregator images the site accepts, as full references; '*' matches any run of characters "
        "(empty: any). Checked against the operator's runtime image; local runs have no image",
    )
    allowed_model_factories: list[FactoryRef] = Field(
        default_factory=list,
        description="model factories ('package.module:function', exact: no globs, a site lists code it has "
        "reviewed one function at a time) the site lets a job's spec.model.factory "
        "run with its data (empty: builtin models only; builtin models are always allowed)",
    )


class SitePrivacy(Spec):
    """The site's differential-privacy budget (docs/privacy.md)."""

    budget: float | None = Field(None, gt=0.0, description="total epsilon across all jobs on this data")


class AggregatorEndpoint(Spec):
    """The aggregator to reach when the job runs in another cluster."""

    endpoint: str = Field(min_length=1, description="host:port of the aggregator")
    ca_secret: str | None = Field(None, description="Secret with the CA certificate that verifies the aggregator")


class FederatedClientSpec(Spec):
    """One site: its data, its own terms and its privacy budget."""

    data: DataSource
    policy: SitePolicy = Field(default_factory=SitePolicy)
    privacy: SitePrivacy = Field(default_factory=SitePrivacy)
    aggregator: AggregatorEndpoint | None = None
    image: str | None = Field(None, description="container image of the site's client pods")
    resources: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="requests and limits of the site's client pods, as in a container's resources"
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="node labels the site's client pods run on")


class FederatedClient(Spec):
    api_version: Literal["fedsec.io/v1alpha1"] = Field(API_VERSION)
    kind: Literal["FederatedClient"] = "FederatedClient"
    metadata: ObjectMeta
    spec: FederatedClientSpec

    @property
    def ref(self) -> str:
        return f"FederatedClient/{self.metadata.name}"
