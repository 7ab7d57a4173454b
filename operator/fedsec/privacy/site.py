"""The site's side of a private job, round by round: calibrate once, check the budget before each
round, write the spend to the ledger before the update leaves, and never pay twice for one update.

Under DP-SGD the update a site computes from a given global model is itself differentially private
(the noise went into every step), so sending that same update again costs nothing more: when a round
is asked again from the same model (a retry, a restarted aggregator or run) the site re-sends the
update it kept instead of training again. Under distributed noise that would not be safe (two sums
over different survivors would isolate a share of the noise), so every release is a new one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fedsec.api.client import FederatedClient
from fedsec.api.job import FederatedJob
from fedsec.privacy.accountant import epsilon
from fedsec.privacy.calibration import Schedule, distributed_schedule, dp_sgd_schedule
from fedsec.privacy.ledger import ADMITTED, EXHAUSTED, FINISHED, JobRef, Release, SiteLedger, ledger_path

log = logging.getLogger("fedsec.privacy")


class BudgetExhausted(RuntimeError):
    """The next round would take the site past its budget or its per-job cap; it stops training."""


@dataclass(frozen=True)
class Prepared:
    """What to send for a round: ``reused`` is the bytes of an update already paid for, or None."""

    reused: bytes | None
    epsilon_after: float


class SitePrivacyGuard:
    def __init__(self, job: FederatedJob, job_uid: str, site: FederatedClient, ledger_dir, n_train: int) -> None:
        p, t = job.spec.privacy, job.spec.task
        if p.mechanism == "none" or p.target_epsilon is None:
            raise ValueError("SitePrivacyGuard is for jobs with a privacy mechanism")
        self.mechanism = p.mechanism
        self.clipping_norm = p.clipping_norm
        self.name = site.metadata.name
        self.ref = JobRef(job_uid, job.metadata.name, job.metadata.namespace)
        self.ledger = SiteLedger(ledger_path(ledger_dir, self.name), self.name)
        if p.mechanism == "dp-sgd":
            self.schedule: Schedule = dp_sgd_schedule(
                target_epsilon=p.target_epsilon, delta=p.delta, accountant=p.accountant, rounds=job.spec.rounds,
                n_train=n_train, batch_size=t.batch_size, local_epochs=t.local_epochs,
            )
        else:
            self.schedule = distributed_schedule(
                target_epsilon=p.target_epsilon, delta=p.delta, accountant=p.accountant, rounds=job.spec.rounds,
            )
        self.budget = site.spec.privacy.budget
        self.cap = site.spec.policy.max_epsilon_per_job
        s = self.schedule
        self.info = {
            "mechanism": p.mechanism, "accountant": p.accountant, "delta": p.delta, "target_epsilon": p.target_epsilon,
            "clipping_norm": p.clipping_norm, "noise_multiplier": s.noise_multiplier, "sample_rate": s.sample_rate,
            "steps_per_round": s.steps_per_round, "planned_rounds": s.planned_rounds,
        }
        self.ledger.set_budget(self.budget)
        entry = self.ledger.entry(self.ref.uid)
        if entry is None or entry.get("status") is None:
            self.ledger.set_status(self.ref, ADMITTED, **self.info)
        log.info(
            "%s: %s, noise multiplier %.4g, sampling rate %.4g, %d steps per round; epsilon after %d rounds: %.4f (target %g)",
            self.name, p.mechanism, s.noise_multiplier, s.sample_rate, s.steps_per_round, s.planned_rounds,
            s.planned_epsilon(), p.target_epsilon,
        )

    def _history(self) -> list[tuple[float, float, int]]:
        e = self.ledger.entry(self.ref.uid) or {}
        return [(r["noise_multiplier"], r["sample_rate"], int(r["steps"])) for r in e.get("releases", [])]

    def spent(self) -> float:
        """This job's epsilon at this site, recomputed from the ledger."""
        return epsilon(self._history(), self.schedule.delta, self.schedule.accountant)

    def prepare(self, round_number: int, model_sha256: str) -> Prepared:
        """Before training for a round: the kept update if this round was already paid for from this
        model; otherwise check that one more round fits, or raise BudgetExhausted (and record why)."""
        if self.mechanism == "dp-sgd":
            r = self.ledger.find_release(self.ref.uid, round_number, model_sha256)
            if r is not None:
                payload = self.ledger.load_update(self.ref.uid, r.get("update_sha256", ""))
                if payload is not None:
                    return Prepared(payload, self.spent())
        after = epsilon(self._history() + [self.schedule.step()], self.schedule.delta, self.schedule.accountant)
        others = self.ledger.spent(excluding=self.ref.uid)
        reason = None
        if self.cap is not None and after > self.cap + 1e-12:
            reason = f"round {round_number} would take this job's epsilon to {after:.4f}, above the site's cap {self.cap:g}"
        elif self.budget is not None and others + after > self.budget + 1e-12:
            reason = (
                f"round {round_number} would take the site's spend to {others + after:.4f}, above its budget "
                f"{self.budget:g} ({others:.4f} by other jobs, {self.spent():.4f} by this one)"
            )
        if reason is not None:
            self.ledger.set_status(self.ref, EXHAUSTED, reason)
            raise BudgetExhausted(reason)
        return Prepared(None, after)

    def record(self, round_number: int, round_id: int, model_sha256: str, payload: bytes) -> float:
        """Write the release (and keep the update) before it leaves; returns the job's epsilon here."""
        update_sha = self.ledger.save_update(self.ref.uid, payload) if self.mechanism == "dp-sgd" else ""
        sigma, q, steps = self.schedule.step()
        return self.ledger.record_release(
            self.ref, Release(round_number, round_id, model_sha256, sigma, q, steps, update_sha), **self.info
        )

    def finished(self, reason: str) -> None:
        e = self.ledger.entry(self.ref.uid) or {}
        if e.get("status") != EXHAUSTED:
            self.ledger.set_status(self.ref, FINISHED, reason)
