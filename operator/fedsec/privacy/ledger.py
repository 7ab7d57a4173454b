"""The site's privacy ledger: what each job has spent on this site's data, kept where no restart
can reset it, and the one place a release is charged.

Local runs keep one JSON file per site, ``LEDGER_DIR/<site>.json`` (``fedsec run --ledger-dir``;
by default ``ledger/`` next to the run directories), shared by every run on this machine so that a
second job sees the first one's spend. Under the operator the file lives on the site's own ledger
volume, which outlives every job. Every change is a read-modify-write under an exclusive file lock
(``fcntl.flock``: two jobs, or two processes of one job, may charge one site at once) and lands
with an atomic, durable rename (:mod:`fedsec.storage.atomic`), so the file is always whole.

A job is keyed by its uid (and carries its name for people). Its entry lists every release the
site made for it — each update that left (or was about to leave) the site, with the Gaussian steps
that produced it — and the terms the site admitted it under (``admitted``: its ``targetEpsilon``
and planned ``rounds``, pinned at the first admission and never raised afterwards). The job's
epsilon is recomputed from the releases by the accountant; the ledger never trusts a number held
in memory, nor any number the aggregator sends.

The rules, all checked by :meth:`SiteLedger.charge` in ONE step under the lock (check the limits,
keep the update, debit, write; or refuse and write why):

- **Every release whose bytes differ is charged.** Under dp-sgd the update computed from a global
  model is itself private, so re-sending exactly the same bytes is post-processing and free; a
  round asked again from the same (round, model) may re-send the kept update only if its bytes
  hash to that release's ``update_sha256``. Training again is a new release, charged, even for a
  (round, model) already seen. Under distributed-gaussian every release is charged, even the same
  bytes (two sums over different survivors would isolate one site's share of the noise).
- **A job never passes what the site admitted**: not its admitted ``targetEpsilon``, and not more
  releases than its planned ``rounds`` (the noise was calibrated for that many); a spec edit, an
  extra round or a rollback that would needs a new job.
- **Nor the site's limits**: ``policy.maxEpsilonPerJob``, and the budget, less what other jobs
  spent and what the running ones still reserve (:func:`fedsec.privacy.budget.remaining`).
- A refused charge raises :class:`BudgetExhausted` naming the limit and the numbers, and marks the
  job ``BudgetExhausted`` here; nothing is debited.
- The kept update is written (atomically) before the release that pays for it, in the same locked
  step: a crash in between leaves an unpaid file that nothing sends, never a paid release whose
  bytes are lost.

What it does not protect against: someone who can write the file (edit, delete or replace it, or
the kept updates) resets the spend; the file is not signed or anchored elsewhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsec.privacy.accountant import Step, epsilon
from fedsec.privacy.budget import Standing, fits, job_standing, remaining, total
from fedsec.storage.atomic import write_bytes_atomic, write_json_atomic

ADMITTED, TRAINING, FINISHED, REFUSED, EXHAUSTED = "Admitted", "Training", "Finished", "Refused", "BudgetExhausted"
RUNNING = frozenset({ADMITTED, TRAINING})  # states in which a job reserves its admitted target
DP_SGD = "dp-sgd"


class BudgetExhausted(RuntimeError):
    """A release would take the job past a limit the site set or admitted; it is not charged and
    the site stops training in the job."""


@dataclass(frozen=True)
class JobRef:
    uid: str
    name: str
    namespace: str = "default"


@dataclass(frozen=True)
class Terms:
    """What a site admits a job under; every charge is checked against these."""

    mechanism: str
    target_epsilon: float  # the job's targetEpsilon, per site
    planned_rounds: int  # releases the noise was calibrated for
    delta: float
    accountant: str = "rdp"
    budget: float | None = None  # the site's total (None: no budget)
    cap: float | None = None  # the site's policy.maxEpsilonPerJob


@dataclass(frozen=True)
class Release:
    round: int
    round_id: int
    model_sha256: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    update_sha256: str = ""

    @property
    def step(self) -> Step:
        return (self.noise_multiplier, self.sample_rate, self.steps)

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.round, "round_id": self.round_id, "model_sha256": self.model_sha256,
            "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate, "steps": self.steps,
            "update_sha256": self.update_sha256, "at": time.time(),
        }


def history_of(entry: dict[str, Any]) -> list[Step]:
    return [(float(r["noise_multiplier"]), float(r["sample_rate"]), int(r["steps"])) for r in entry.get("releases", [])]


def job_epsilon(entry: dict[str, Any]) -> float:
    """Epsilon of one job's entry, recomputed from its releases."""
    history = history_of(entry)
    if not history:
        return 0.0
    return epsilon(history, float(entry["delta"]), entry.get("accountant", "rdp"))


def entry_standing(entry: dict[str, Any]) -> Standing:
    """What one job's entry takes from the site's budget (spend, and while it runs its reservation)."""
    admitted = entry.get("admitted") or {}
    target = admitted.get("target_epsilon", entry.get("target_epsilon"))
    return job_standing(float(entry.get("epsilon", 0.0)), None if target is None else float(target),
                        entry.get("status") in RUNNING)


def ledger_path(ledger_dir: Path, site: str) -> Path:
    return ledger_dir / f"{site}.json"


class SiteLedger:
    def __init__(self, path: Path, site: str) -> None:
        self.path = path
        self.site = site
        self._lock_path = path.with_name(f".{path.name}.lock")

    # -- reading ----------------------------------------------------------------------------------

    def read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"site": self.site, "jobs": {}}
        return json.loads(self.path.read_text())

    def entry(self, uid: str) -> dict[str, Any] | None:
        return self.read()["jobs"].get(uid)

    def spent(self, *, excluding: str | None = None) -> float:
        """Total epsilon spent on this site by every job but ``excluding``."""
        return self.standing(excluding=excluding).spent

    def standing(self, *, excluding: str | None = None, doc: dict[str, Any] | None = None) -> Standing:
        """What every job but ``excluding`` spent here, and what the running ones still reserve."""
        jobs = (doc if doc is not None else self.read())["jobs"]
        return total(entry_standing(e) for uid, e in jobs.items() if uid != excluding)

    def remaining(self, budget: float | None) -> float | None:
        """What the site has left of ``budget`` for a new job (every job here counted)."""
        s = self.standing()
        return remaining(budget, s.spent, s.reserved)

    def kept_update(self, uid: str, round_number: int, model_sha256: str) -> tuple[bytes, float] | None:
        """The bytes of a paid dp-sgd release of this (round, model), if they are still exactly that
        release's (sha256 matches), and the job's epsilon: re-sending them is free."""
        e = self.entry(uid) or {}
        if e.get("mechanism", DP_SGD) != DP_SGD:
            return None
        for r in reversed(e.get("releases", [])):
            if r["round"] != round_number or r["model_sha256"] != model_sha256 or not r.get("update_sha256"):
                continue
            payload = self.load_update(uid, r["update_sha256"])
            if payload is not None:
                return payload, float(e.get("epsilon", job_epsilon(e)))
        return None

    # -- writing ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The document, read under the exclusive lock and written back (atomically) on exit."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                doc = self.read()
                yield doc
                doc["updated_at"] = time.time()
                write_json_atomic(self.path, doc)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _job(self, doc: dict[str, Any], job: JobRef, **info: Any) -> dict[str, Any]:
        e = doc["jobs"].setdefault(job.uid, {"job": job.name, "namespace": job.namespace, "releases": [], "epsilon": 0.0})
        # "admitted" is pinned by admit() only: info never overwrites the terms the site admitted
        e.update({k: v for k, v in info.items() if v is not None and k != "admitted"})
        return e

    def set_budget(self, budget: float | None) -> None:
        with self._locked() as doc:
            doc["budget"] = budget

    def set_status(self, job: JobRef, status: str, reason: str = "", **info: Any) -> None:
        with self._locked() as doc:
            e = self._job(doc, job, **info)
            e["status"], e["reason"] = status, reason

    def admit(self, job: JobRef, terms: Terms, **info: Any) -> dict[str, Any]:
        """Record that the site takes part in ``job`` under ``terms`` (once: the first admission pins
        the target and rounds; a later, larger spec does not raise them). Returns the entry."""
        with self._locked() as doc:
            e = self._job(doc, job, **info)
            if e.get("status") is None:
                e["status"], e["reason"] = ADMITTED, ""
            if "admitted" not in e:
                e["admitted"] = {"target_epsilon": terms.target_epsilon, "rounds": terms.planned_rounds, "at": time.time()}
            return dict(e)

    def finish(self, job: JobRef, reason: str) -> None:
        """The job ended: its reservation ends, only its spend counts from now on (a job the site
        refused or stopped keeps that status)."""
        with self._locked() as doc:
            e = doc["jobs"].get(job.uid)
            if e is not None and e.get("status") in RUNNING:
                e["status"], e["reason"] = FINISHED, reason

    def charge(self, job: JobRef, release: Release, terms: Terms, update: bytes | None = None, **info: Any) -> float:
        """Check every limit, keep ``update`` (dp-sgd), and debit ``release`` — one step under the
        lock. Returns the job's epsilon after the charge; raises BudgetExhausted (nothing debited,
        the job marked BudgetExhausted here with the reason) when the release would pass a limit.

        ``update`` is the release's bytes: their sha256 is recorded with the release (under every
        mechanism), and under dp-sgd they are kept, and bytes exactly those of a release already
        paid for are free (the job's epsilon is returned unchanged)."""
        update_sha = hashlib.sha256(update).hexdigest() if update is not None else ""
        if update is not None and update_sha != (release.update_sha256 or update_sha):
            raise ValueError("the release's update_sha256 does not match the update's bytes")
        with self._locked() as doc:
            e = self._job(doc, job, **info)
            dp_sgd = terms.mechanism == DP_SGD
            if dp_sgd and update_sha and any(r.get("update_sha256") == update_sha for r in e["releases"]):
                return float(e.get("epsilon", 0.0))  # the same bytes again: post-processing
            refused, after = self._refusal(doc, job, e, release, terms)
            if refused is not None:
                e["status"], e["reason"] = EXHAUSTED, refused
            else:
                if dp_sgd and update is not None:
                    # before the release that pays for it: a crash in between loses nothing paid
                    self._write_update(job.uid, update_sha, update)
                e["releases"].append({**release.as_dict(), "update_sha256": update_sha or release.update_sha256})
                e["epsilon"] = after  # the accountant's, over exactly the releases now recorded
                e["status"], e["reason"] = TRAINING, ""
                return float(e["epsilon"])
        raise BudgetExhausted(refused)  # only now: the refusal and its reason are on disk

    def _refusal(self, doc: dict[str, Any], job: JobRef, e: dict[str, Any], release: Release,
                 terms: Terms) -> tuple[str | None, float]:
        """Why ``release`` cannot be charged to ``e`` (None: it can), and the job's epsilon after it."""
        before = float(e.get("epsilon", 0.0))
        if e.get("status") == REFUSED:
            return f"the site refused this job: {e.get('reason', '')}", before
        admitted = e.get("admitted") or {}
        target = min(terms.target_epsilon, float(admitted.get("target_epsilon", terms.target_epsilon)))
        rounds = min(terms.planned_rounds, int(admitted.get("rounds", terms.planned_rounds)))
        done = len(e["releases"])
        what = f"round {release.round} (round id {release.round_id})"
        if done + 1 > rounds:
            return (f"{what} would be release {done + 1} of this job here, above the {rounds} planned rounds the "
                    f"site admitted it for (the noise is calibrated for {rounds} releases)"), before
        after = epsilon(history_of(e) + [release.step], terms.delta, terms.accountant)  # type: ignore[arg-type]
        if not fits(after, target):
            return (f"{what} would take this job's epsilon here from {before:.4f} to {after:.4f}, above the "
                    f"targetEpsilon {target:g} the site admitted it under"), after
        if terms.cap is not None and not fits(after, terms.cap):
            return (f"{what} would take this job's epsilon here from {before:.4f} to {after:.4f}, above the site's "
                    f"cap {terms.cap:g} (policy.maxEpsilonPerJob)"), after
        others = self.standing(excluding=job.uid, doc=doc)
        room = remaining(terms.budget, others.spent, others.reserved)
        if not fits(after, room):
            return (f"{what} would take the site's spend to {others.spent + others.reserved + after:.4f}, above its "
                    f"budget {terms.budget:g} ({others.spent:.4f} spent by other jobs, {others.reserved:.4f} reserved "
                    f"by other jobs still running, {after:.4f} by this one after the round)"), after
        return None, after

    # -- the kept updates, for a round asked again from the same model --------------------------

    def updates_dir(self, uid: str) -> Path:
        return self.path.with_name(f"{self.site}.updates") / uid

    def _write_update(self, uid: str, sha256: str, payload: bytes) -> None:
        # one file per release, named by its hash: bounded by the planned rounds, never overwritten
        write_bytes_atomic(self.updates_dir(uid) / f"{sha256}.safetensors", payload)

    def load_update(self, uid: str, sha256: str) -> bytes | None:
        """The kept bytes of the release with ``sha256``, only if they still hash to it."""
        if not sha256:
            return None
        path = self.updates_dir(uid) / f"{sha256}.safetensors"
        try:
            payload = path.read_bytes()
        except FileNotFoundError:
            return None
        return payload if hashlib.sha256(payload).hexdigest() == sha256 else None
