"""The replay rule: a (sender, nonce) is accepted once, and only while its timestamp is fresh.

Nonces are remembered for twice the freshness window, so a replay is either remembered or too old;
memory stays bounded because older entries are dropped. Round binding adds a second fence: a
message of an earlier round is stale to the engine whatever its nonce.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from fedsec.protocol.rejections import Rejected


class ReplayGuard:
    """Thread-safe: envelopes are opened on many gRPC threads at once, and a replay racing its
    original must not pass between the membership test and the insert."""

    def __init__(self, window_ms: int = 300_000, max_entries: int = 1_000_000) -> None:
        self.window_ms = window_ms
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, bytes], int] = OrderedDict()  # insertion = arrival order
        self._lock = threading.Lock()

    def check(self, sender: str, nonce: bytes, issued_at_ms: int, now_ms: int) -> None:
        if abs(now_ms - issued_at_ms) > self.window_ms:
            raise Rejected(
                "expired",
                f"message was issued {abs(now_ms - issued_at_ms) / 1000:.0f}s from now; the window is "
                f"{self.window_ms / 1000:.0f}s (check the sender's clock)",
            )
        key = (sender, bytes(nonce))
        with self._lock:
            self._evict(now_ms)
            if key in self._seen:
                raise Rejected("replay", f"nonce {nonce.hex()[:12]}… from {sender!r} was already used")
            self._seen[key] = now_ms

    def _evict(self, now_ms: int) -> None:
        horizon = now_ms - 2 * self.window_ms
        while self._seen:
            key, seen_at = next(iter(self._seen.items()))
            if seen_at >= horizon and len(self._seen) < self.max_entries:
                break
            self._seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)
