"""Per-message size caps by kind and phase, and the bound on calls in flight per site and in all."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fedsec.aggregation.base import RoundContext, TensorSpec
from fedsec.aggregation.plaintext import PlaintextMode, PlaintextClient
from fedsec.aggregation.base import ClientUpdate
from fedsec.runtime import limits
from fedsec.wire import tensors as wire_tensors

MODEL = (TensorSpec("w", (1, 30)), TensorSpec("b", (1,)))
STATS = (TensorSpec("mean", (30,)), TensorSpec("sqmean", (30,)))
BIG = 64 << 20
K = limits.ENVELOPE_OVERHEAD_BYTES


@pytest.mark.parametrize(
    ("phase", "answer"),
    [
        ("advertise", 8 * 1024),
        ("share", 12 * 200 + 4096),
        ("masked-input", (60 + 1) * 8 + 4096),  # the statistics round's 60 coordinates outnumber the model's 31
        ("unmask", 12 * 120 + 4096),
        ("consistency", 12 * 80 + 4096),
        ("no-such-phase", 8 * 1024),  # the mode's largest
    ],
)
def test_secagg_caps_follow_the_phase(phase: str, answer: int) -> None:
    assert limits.answer_cap("secagg", phase, MODEL, 12, BIG, STATS) == answer + K


def test_the_masked_input_cap_grows_with_the_model() -> None:
    wide = (TensorSpec("w", (1000, 30)),)
    assert limits.answer_cap("secagg", "masked-input", wide, 12, BIG, STATS) == (30_000 + 1) * 8 + 4096 + K


def test_a_plaintext_update_may_be_the_models_safetensors_and_64k_no_more() -> None:
    cap = limits.answer_cap("none", "update", MODEL, 12, BIG, STATS)
    assert cap == max(wire_tensors.encoded_size(MODEL), wire_tensors.encoded_size(STATS)) + 64 * 1024 + K
    ctx = RoundContext("job", 1, ("a", "b"), 1, MODEL)
    honest = PlaintextClient(ClientUpdate({s.name: np.ones(s.shape, np.float32) for s in MODEL}, 5.0)).respond("update", b"")
    assert len(honest) <= PlaintextMode().server(ctx).max_answer_bytes() <= cap - K


def test_no_cap_exceeds_max_message_bytes_and_an_unknown_mode_gets_it() -> None:
    assert limits.answer_cap("secagg", "advertise", MODEL, 12, 1000, STATS) == 1000
    assert limits.answer_cap("he", "anything", MODEL, 12, BIG) == BIG
    assert limits.largest_message("secagg", MODEL, 12, BIG, STATS) == 8 * 1024 + K


def test_the_server_pool_keeps_workers_free_and_grpc_admits_a_bounded_number() -> None:
    assert limits.rpc_workers(12) == 20
    assert limits.max_in_flight(12) == 20 - limits.FREE_WORKERS
    assert limits.max_in_flight(12) >= 12  # every honest site's one call at a time still fits
    assert limits.max_concurrent_rpcs(12) == 40


def test_a_peer_gets_its_bound_and_the_others_theirs() -> None:
    calls = limits.CallLimiter(per_peer=2, total=5)
    assert calls.enter("site-a") == "" and calls.enter("site-a") == ""
    refused = calls.enter("site-a")
    assert "site-a already has 2 calls in flight (at most 2 per site)" == refused
    assert calls.enter("site-b") == ""  # another site is not charged for site-a's calls
    calls.leave("site-a")
    assert calls.enter("site-a") == ""
    assert (calls.in_flight("site-a"), calls.in_flight("site-b"), calls.in_flight()) == (2, 1, 3)


def test_the_total_bound_holds_over_all_peers() -> None:
    calls = limits.CallLimiter(per_peer=2, total=3)
    for peer in ("a", "b", "c"):
        assert calls.enter(peer) == ""
    assert calls.enter("d").startswith("the aggregator is handling 3 calls (at most 3)")
    calls.leave("b")
    assert calls.enter("d") == ""
    assert calls.in_flight("b") == 0


def test_concurrent_entries_never_exceed_the_bound() -> None:
    calls = limits.CallLimiter(per_peer=2, total=100)
    barrier = threading.Barrier(16)
    admitted: list[bool] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        ok = calls.enter("site-a") == ""
        with lock:
            admitted.append(ok)

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert sorted(admitted) == [False] * 14 + [True] * 2
