"""Why a message was refused: one label per rule, counted in metrics and written to the audit log."""

from __future__ import annotations

REASONS = (
    "oversized",
    "malformed",
    "bad-signature",
    "forged-sender",
    "peer-mismatch",
    "unknown-sender",
    "wrong-job",
    "wrong-epoch",
    "wrong-recipient",
    "replay",
    "expired",
    "stale-round",
    "wrong-phase",
    "not-participant",
    "duplicate",
    "invalid-update",
    "job-finished",
)


class Rejected(Exception):
    """A message broke a rule. ``reason`` is one of :data:`REASONS`; ``detail`` is for people."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
