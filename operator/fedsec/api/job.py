"""FederatedJob: what to train, over which sites, under which guarantees (fedsec.io/v1alpha1)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from fedsec.api.data import Holdout
from fedsec.api.meta import (
    API_VERSION, FactoryRef, Fraction, Int, LabelSelector, ObjectMeta, PositiveInt, Seed, Spec, bounded_int, cel,
    kubernetes,
)

# The largest count a secure-aggregation threshold may name (far above any federation fedsec runs).
MAX_THRESHOLD_COUNT = 1_000_000

_PARAMS_WITH_BUILTIN = "params are keyword arguments of a factory; a builtin model takes none: remove params"


def _scalar(value: Any) -> Any:
    if not isinstance(value, str | int | float | bool):
        raise ValueError(
            f"{type(value).__name__} {value!r:.60}: a factory parameter must be a string, a number or a boolean, "
            "never a list or a mapping"
        )
    return value


# One factory parameter; the API server refuses a list or a mapping by crd.SCALAR_VALUE.
Param = Annotated[str | int | float | bool, BeforeValidator(_scalar)]


class ModelSpec(Spec):
    """A builtin architecture, or a factory ``module:function`` importable in the runtime image."""

    model_config = ConfigDict(json_schema_extra=kubernetes(
        cel("has(self.builtin) != has(self.factory)",
            "give exactly one of 'builtin' (logistic-regression, mlp) or 'factory'"),
        # CEL cannot see params (its values are of any scalar type, which CEL cannot declare), so the
        # server's form of _params_need_a_factory is a schema `not`; it names spec.model.
        **{"not": {"required": ["builtin", "params"]}},
    ))

    builtin: Literal["logistic-regression", "mlp"] | None = Field(None, description="a builtin architecture (give this or factory)")
    factory: FactoryRef | None = Field(
        None,
        description="'package.module:function' in the runtime image returning a torch.nn.Module, called with params "
        "(give this or builtin)",
    )
    input_dim: PositiveInt = Field(description="number of input features")
    num_classes: Int = Field(2, ge=2, le=10_000, description="number of classes of the label")
    hidden: list[PositiveInt] = Field(
        default_factory=lambda: [64], max_length=16, description="hidden layer widths of mlp (default [64])"
    )
    params: dict[str, Param] | None = Field(
        None,
        description="keyword arguments for factory (factory only): each value a string, number or boolean, "
        "never a list or a mapping",
    )
    seed: Seed = Field(
        0, description="seed of the initial weights, the sites' validation splits and local training, in [0, 2^32)"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ModelSpec:
        if (self.builtin is None) == (self.factory is None):
            raise ValueError("give exactly one of 'builtin' (logistic-regression, mlp) or 'factory'")
        return self

    @model_validator(mode="after")
    def _params_need_a_factory(self) -> ModelSpec:
        if self.builtin is not None and self.params is not None:
            raise ValueError(_PARAMS_WITH_BUILTIN)
        return self

    @property
    def kind(self) -> str:
        return self.builtin or "factory"


def _low_below_high(pair: list[float]) -> list[float]:
    if not pair[0] < pair[1]:
        raise ValueError(f"[{pair[0]}, {pair[1]}]: give [low, high] with low < high")
    return pair


# A pair [low, high]: the order is checked by _low_below_high here and by this rule on the API server.
FeatureRange = Annotated[list[float], Field(
    min_length=2, max_length=2, json_schema_extra=kubernetes(cel("self[0] < self[1]", "give low < high")),
), AfterValidator(_low_below_high)]


class TaskSpec(Spec):
    """Local training at each site."""

    target: str = Field("target", min_length=1, description="label column for file data")
    features: list[str] | None = Field(None, description="feature columns (default: all but target)")
    local_epochs: Int = Field(1, ge=1, le=1000, description="passes over the site's training rows per round")
    batch_size: Int = Field(32, ge=1, le=1_000_000, description="local mini-batch size")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="local optimizer")
    learning_rate: float = Field(0.05, gt=0.0, le=10.0, description="local learning rate")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="SGD momentum (sgd only; 0 for adam)")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="L2 weight decay of the local optimizer")
    validation_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="fraction of each site's rows kept for its validation metrics"
    )
    standardize: bool = Field(True, description="federated feature standardisation before round 1")
    feature_ranges: list[FeatureRange] | None = Field(
        None,
        max_length=100_000,
        description="public [low, high] per feature (domain knowledge, not the sites' data): inputs are scaled "
        "to [-1, 1] with them; the way to scale features under differential privacy",
    )


class ClientsSpec(Spec):
    """Which FederatedClients (sites) may join."""

    selector: LabelSelector = Field(
        default_factory=LabelSelector, description="label selector over FederatedClients (empty: every site)"
    )


class QuorumSpec(Spec):
    """How many sites a round needs. Required = max(minClients, ceil(minFraction × admitted sites))."""

    model_config = ConfigDict(json_schema_extra=kubernetes(
        cel("has(self.minClients) || has(self.minFraction)", "give minClients, minFraction or both"),
    ))

    min_clients: PositiveInt | None = Field(None, description="least contributing sites per round, as a count")
    min_fraction: Fraction | None = Field(
        None, description="least contributing sites per round, as a fraction of the admitted sites"
    )
    round_timeout_seconds: float = Field(
        60.0, gt=0.0, le=86_400.0, description="deadline of each phase of a round; also the start grace for late sites"
    )
    join_timeout_seconds: float = Field(
        300.0, gt=0.0, le=86_400.0, description="how long the job waits for a quorum of sites to join before it fails"
    )
    max_retries: Int = Field(
        3, ge=0, le=100, description="retries of one round (each under a new round id) before the job fails"
    )

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
    """Evaluation of the global model at the aggregator."""

    holdout: Holdout | None = None
    main_metric: Literal["auc", "accuracy", "loss"] = Field("auc", description="the metric the job reports first")


class SecureAggregationSpec(Spec):
    """How updates are protected on their way to the aggregate (docs/secure-aggregation.md)."""

    mode: Literal["secagg", "he-ckks", "none"] = Field(
        "secagg",
        description="secagg: the aggregator learns only the sum of the updates; he-ckks: CKKS homomorphic "
        "encryption; none: plaintext, the aggregator sees each update",
    )
    threshold: int | float | None = Field(
        None,
        description="least survivors to unmask: a number up to 1 is a fraction of a round's participants, "
        "above 0.5 (1 and 1.0 both mean every participant); a number above 1 is a count, a whole number from 2 "
        f"to {MAX_THRESHOLD_COUNT}; default 2/3",
        json_schema_extra=kubernetes(
            cel(f"self <= 1.0 ? self > 0.5 : (self >= 2.0 && self <= {MAX_THRESHOLD_COUNT}.0 && self == double(int(self)))",
                "a threshold up to 1 is a fraction of a round's participants and must be above 0.5; above 1 it is a "
                f"count and must be a whole number from 2 to {MAX_THRESHOLD_COUNT}"),
        ),
    )
    clip_range: float = Field(1.0, gt=0.0, description="largest |coordinate| of an update, before masking")
    ring_bits: Literal[32, 64] = Field(32, description="masking ring Z_2^ringBits")
    quantization_bits: bounded_int(ge=1, le=40) | None = Field(
        None, description="fractional bits (default: the most the ring allows; at most 40, and ringBits - 2)"
    )
    neighbours: bounded_int(ge=2) | None = Field(
        None, description="SecAgg+ graph degree, even (default: automatic)",
        json_schema_extra=kubernetes(cel("self % 2 == 0", "neighbours must be even (a SecAgg+ Harary graph)")),
    )
    weight_bound: float | None = Field(
        None, gt=0.0, le=1e9,
        description="public bound on a site's FedAvg weight (its training rows) under secagg: weights are divided by it, "
        "and a larger one counts as the bound; the same for every site (default 65536)",
    )
    poly_modulus_degree: Literal[4096, 8192, 16384, 32768] = Field(8192, description="CKKS ring dimension")
    global_scale_bits: Int = Field(40, ge=20, le=60, description="CKKS scale 2^globalScaleBits")

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, v: Any) -> int | float | None:
        """The meaning is read from the value, never from its spelling: kubectl sends YAML's ``1.0`` to
        the API server as ``1`` (and ``2.0`` as ``2``), so a rule that told them apart could not hold
        there. Normalised here, a fraction is always a float and a count always an int."""
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(
                f"threshold {v!r} must be a number: a fraction in (0.5, 1] or a whole count from 2 "
                f"to {MAX_THRESHOLD_COUNT}"
            )
        if v <= 1:
            if v <= 0.5:
                raise ValueError(
                    f"threshold {v}: a fraction must be above 0.5 and at most 1 (a strict majority of a "
                    "round's participants; 1 means every participant); for a count write a whole number from 2"
                )
            return float(v)
        if v != int(v) or v < 2 or v > MAX_THRESHOLD_COUNT:
            raise ValueError(
                f"threshold {v}: above 1 it is a count of survivors and must be a whole number from 2 to "
                f"{MAX_THRESHOLD_COUNT} (for a fraction write a number up to 1)"
            )
        return int(v)

    @field_validator("neighbours")
    @classmethod
    def _even(cls, v: int | None) -> int | None:
        if v is not None and v % 2:
            raise ValueError(f"neighbours {v} must be even (a SecAgg+ Harary graph)")
        return v


class PrivacySpec(Spec):
    """Differential privacy (docs/privacy.md)."""

    model_config = ConfigDict(json_schema_extra=kubernetes(
        cel("!has(self.mechanism) || self.mechanism == 'none' || has(self.targetEpsilon)",
            "a privacy mechanism needs targetEpsilon"),
    ))

    mechanism: Literal["none", "dp-sgd", "distributed-gaussian"] = Field(
        "none",
        description="dp-sgd: DP-SGD at each site (record-level DP per site); distributed-gaussian: each site adds "
        "a share of Gaussian noise under secure aggregation (user-level DP of the aggregate)",
    )
    target_epsilon: float | None = Field(
        None, gt=0.0, le=100.0, description="epsilon each site spends over all planned rounds; required with a mechanism"
    )
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="the delta of (epsilon, delta)-DP")
    clipping_norm: float = Field(
        1.0, gt=0.0, description="per-sample gradient bound (dp-sgd), per-update L2 bound (distributed-gaussian)"
    )
    accountant: Literal["rdp", "prv"] = Field("rdp", description="privacy accountant (Opacus)")

    @model_validator(mode="after")
    def _epsilon_needed(self) -> PrivacySpec:
        if self.mechanism != "none" and self.target_epsilon is None:
            raise ValueError(f"mechanism {self.mechanism!r} needs targetEpsilon")
        return self


class DriftGuardSpec(Spec):
    """Watches the global model's holdout metric from round to round."""

    metric: Literal["auc", "accuracy", "loss"] = Field("auc", description="the holdout metric watched")
    max_drop: float = Field(0.05, gt=0.0, description="largest tolerated drop of the metric")
    action: Literal["rollback", "alert"] = Field(
        "rollback", description="on a larger drop: roll back to the last good round, or only alert"
    )


class DefenseSpec(Spec):
    """Defenses against poisoned updates."""

    norm_bound: float | None = Field(None, gt=0.0, description="reject updates whose L2 norm exceeds this")
    rule: Literal["fedavg", "trimmed-mean", "median", "krum"] = Field("fedavg", description="aggregation rule")
    drift_guard: DriftGuardSpec | None = None
    reputation: bool = Field(False, description="weigh sites by a reputation earned over rounds")


class RotationSpec(Spec):
    """Key rotation into numbered key epochs."""

    every_rounds: PositiveInt | None = Field(None, description="rotate every this many rounds (unset: never)")
    grace_rounds: Int = Field(1, ge=0, description="rounds the previous epoch's keys still verify after a rotation")


class KeysSpec(Spec):
    """Where the job's certificates and signing keys come from, and their rotation."""

    source: Literal["file", "secret", "pkcs11"] = Field(
        "file", description="file: local files; secret: Kubernetes Secrets; pkcs11: an HSM or KMS through PKCS#11"
    )
    rotation: RotationSpec = Field(default_factory=RotationSpec)


class CheckpointSpec(Spec):
    """Committed rounds the aggregator keeps."""

    keep: Int = Field(0, ge=0, description="committed rounds to keep (0: all)")


class RollbackSpec(Spec):
    """Make a committed round's model the current one again; versions only grow."""

    to_round: Int = Field(ge=0, description="the round whose model becomes current (at most spec.rounds)")


class FederatedJobSpec(Spec):
    """What to train, over which sites, under which guarantees."""

    # Each rule is the API server's form of the field validator of the same name below.
    model_config = ConfigDict(json_schema_extra=kubernetes(
        cel("!has(self.quorum.minClients) || !has(self.secureAggregation) || !has(self.secureAggregation.threshold) "
            "|| self.secureAggregation.threshold <= 1.0 || self.secureAggregation.threshold <= double(self.quorum.minClients)",
            "secureAggregation.threshold as a count must not exceed quorum.minClients", ".secureAggregation"),
        cel("!has(self.rollback) || self.rollback.toRound <= self.rounds",
            "rollback.toRound must not exceed rounds: only a trained round can become current", ".rollback"),
    ))

    model: ModelSpec
    task: TaskSpec = Field(default_factory=TaskSpec)
    rounds: Int = Field(ge=1, le=100_000, description="committed training rounds")
    clients: ClientsSpec = Field(default_factory=ClientsSpec)
    quorum: QuorumSpec
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    secure_aggregation: SecureAggregationSpec = Field(default_factory=SecureAggregationSpec)
    privacy: PrivacySpec = Field(default_factory=PrivacySpec)
    defense: DefenseSpec = Field(default_factory=DefenseSpec)
    keys: KeysSpec = Field(default_factory=KeysSpec)
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec)
    rollback: RollbackSpec | None = None
    max_message_bytes: Int = Field(
        64 * 1024 * 1024, ge=1024, le=1 << 31, description="largest envelope the aggregator accepts"
    )

    # quorum and rounds are declared before these fields, so they are in info.data once valid.
    @field_validator("secure_aggregation")
    @classmethod
    def _threshold_within_min_clients(cls, v: SecureAggregationSpec, info: ValidationInfo) -> SecureAggregationSpec:
        quorum = info.data.get("quorum")
        if isinstance(v.threshold, int) and quorum is not None and quorum.min_clients is not None \
                and v.threshold > quorum.min_clients:
            raise ValueError(
                f"threshold {v.threshold} as a count must not exceed quorum.minClients ({quorum.min_clients}): "
                "a round may commit with minClients sites, and fewer than the threshold cannot unmask"
            )
        return v

    @field_validator("rollback")
    @classmethod
    def _rollback_to_a_trained_round(cls, v: RollbackSpec | None, info: ValidationInfo) -> RollbackSpec | None:
        rounds = info.data.get("rounds")
        if v is not None and rounds is not None and v.to_round > rounds:
            raise ValueError(
                f"rollback.toRound {v.to_round} is above rounds ({rounds}): only a trained round "
                f"(0..{rounds}) can become current"
            )
        return v


class FederatedJob(Spec):
    api_version: Literal["fedsec.io/v1alpha1"] = Field(API_VERSION)
    kind: Literal["FederatedJob"] = "FederatedJob"
    metadata: ObjectMeta
    spec: FederatedJobSpec

    @property
    def ref(self) -> str:
        return f"FederatedJob/{self.metadata.name}"
