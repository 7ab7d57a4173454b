"""What an aggregator or client process is started with: one JSON file each.

The local runner writes these into the run directory; the operator will render the same shape from
Secrets and ConfigMaps. Paths are to PEM files; private keys are only ever read from files, never
passed on a command line or in an environment variable.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fedsec.api.admitted import AdmittedPlan
from fedsec.api.client import FederatedClient
from fedsec.api.job import FederatedJob
from fedsec.api.scenario import Fault


class PkiPaths(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_cert: Path
    tls_cert: Path
    tls_key: Path
    keys_dir: Path = Field(description="the identity keys by key epoch (id-<epoch>.crt/.key, fedsec.crypto.keyring)")

    @classmethod
    def under(cls, ca_cert: Path, directory: Path) -> PkiPaths:
        return cls(
            ca_cert=ca_cert,
            tls_cert=directory / "tls.crt",
            tls_key=directory / "tls.key",
            keys_dir=directory,
        )


class AggregatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job: FederatedJob
    job_uid: str
    sites: list[str] = Field(min_length=1)
    quorum: int = Field(ge=1)
    listen: str = "127.0.0.1:0"
    metrics_listen: str | None = "127.0.0.1:0"
    state_dir: Path
    pki: PkiPaths
    faults: list[Fault] = Field(default_factory=list)
    linger_seconds: float = Field(15.0, ge=0.0, description="keep telling clients the outcome this long")
    rollback_request: str | None = Field(
        None, description="identifies the spec's rollback request (the operator: the generation that set toRound); "
        "a request is applied once")
    serve_after_finish: bool = Field(False, description="keep serving after the job ends, until SIGTERM (a Deployment's pod)")


class ClientConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    job: FederatedJob
    job_uid: str
    site: FederatedClient
    plan: AdmittedPlan = Field(description="what the site admitted: every Task is checked against it (fedsec.protocol.terms)")
    aggregator: str  # host:port
    server_name: str = "aggregator"  # the name the aggregator's certificate must carry
    pki: PkiPaths
    faults: list[Fault] = Field(default_factory=list)
    ledger_dir: Path | None = Field(None, description="where the site's privacy ledger lives (jobs with privacy)")
    give_up_seconds: float = Field(600.0, gt=0.0, description="stop when the aggregator is unreachable this long")
    state_dir: Path | None = Field(None, description="the site's own directory: its audit log and refusal counts "
                                   "(fedsec.runtime.site_record); None keeps them in the log only")
