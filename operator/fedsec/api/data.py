"""Where a site's training data or the aggregator's holdout comes from."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from fedsec.api.meta import Int, PositiveInt, Seed, Spec, cel, kubernetes

BUILTIN_DATASETS = ("breast-cancer", "iris", "wine", "digits")


class Partition(Spec):
    """Which shard of a builtin dataset a demo site holds (real sites hold their own files)."""

    model_config = ConfigDict(json_schema_extra=kubernetes(
        cel("self.shard < self.shards", "shard must be less than shards (shards are numbered from 0)"),
    ))

    scheme: Literal["iid", "dirichlet"] = Field("iid", description="iid, or dirichlet (label skew)")
    alpha: float = Field(0.5, gt=0.0, description="Dirichlet concentration: small is more non-iid")
    shards: PositiveInt = Field(description="number of shards the rows are split into")
    shard: Int = Field(ge=0, description="this site's shard, numbered from 0")
    seed: Seed = Field(0, description="seed of the split, in [0, 2^32)")

    @model_validator(mode="after")
    def _shard_in_range(self) -> Partition:
        if self.shard >= self.shards:
            raise ValueError(f"shard {self.shard} is out of range: shards are numbered 0..{self.shards - 1}")
        return self


class BuiltinData(Spec):
    """A scikit-learn dataset shipped with the package, for demos. Rows in the holdout are never
    in any site's partition, given the same ``holdoutFraction`` and ``seed`` on job and sites."""

    name: Literal["breast-cancer", "iris", "wine", "digits"] = Field(description="the scikit-learn dataset")
    holdout_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="fraction of the rows held out for the aggregator's evaluation"
    )
    seed: Seed = Field(0, description="seed of the holdout split, in [0, 2^32)")
    partition: Partition | None = None


class FileData(Spec):
    """A CSV or Parquet file at the site; the job's ``task.target`` names the label column."""

    model_config = ConfigDict(json_schema_extra=kubernetes(
        cel("!has(self.claimName) || (!self.path.startsWith('/') && !self.path.split('/').exists(p, p == '..'))",
            "path must be relative to the claim's volume, without '..'"),
    ))

    path: str = Field(min_length=1, max_length=4096, description="path of the file (relative to claimName's volume when that is given)")
    format: Literal["csv", "parquet"] | None = Field(None, description="default: from the file suffix")
    claim_name: str | None = Field(
        None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="under the operator: a PersistentVolumeClaim in the site's namespace that holds the file; "
        "it is mounted read-only into the site's client pods and `path` is relative to it "
        "(`fedsec run` reads `path` on the local machine and ignores this)",
    )

    @model_validator(mode="after")
    def _relative_in_claim(self) -> FileData:
        if self.claim_name is not None:
            parts = self.path.split("/")
            if self.path.startswith("/") or ".." in parts:
                raise ValueError(f"path {self.path!r} must be relative to the claim's volume, without '..'")
        return self


class DataSource(Spec):
    """Where the data come from: exactly one of builtin or file."""

    model_config = ConfigDict(json_schema_extra=kubernetes(
        cel("has(self.builtin) != has(self.file)", "give exactly one of 'builtin' or 'file'"),
    ))

    builtin: BuiltinData | None = None
    file: FileData | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DataSource:
        given = [k for k in ("builtin", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of 'builtin' or 'file' (got {given or 'neither'})")
        return self


class Holdout(DataSource):
    """The aggregator-side evaluation set: a builtin dataset's holdout rows or a file."""


