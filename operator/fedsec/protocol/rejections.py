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
    "busy",
)


class Rejected(Exception):
    """A message broke a rule. ``reason`` is one of :data:`REASONS`; ``detail`` is for people.
    ``sender`` and ``nonce`` name the request when its signature verified before the rule broke: the
    refusal can then answer it (a site in an old key epoch learns the new epoch from the answer)."""

    sender: str = ""
    nonce: bytes = b""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
