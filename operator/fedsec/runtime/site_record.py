"""What a site refused of the aggregator, counted by reason and audited, at the site.

The aggregator's own audit log and metrics are the coordinator's: a site does not rely on them to
learn that the aggregator misbehaved. Each refusal of a Task (its round terms departed from what the
site admitted, :mod:`fedsec.protocol.terms`) or of a protocol request (secure aggregation's checks)
is written to the site's own hash-chained audit log and counted by reason in ``refusals.json`` in
the site's directory; the local launcher shows the counts in the run summary. Entries hold ids,
reasons and counts, never data or keys.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from fedsec.storage.atomic import write_json_atomic
from fedsec.telemetry.audit import AuditLog

log = logging.getLogger("fedsec.client")
AUDIT = "audit.jsonl"
COUNTS = "refusals.json"


class SiteRecord:
    """The site's record of refusals; ``state_dir`` None keeps counts in memory and in the log only."""

    def __init__(self, state_dir: Path | None, site: str) -> None:
        self.site = site
        self.state_dir = state_dir
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self._audit: AuditLog | None = None
        if state_dir is not None:
            state_dir.mkdir(parents=True, exist_ok=True)
            self._audit = AuditLog(state_dir / AUDIT)
            counts = state_dir / COUNTS
            if counts.exists():  # a restarted client keeps counting where it left off
                self.counts = {str(k): int(v) for k, v in json.loads(counts.read_text()).get("refused", {}).items()}

    def refused(self, reason: str, detail: str, **ids: Any) -> None:
        log.error("%s refused the aggregator's %s: %s", self.site, reason, detail)
        with self._lock:
            self.counts[reason] = self.counts.get(reason, 0) + 1
            if self._audit is not None:
                self._audit.append("task-refused", sync=True, site=self.site, reason=reason, detail=detail[:500], **ids)
            if self.state_dir is not None:
                write_json_atomic(self.state_dir / COUNTS, {"site": self.site, "refused": self.counts})

    def note(self, event: str, **data: Any) -> None:
        """A site-side event worth an audit entry (the peers it left out of a round)."""
        if self._audit is not None:
            with self._lock:
                self._audit.append(event, site=self.site, **data)

    def close(self) -> None:
        if self._audit is not None:
            self._audit.close()


def read_counts(state_dir: Path) -> dict[str, int]:
    """A site's refusal counts by reason, as :class:`SiteRecord` left them ({} when none)."""
    path = state_dir / COUNTS
    if not path.exists():
        return {}
    return {str(k): int(v) for k, v in json.loads(path.read_text()).get("refused", {}).items()}
