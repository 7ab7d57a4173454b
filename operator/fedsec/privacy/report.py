"""The privacy part of a job's summary, read from the sites' own ledgers, never from the aggregator
(which only relays what sites report, forgets it on a restart, and is the job's side): per site the
epsilon this job spent (the accountant's over the site's recorded releases), the site's total,
budget and what remains (:func:`fedsec.privacy.budget.remaining`: less what every job spent and
what the running ones still reserve); the sites refused and why."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fedsec.api.client import FederatedClient
from fedsec.api.job import FederatedJob
from fedsec.privacy.budget import remaining
from fedsec.privacy.ledger import SiteLedger, ledger_path


def privacy_section(
    job: FederatedJob, job_uid: str, sites: Iterable[FederatedClient], refused: dict[str, str], ledger_dir: Path
) -> dict[str, Any]:
    p = job.spec.privacy
    out: dict[str, Any] = {
        "mechanism": p.mechanism,
        "ledger_dir": str(ledger_dir),
        "sites": {},
        "refused": dict(sorted(refused.items())),
    }
    if p.mechanism != "none":
        out.update(target_epsilon=p.target_epsilon, delta=p.delta, accountant=p.accountant, clipping_norm=p.clipping_norm,
                   level="record (each site's training rows)" if p.mechanism == "dp-sgd" else "user (a site's whole update)")
    spent_job = []
    for c in sorted(sites, key=lambda c: c.metadata.name):
        name = c.metadata.name
        ledger = SiteLedger(ledger_path(ledger_dir, name), name)
        entry = ledger.entry(job_uid) or {}
        standing = ledger.standing()
        budget = c.spec.privacy.budget
        row: dict[str, Any] = {
            "epsilon_this_job": float(entry.get("epsilon", 0.0)),
            "rounds_released": len(entry.get("releases", [])),
            "status": entry.get("status", "Refused" if name in refused else "Unseen"),
            "spent_total": standing.spent,
            "reserved_by_running": standing.reserved,
            "budget": budget,
            "remaining": remaining(budget, standing.spent, standing.reserved),
        }
        for k in ("noise_multiplier", "sample_rate", "steps_per_round"):
            if k in entry:
                row[k] = entry[k]
        if entry.get("reason"):
            row["reason"] = entry["reason"]
        out["sites"][name] = row
        if name not in refused:
            spent_job.append(row["epsilon_this_job"])
    # None: no differential privacy, epsilon unbounded
    out["epsilon_spent_max"] = max(spent_job, default=0.0) if p.mechanism != "none" else None
    return out


def one_line(section: dict[str, Any]) -> str:
    """The progress display's privacy line."""
    live = [s["epsilon_this_job"] for n, s in section["sites"].items() if n not in section["refused"]]
    if not live:
        return ""
    text = f"epsilon spent per site: {min(live):.3f}–{max(live):.3f} of target {section['target_epsilon']:g}"
    out = [n for n, s in section["sites"].items() if s["status"] == "BudgetExhausted"]
    if out:
        text += f"; budget exhausted: {', '.join(out)}"
    return text
