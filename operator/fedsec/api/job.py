"""FederatedJob: what to train, over which sites, under which guarantees (fedsec.io/v1alpha1)."""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fedsec.api.data import Holdout
from fedsec.api.meta import API_VERSION, Fraction, LabelSelector, ObjectMeta, PositiveInt, Spec

_FACTORY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


class ModelSpec(Spec):
    """A builtin architecture, or a factory ``module:function`` importable in the runtime image."""

    builtin: Literal["logistic-regression", "mlp"] | None = None
    factory: str | None = None
    input_dim: PositiveInt = Field(description="number of input features")
    num_classes: int = Field(2, ge=2, le=10_000)
    hidden: list[PositiveInt] = Field(default_factory=lambda: [64], max_length=16)
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    seed: int = 0

    @field_validator("factory")
    @classmethod
    def _factory(cls, v: str | None) -> str | None:
        if v is not None and not _FACTORY.match(v):
            raise ValueError(f"factory {v!r} must look like 'package.module:function'")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> ModelSpec:
        if (self.builtin is None) == (self.factory is None):
            raise ValueError("give exactly one of 'builtin' (logistic-regression, mlp) or 'factory'")
        return self

    @property
    def kind(self) -> str:
        return self.builtin or "factory"


class TaskSpec(Spec):
    """Local training at each site."""

    target: str = Field("target", min_length=1, description="label column for file data")
    features: list[str] | None = Field(None, description="feature columns (default: all but target)")
    local_epochs: int = Field(1, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=1_000_000)
    optimizer: Literal["sgd", "adam"] = "sgd"
    learning_rate: float = Field(0.05, gt=0.0, le=10.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    validation_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    standardize: bool = Field(True, description="federated feature standardisation before round 1")
    feature_ranges: list[list[float]] | None = Field(
        None,
        description="public [low, high] per feature (domain knowledge, not the sites' data): inputs are scaled "
        "to [-1, 1] with them; the way to scale features under differential privacy",
    )

    @field_validator("feature_ranges")
    @classmethod
    def _ranges(cls, v: list[list[float]] | None) -> list[list[float]] | None:
        for i, pair in enumerate(v or []):
            lo, hi = (pair + [math.nan, math.nan])[:2] if len(pair) == 2 else (math.nan, math.nan)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"featureRanges[{i}] = [{lo}, {hi}]: give finite bounds with low < high")
        return v


class ClientsSpec(Spec):
    selector: LabelSelector = Field(default_factory=LabelSelector)


class QuorumSpec(Spec):
    """How many sites a round needs. Required = max(minClients, ceil(minFraction × admitted sites))."""

    min_clients: PositiveInt | None = None
    min_fraction: Fraction | None = None
    round_timeout_seconds: float = Field(60.0, gt=0.0, le=86_400.0)
    join_timeout_seconds: float = Field(300.0, gt=0.0, le=86_400.0)
    max_retries: int = Field(3, ge=0, le=100)

    @model_validator(mode="after")
    def _some_bound(self) -> QuorumSpec:
        if self.min_clients is None and self.min_fraction is None:
            raise ValueError("give minClients, minFraction or both")
        return self

    def required(self, admitted: int) -> int:
        """The one place the quorum count is computed."""
        by_count = self.min_clients or 0
        by_fraction = math.ceil(self.min_fraction * admitted - 1e-9) if self.min_fraction else 0
        return max(by_count, by_fraction, 1)


class EvaluationSpec(Spec):
    holdout: Holdout | None = None
    main_metric: Literal["auc", "accuracy", "loss"] = "auc"


class SecureAggregationSpec(Spec):
    """How updates are protected on their way to the aggregate (docs/secure-aggregation.md)."""

    mode: Literal["secagg", "he-ckks", "none"] = "secagg"
    threshold: int | float | None = Field(
        None,
        description="least survivors to unmask: a fraction in (0.5, 1] of a round's participants "
        "(write 1.0 for all), or a whole count; default 2/3",
    )
    clip_range: float = Field(1.0, gt=0.0, description="largest |coordinate| of an update, before masking")
    ring_bits: Literal[32, 64] = Field(32, description="masking ring Z_2^ringBits")
    quantization_bits: int | None = Field(
        None, ge=1, le=40, description="fractional bits (default: the most the ring allows; at most 40, and ringBits - 2)"
    )
    neighbours: int | None = Field(None, ge=2, description="SecAgg+ graph degree, even (default: automatic)")
    poly_modulus_degree: int = Field(8192, description="CKKS ring dimension")
    global_scale_bits: int = Field(40, ge=20, le=60)

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: int | float | None) -> int | float | None:
        if isinstance(v, bool):
            raise ValueError("threshold must be a number")
        if isinstance(v, float) and not 0.5 < v <= 1.0:
            raise ValueError(
                f"threshold {v}: a fraction must be above 0.5 and at most 1.0 (a strict majority of a "
                "round's participants); for a count write a whole number"
            )
        if isinstance(v, int) and v < 2:
            raise ValueError(f"threshold {v}: a count must be at least 2 (for every participant write 1.0)")
        return v

    @field_validator("neighbours")
    @classmethod
    def _even(cls, v: int | None) -> int | None:
        if v is not None and v % 2:
            raise ValueError(f"neighbours {v} must be even (a SecAgg+ Harary graph)")
        return v

    @field_validator("poly_modulus_degree")
    @classmethod
    def _degree(cls, v: int) -> int:
        if v not in (4096, 8192, 16384, 32768):
            raise ValueError("polyModulusDegree must be one of 4096, 8192, 16384, 32768")
        return v


class PrivacySpec(Spec):
    mechanism: Literal["none", "dp-sgd", "distributed-gaussian"] = "none"
    target_epsilon: float | None = Field(None, gt=0.0, le=100.0)
    delta: float = Field(1e-5, gt=0.0, lt=1.0)
    clipping_norm: float = Field(1.0, gt=0.0)
    accountant: Literal["rdp", "prv"] = "rdp"

    @model_validator(mode="after")
    def _epsilon_needed(self) -> PrivacySpec:
        if self.mechanism != "none" and self.target_epsilon is None:
            raise ValueError(f"mechanism {self.mechanism!r} needs targetEpsilon")
        return self


class DriftGuardSpec(Spec):
    metric: Literal["auc", "accuracy", "loss"] = "auc"
    max_drop: float = Field(0.05, gt=0.0)
    action: Literal["rollback", "alert"] = "rollback"


class DefenseSpec(Spec):
    norm_bound: float | None = Field(None, gt=0.0, description="reject updates whose L2 norm exceeds this")
    rule: Literal["fedavg", "trimmed-mean", "median", "krum"] = "fedavg"
    drift_guard: DriftGuardSpec | None = None
    reputation: bool = False


class RotationSpec(Spec):
    every_rounds: int | None = Field(None, ge=1)
    grace_rounds: int = Field(1, ge=0)


class KeysSpec(Spec):
    source: Literal["file", "secret", "pkcs11"] = "file"
    rotation: RotationSpec = Field(default_factory=RotationSpec)


class CheckpointSpec(Spec):
    keep: int = Field(0, ge=0, description="committed rounds to keep (0: all)")


class RollbackSpec(Spec):
    to_round: int = Field(ge=0)


class FederatedJobSpec(Spec):
    model: ModelSpec
    task: TaskSpec = Field(default_factory=TaskSpec)
    rounds: int = Field(ge=1, le=100_000)
    clients: ClientsSpec = Field(default_factory=ClientsSpec)
    quorum: QuorumSpec
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    secure_aggregation: SecureAggregationSpec = Field(default_factory=SecureAggregationSpec)
    privacy: PrivacySpec = Field(default_factory=PrivacySpec)
    defense: DefenseSpec = Field(default_factory=DefenseSpec)
    keys: KeysSpec = Field(default_factory=KeysSpec)
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec)
    rollback: RollbackSpec | None = None
    max_message_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, le=1 << 31, description="largest envelope the aggregator accepts"
    )


class FederatedJob(Spec):
    api_version: Literal["fedsec.io/v1alpha1"] = Field(API_VERSION)
    kind: Literal["FederatedJob"] = "FederatedJob"
    metadata: ObjectMeta
    spec: FederatedJobSpec

    @property
    def ref(self) -> str:
        return f"FederatedJob/{self.metadata.name}"
