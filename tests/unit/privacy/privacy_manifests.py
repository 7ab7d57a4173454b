from __future__ import annotations

from typing import Any

from fedsec.api.client import FederatedClient
from fedsec.api.job import FederatedJob


def job(privacy: dict[str, Any] | None = None, sa: dict[str, Any] | None = None, rounds: int = 10,
        quorum: dict[str, Any] | None = None, **task: Any) -> FederatedJob:
    return FederatedJob.model_validate({
        "metadata": {"name": "bc", "labels": {"team": "onco"}},
        "spec": {
            "model": {"builtin": "logistic-regression", "inputDim": 30},
            "task": {"standardize": False, "batchSize": 16, "localEpochs": 1, **task},
            "rounds": rounds,
            "clients": {"selector": {"matchLabels": {"s": "x"}}},
            "quorum": quorum or {"minFraction": 0.5},
            "secureAggregation": sa or {"mode": "secagg"},
            "privacy": privacy if privacy is not None else {"mechanism": "dp-sgd", "targetEpsilon": 1.2},
        },
    })


def site(name: str, budget: float | None = None, policy: dict[str, Any] | None = None, shard: int = 0) -> FederatedClient:
    return FederatedClient.model_validate({
        "metadata": {"name": name, "labels": {"s": "x"}},
        "spec": {
            "data": {"builtin": {"name": "breast-cancer", "partition": {"scheme": "iid", "shards": 4, "shard": shard}}},
            "privacy": {"budget": budget} if budget is not None else {},
            "policy": policy or {},
        },
    })
