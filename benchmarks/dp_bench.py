"""Local training time with DP-SGD (Opacus) against without, side by side (issue 7).

For each case this times ``fedsec.training.local.train_local`` — exactly what a site runs each
round — with the job's DP settings (per-sample gradients through Opacus' GradSampleModule, clipping,
noise, Poisson sampling; ``make_private`` included, since a site calls it every round) and without
(the same model, data, optimizer, batch size and epochs, plain SGD). Repetitions alternate between
the two (DP, plain, DP, plain, ...) so that load from other processes hits both alike. The figure is
the CPU time of this process (``time.process_time``: one torch thread, as in a client, so CPU time is
the training's cost and barely moves with other load on a shared machine; wall time is in the JSON),
median over the repetitions; the ratio is DP / plain.

Cases:
- ``bc-site``: one breast-cancer site of the DP example (logistic regression, 78 rows, batch 16,
  1 epoch): the per-round cost of the example;
- ``lr-10k``: logistic regression, 10 000 rows x 30 features, batch 64, 1 epoch;
- ``mlp-10k``: MLP [64, 32], 10 000 rows x 30 features, batch 64, 1 epoch;
- ``mlp-digits``: MLP [64] on scikit-learn's digits (1 437 rows x 64, 10 classes), batch 32, 2 epochs.

    .venv/bin/python benchmarks/dp_bench.py            # all cases, 7 repetitions
    .venv/bin/python benchmarks/dp_bench.py --reps 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import numpy as np
import torch

from fedsec.training import data as tdata
from fedsec.training.local import TrainConfig, train_local
from fedsec.training.models import build_model


def _synthetic(n: int, d: int, seed: int = 0) -> tdata.Table:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=d)
    y = (X @ w + rng.normal(size=n) > 0).astype(np.int64)
    return tdata.Table(X, y, tuple(f"f{i}" for i in range(d)))


def _standardised(t: tdata.Table) -> tdata.Table:
    X = (t.X - t.X.mean(0)) / (t.X.std(0) + 1e-6)
    return tdata.Table(X.astype(np.float32), t.y, t.feature_names)


def cases() -> list[dict]:
    bc = tdata.builtin_site_data("breast-cancer", holdout_fraction=0.2, seed=42, scheme="dirichlet", shards=12, shard=3, alpha=0.5)
    bc_train, _ = tdata.train_validation_split(bc, 0.2, seed=0)
    digits = tdata.holdout_split(tdata.load_builtin("digits"), 0.2, 0)[0]
    return [
        {"name": "bc-site", "table": _standardised(bc_train), "model": ("logistic-regression", 30, 2, []), "batch": 16, "epochs": 1, "lr": 0.5},
        {"name": "lr-10k", "table": _synthetic(10_000, 30), "model": ("logistic-regression", 30, 2, []), "batch": 64, "epochs": 1, "lr": 0.1},
        {"name": "mlp-10k", "table": _synthetic(10_000, 30), "model": ("mlp", 30, 2, [64, 32]), "batch": 64, "epochs": 1, "lr": 0.1},
        {"name": "mlp-digits", "table": _standardised(digits), "model": ("mlp", 64, 10, [64]), "batch": 32, "epochs": 2, "lr": 0.1},
    ]


def time_once(case: dict, private: bool) -> float:
    kind, d, k, hidden = case["model"]
    model = build_model(kind, input_dim=d, num_classes=k, hidden=hidden, seed=0)
    dp = {"noise_multiplier": 1.0, "max_grad_norm": 1.0} if private else {}
    cfg = TrainConfig(epochs=case["epochs"], batch_size=case["batch"], learning_rate=case["lr"], seed=0, **dp)
    start, cpu = time.perf_counter(), time.process_time()
    train_local(model, case["table"], cfg)
    return time.process_time() - cpu, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    results = []
    print(f"{'case':<12} {'rows':>6} {'plain CPU ms':>13} {'DP CPU ms':>10} {'DP/plain':>9}")
    for case in cases():
        time_once(case, True), time_once(case, False)  # warm-up: imports, first-use costs
        dp_t, plain_t = [], []
        for _ in range(args.reps):
            dp_t.append(time_once(case, True))
            plain_t.append(time_once(case, False))
        dp_m, plain_m = statistics.median(t[0] for t in dp_t), statistics.median(t[0] for t in plain_t)
        row = {"case": case["name"], "rows": len(case["table"]), "plain_cpu_s": plain_m, "dp_cpu_s": dp_m,
               "ratio": dp_m / plain_m, "plain_wall_s": statistics.median(t[1] for t in plain_t),
               "dp_wall_s": statistics.median(t[1] for t in dp_t)}
        results.append(row)
        print(f"{row['case']:<12} {row['rows']:>6} {plain_m * 1e3:>13.1f} {dp_m * 1e3:>10.1f} {row['ratio']:>9.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"reps": args.reps, "torch": torch.__version__, "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
