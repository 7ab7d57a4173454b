"""The site's side of a private job, round by round: calibrate once, and for every update either
re-send one already paid for or charge the new one in the ledger before it leaves the site.

The site trusts nothing the aggregator says about privacy: its terms (the job's ``targetEpsilon``
and planned ``rounds`` as the site admitted them, its own budget and per-job cap) and its spend
come from its own manifests and ledger, and the epsilon it reports is the ledger's.

The client's order, every round: compute the update, then :meth:`SitePrivacyGuard.charge` it — one
atomic step under the ledger's lock that checks every limit, keeps the update's bytes (dp-sgd) and
debits the release, or raises :class:`BudgetExhausted` — and send it only if the charge succeeded.
The spend is on disk before anything of the update leaves the site.

What is charged (the rules themselves are in :mod:`fedsec.privacy.ledger`):

- Under DP-SGD the update a site computes from a given global model is itself differentially
  private (the noise went into every step), so sending exactly those bytes again costs nothing:
  when a round is asked again from the same (round, model) — a retry, a restarted aggregator or
  run, a rollback — the site re-sends the update it kept, if its bytes hash to the release's
  ``update_sha256``. If they do not (or it was never kept), training again is a new release and
  is charged like any other.
- Under distributed noise every release is new and charged (re-sending a share into a sum over
  other survivors would isolate it with only its part of the noise).
- A job's spend here never passes the ``targetEpsilon`` the site admitted it under, nor more
  releases than its planned ``rounds``, nor the site's cap or what remains of its budget after the
  other jobs' spend and the running jobs' reservations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from fedsec.api.client import FederatedClient
from fedsec.api.job import FederatedJob
from fedsec.privacy.calibration import Schedule, distributed_schedule, dp_sgd_schedule
from fedsec.privacy.ledger import (
    DP_SGD, BudgetExhausted, JobRef, Release, SiteLedger, Terms, job_epsilon, ledger_path,
)

log = logging.getLogger("fedsec.privacy")

__all__ = ["BudgetExhausted", "Kept", "SitePrivacyGuard"]


@dataclass(frozen=True)
class Kept:
    """An update already paid for: its bytes and the job's epsilon here (unchanged by re-sending)."""

    payload: bytes
    epsilon: float


class SitePrivacyGuard:
    def __init__(self, job: FederatedJob, job_uid: str, site: FederatedClient, ledger_dir: Path, n_train: int) -> None:
        p, t = job.spec.privacy, job.spec.task
        if p.mechanism == "none" or p.target_epsilon is None:
            raise ValueError("SitePrivacyGuard is for jobs with a privacy mechanism")
        self.mechanism = p.mechanism
        self.clipping_norm = p.clipping_norm
        self.name = site.metadata.name
        self.ref = JobRef(job_uid, job.metadata.name, job.metadata.namespace)
        self.ledger = SiteLedger(ledger_path(ledger_dir, self.name), self.name)
        if p.mechanism == DP_SGD:
            self.schedule: Schedule = dp_sgd_schedule(
                target_epsilon=p.target_epsilon, delta=p.delta, accountant=p.accountant, rounds=job.spec.rounds,
                n_train=n_train, batch_size=t.batch_size, local_epochs=t.local_epochs,
            )
        else:
            self.schedule = distributed_schedule(
                target_epsilon=p.target_epsilon, delta=p.delta, accountant=p.accountant, rounds=job.spec.rounds,
            )
        self.terms = Terms(
            mechanism=p.mechanism, target_epsilon=float(p.target_epsilon), planned_rounds=job.spec.rounds,
            delta=p.delta, accountant=p.accountant, budget=site.spec.privacy.budget,
            cap=site.spec.policy.max_epsilon_per_job,
        )
        s = self.schedule
        self.info = {
            "mechanism": p.mechanism, "accountant": p.accountant, "delta": p.delta, "target_epsilon": p.target_epsilon,
            "clipping_norm": p.clipping_norm, "noise_multiplier": s.noise_multiplier, "sample_rate": s.sample_rate,
            "steps_per_round": s.steps_per_round, "planned_rounds": s.planned_rounds,
        }
        self.ledger.set_budget(self.terms.budget)
        entry = self.ledger.admit(self.ref, self.terms, **self.info)
        pinned = entry.get("admitted") or {}
        if (pinned.get("target_epsilon"), pinned.get("rounds")) != (self.terms.target_epsilon, self.terms.planned_rounds):
            log.warning("%s admitted this job for epsilon %s over %s rounds; the job now asks %g over %d: the "
                        "admitted terms still bound its spend here", self.name, pinned.get("target_epsilon"),
                        pinned.get("rounds"), self.terms.target_epsilon, self.terms.planned_rounds)
        log.info(
            "%s: %s, noise multiplier %.4g, sampling rate %.4g, %d steps per round; epsilon after %d rounds: %.4f (target %g)",
            self.name, p.mechanism, s.noise_multiplier, s.sample_rate, s.steps_per_round, s.planned_rounds,
            s.planned_epsilon(), p.target_epsilon,
        )

    def spent(self) -> float:
        """This job's epsilon at this site, recomputed from the ledger's releases."""
        e = self.ledger.entry(self.ref.uid)
        return job_epsilon({**(e or {}), "delta": self.terms.delta, "accountant": self.terms.accountant})

    def kept(self, round_number: int, model_sha256: str) -> Kept | None:
        """Under dp-sgd, the update already paid for from this (round, model) if its kept bytes are
        exactly that release's; re-sending it is free. None otherwise (and always under distributed
        noise): train, then :meth:`charge`."""
        if self.mechanism != DP_SGD:
            return None
        found = self.ledger.kept_update(self.ref.uid, round_number, model_sha256)
        return None if found is None else Kept(*found)

    def charge(self, round_number: int, round_id: int, model_sha256: str, payload: bytes) -> float:
        """Charge the update ``payload`` (its wire bytes) computed for this round from the model with
        ``model_sha256``: check every limit, keep the bytes (dp-sgd) and debit, in one step under
        the ledger's lock. Returns the job's epsilon here after the charge; raises BudgetExhausted
        (recorded in the ledger with the reason) if it would pass a limit. Send only after it returns."""
        sigma, q, steps = self.schedule.step()
        release = Release(round_number, round_id, model_sha256, sigma, q, steps)
        return self.ledger.charge(self.ref, release, self.terms, payload, **self.info)

    def finished(self, reason: str) -> None:
        """The job ended: the rest of its admitted target is no longer reserved here."""
        self.ledger.finish(self.ref, reason)
