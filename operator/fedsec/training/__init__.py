"""Local training and evaluation: data loading and partitioning, models, the training loop.

Pure library code with plain typed arguments, used by the client process (local training,
validation) and by the aggregator (model initialisation, holdout evaluation).
"""

from fedsec.training.data import (
    BUILTIN_DATASETS,
    DataError,
    Table,
    builtin_holdout,
    builtin_site_data,
    holdout_split,
    load_builtin,
    load_table,
    partition,
    train_validation_split,
)
from fedsec.training.local import (
    TrainConfig,
    TrainingError,
    apply_delta,
    evaluate,
    feature_stats,
    model_delta,
    train_local,
)
from fedsec.training.models import (
    ModelError,
    Standardize,
    build_model,
    load_numpy_state,
    set_standardization,
    state_to_numpy,
)

__all__ = [
    "BUILTIN_DATASETS",
    "DataError",
    "ModelError",
    "Standardize",
    "Table",
    "TrainConfig",
    "TrainingError",
    "apply_delta",
    "build_model",
    "builtin_holdout",
    "builtin_site_data",
    "evaluate",
    "feature_stats",
    "holdout_split",
    "load_builtin",
    "load_numpy_state",
    "load_table",
    "model_delta",
    "partition",
    "set_standardization",
    "state_to_numpy",
    "train_local",
]
