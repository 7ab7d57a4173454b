"""The DP example's holdout AUC over repeated runs, per configuration, in-process (issue 7).

``examples/breast-cancer-dp`` draws its DP-SGD noise and Poisson samples from the operating system,
so its holdout AUC differs from run to run; the example must reach its bar (0.96) in every run, not
on average. This script estimates the AUC *distribution* of a configuration by repeating the whole
federated training many times in one process, without the protocol (no processes, no masking):

- the same manifests (``fedsec.api.loader``), site data and holdout (``load_site_data``,
  ``load_holdout``: the Dirichlet partition and the public feature ranges), the same
  train/validation split and the same initial model as the client and the aggregator;
- the same calibration: each site's noise multiplier from ``privacy.calibration.dp_sgd_schedule``
  for its training rows, batch size, local epochs and the job's rounds;
- the same local training: ``training.local.train_local`` with the client's ``TrainConfig`` (DP-SGD
  through Opacus, noise from the OS);
- FedAvg as the aggregator does it under secure aggregation: every coordinate of a site's delta
  clipped to the job's ``secureAggregation.clipRange`` (what the secagg client does before masking;
  the masked sum is otherwise exact up to its quantization step), weighted by the site's training
  rows, averaged, and added to the global model; holdout AUC of the final model. Every site takes
  part in every round (the example's usual case: all twelve answer).

Configurations override the job's knobs: ``rounds``, ``epochs`` (localEpochs), ``batch``,
``lr`` (learningRate), ``momentum``, ``clip`` (clippingNorm), ``accountant``, ``val``
(validationFraction: the share of each site's rows set aside for validation metrics, which a DP job
never computes or sends). For each it prints min, 1st/5th percentile (interpolated), median and
mean of the final AUC over the repetitions, how many runs fell below 0.96, and the median accuracy.

    nice .venv/bin/python benchmarks/dp_example_tuning.py --reps 100           # the built-in sweep
    nice .venv/bin/python benchmarks/dp_example_tuning.py --reps 300 --config rounds=10 --json out.json
    nice .venv/bin/python benchmarks/dp_example_tuning.py --config rounds=5,batch=32,clip=0.25,lr=2

One repetition of a 10-round configuration takes about 0.3 s of CPU (one torch thread).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from fedsec.api import loader
from fedsec.privacy.calibration import Schedule, dp_sgd_schedule
from fedsec.runtime.datasets import load_holdout, load_site_data
from fedsec.training import data as tdata
from fedsec.training import models as tmodels
from fedsec.training.local import TrainConfig, evaluate, model_delta, train_local

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "breast-cancer-dp"

# The built-in sweep (docs/privacy.md, "The DP example"): the example's former defaults, then one or
# two knobs at a time on the way to its current defaults (the last). Every knob is spelled out, since
# unnamed ones come from examples/breast-cancer-dp/job.yaml.
SWEEP = [
    "rounds=10,epochs=1,batch=16,lr=0.5,clip=1.0,val=0.2",
    "rounds=10,epochs=1,batch=16,lr=0.5,clip=1.0,val=0",
    "rounds=10,epochs=1,batch=64,lr=2,clip=0.25,val=0.2",
    "rounds=10,epochs=1,batch=64,lr=0.5,clip=1.0,val=0",
    "rounds=10,epochs=1,batch=16,lr=2,clip=0.25,val=0",
    "rounds=5,epochs=1,batch=32,lr=2,clip=0.25,val=0",
    "rounds=10,epochs=1,batch=64,lr=2.5,clip=0.1,val=0",
    "rounds=10,epochs=1,batch=64,lr=5,clip=0.1,val=0",
    "rounds=10,epochs=1,batch=64,lr=2,clip=0.25,val=0",
]
KEYS = {"rounds": int, "epochs": int, "batch": int, "lr": float, "momentum": float, "clip": float, "accountant": str,
        "val": float}


def parse_config(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key not in KEYS:
            raise SystemExit(f"unknown knob {key!r}; use {', '.join(KEYS)}")
        out[key] = KEYS[key](value)
    return out


class Study:
    """The example's sites and holdout, loaded once; ``run`` trains one federation."""

    def __init__(self, example: Path = EXAMPLE) -> None:
        manifests = loader.load([example])
        self.job = manifests.jobs[0]
        spec = self.job.spec
        self.tables = [(c.metadata.name, load_site_data(self.job, c))
                       for c in sorted(manifests.clients, key=lambda c: c.metadata.name)
                       if spec.clients.selector.matches(c.metadata.labels)]
        sa = spec.secure_aggregation
        self.clip_range = sa.clip_range if sa.mode == "secagg" else np.inf
        holdout = load_holdout(self.job)
        assert holdout is not None
        self.holdout = holdout
        t, p = spec.task, spec.privacy
        self.defaults = {"rounds": spec.rounds, "epochs": t.local_epochs, "batch": t.batch_size, "lr": t.learning_rate,
                         "momentum": t.momentum, "clip": p.clipping_norm, "accountant": p.accountant,
                         "val": t.validation_fraction}

    def training_rows(self, cfg: dict) -> list[tuple[str, tdata.Table]]:
        """Each site's training rows: what is left after its validation split, as in the client."""
        return [(name, tdata.train_validation_split(table, cfg["val"], seed=self.job.spec.model.seed)[0])
                for name, table in self.tables]

    def model(self) -> torch.nn.Module:
        m = self.job.spec.model
        return tmodels.build_model(m.kind, input_dim=m.input_dim, num_classes=m.num_classes, hidden=m.hidden,
                                   factory=m.factory, params=m.params, seed=m.seed)

    def schedules(self, cfg: dict, sites: list[tuple[str, tdata.Table]]) -> dict[str, Schedule]:
        p = self.job.spec.privacy
        assert p.target_epsilon is not None
        return {name: dp_sgd_schedule(target_epsilon=p.target_epsilon, delta=p.delta, accountant=cfg["accountant"],
                                      rounds=cfg["rounds"], n_train=len(train), batch_size=cfg["batch"],
                                      local_epochs=cfg["epochs"])
                for name, train in sites}

    def run(self, cfg: dict, sites: list[tuple[str, tdata.Table]], schedules: dict[str, Schedule]) -> dict[str, float]:
        t = self.job.spec.task
        base = TrainConfig(epochs=cfg["epochs"], batch_size=cfg["batch"], optimizer=t.optimizer, learning_rate=cfg["lr"],
                           momentum=cfg["momentum"], weight_decay=t.weight_decay, seed=self.job.spec.model.seed,
                           max_grad_norm=cfg["clip"], noise_multiplier=1.0)
        global_model = self.model()
        state = tmodels.state_to_numpy(global_model)
        for _ in range(cfg["rounds"]):
            total = 0.0
            mean = {k: np.zeros_like(v, dtype=np.float64) for k, v in state.items()}
            for name, train in sites:
                local = self.model()
                tmodels.load_numpy_state(local, state)
                n = train_local(local, train, dataclasses.replace(base, noise_multiplier=schedules[name].noise_multiplier))
                delta = model_delta(tmodels.state_to_numpy(local), state)
                for k, v in delta.items():
                    mean[k] += n * np.clip(v.astype(np.float64), -self.clip_range, self.clip_range)
                total += n
            state = {k: (v + mean[k] / total).astype(np.float32) for k, v in state.items()}
        tmodels.load_numpy_state(global_model, state)
        return evaluate(global_model, self.holdout)


def summarise(aucs: list[float]) -> dict[str, float]:
    a = np.asarray(aucs)
    return {"reps": len(a), "min": float(a.min()), "p1": float(np.percentile(a, 1)), "p5": float(np.percentile(a, 5)),
            "median": float(np.median(a)), "mean": float(a.mean()), "below_0.96": int((a < 0.96).sum())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--config", action="append", help="knobs to override, e.g. rounds=5,clip=0.25,lr=2 (repeatable)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as in a client
    warnings.filterwarnings("ignore")
    study = Study()
    print("site rows (before the validation split): " + ", ".join(f"{n}={len(t)}" for n, t in study.tables)
          + f"; holdout {len(study.holdout)} rows", file=sys.stderr)
    results = []
    for text in args.config or SWEEP:
        cfg = {**study.defaults, **parse_config(text)}
        sites = study.training_rows(cfg)
        schedules = study.schedules(cfg, sites)
        started = time.monotonic()
        metrics = [study.run(cfg, sites, schedules) for _ in range(args.reps)]
        aucs = [m["auc"] for m in metrics]
        s = summarise(aucs)
        s["accuracy_median"] = float(np.median([m["accuracy"] for m in metrics]))
        z = sorted({round(sch.noise_multiplier, 2) for sch in schedules.values()})
        row = {"config": text, **cfg, **s, "z": z, "seconds": round(time.monotonic() - started, 1), "aucs": aucs}
        results.append(row)
        print(f"{text:48s} min {s['min']:.4f}  p1 {s['p1']:.4f}  p5 {s['p5']:.4f}  median {s['median']:.4f}  "
              f"mean {s['mean']:.4f}  <0.96: {s['below_0.96']}/{s['reps']}  accuracy median {s['accuracy_median']:.3f}  "
              f"z {z[0]}-{z[-1]}  ({row['seconds']}s)",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
