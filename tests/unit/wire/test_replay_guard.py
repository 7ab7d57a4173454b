from __future__ import annotations

import pytest

from fedsec.protocol.rejections import Rejected
from fedsec.protocol.replay import ReplayGuard


def test_each_nonce_once_per_sender() -> None:
    g = ReplayGuard(window_ms=1000)
    g.check("a", b"n1", 0, 0)
    g.check("b", b"n1", 0, 0)  # another sender may use the same bytes
    with pytest.raises(Rejected, match="replay"):
        g.check("a", b"n1", 0, 10)


def test_memory_is_bounded_by_the_window() -> None:
    g = ReplayGuard(window_ms=1000)
    for i in range(100):
        g.check("a", i.to_bytes(4, "big"), i, i)
    g.check("a", b"late", 5000, 5000)  # everything older than two windows is forgotten
    assert len(g) == 1


def test_old_or_future_timestamps_are_expired() -> None:
    g = ReplayGuard(window_ms=1000)
    for issued in (0, 20_000):
        with pytest.raises(Rejected) as exc:
            g.check("a", b"x", issued, 10_000)
        assert exc.value.reason == "expired"


def test_a_replay_racing_its_original_is_caught_once() -> None:
    import threading

    g = ReplayGuard(window_ms=1000)
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        barrier.wait()
        try:
            g.check("a", b"same-nonce", 0, 0)
            outcomes.append("accepted")
        except Rejected as exc:
            outcomes.append(exc.reason)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(outcomes) == ["accepted"] + ["replay"] * 7
