"""Plaintext FedAvg: the streaming server equals the reference weighted mean, and refuses bad updates."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsec.aggregation.base import Aborted, ClientUpdate, Finished, PeerIdentity, ProtocolRejection, RoundContext, TensorSpec, weighted_mean
from fedsec.aggregation.plaintext import PlaintextMode
from fedsec.wire import tensors
from fedsec.wire.proto import round_pb2 as pb

NOBODY = PeerIdentity("x", b"", lambda d: b"", lambda *a: False)


def ctx(n: int, d: int, min_survivors: int = 1) -> RoundContext:
    return RoundContext("job", 1, tuple(f"c{i:03d}" for i in range(n)), min_survivors, (TensorSpec("w", (d,)),))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), d=st.integers(1, 50), seed=st.integers(0, 2**16))
def test_streaming_mean_equals_reference(n: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    c = ctx(n, d)
    mode = PlaintextMode()
    server = mode.server(c)
    updates = {p: ClientUpdate({"w": rng.normal(size=d).astype(np.float32)}, float(rng.integers(1, 1000))) for p in c.participants}
    for p, u in updates.items():
        server.receive(p, mode.client(c, NOBODY, u).respond("update", server.request_for(p) or b""))
    out = server.close_phase()
    assert isinstance(out, Finished)
    ref = weighted_mean(updates)
    np.testing.assert_allclose(out.aggregate.mean_delta["w"], ref.mean_delta["w"], rtol=1e-5, atol=1e-6)
    assert out.aggregate.total_weight == pytest.approx(ref.total_weight)


def test_too_few_updates_abort() -> None:
    server = PlaintextMode().server(ctx(3, 2, min_survivors=2))
    server.receive("c000", pb.PlainUpdate(delta=tensors.encode({"w": np.zeros(2, np.float32)}), weight=1).SerializeToString())
    out = server.close_phase()
    assert isinstance(out, Aborted) and "1 of 3" in out.reason


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"\x0a\xff\xff", "parse"),
        (pb.PlainUpdate(delta=tensors.encode({"w": np.zeros(2, np.float32)}), weight=0).SerializeToString(), "weight"),
        (pb.PlainUpdate(delta=tensors.encode({"w": np.zeros(2, np.float32)}), weight=float("nan")).SerializeToString(), "weight"),
        (pb.PlainUpdate(delta=tensors.encode({"w": np.zeros(3, np.float32)}), weight=1).SerializeToString(), "shape"),
        (pb.PlainUpdate(delta=tensors.encode({"w": np.zeros(2, np.float64)}), weight=1).SerializeToString(), "dtype"),
        (pb.PlainUpdate(delta=tensors.encode({"v": np.zeros(2, np.float32)}), weight=1).SerializeToString(), "names"),
        (pb.PlainUpdate(delta=tensors.encode({"w": np.array([1, np.inf], np.float32)}), weight=1).SerializeToString(), "NaN or infinity"),
        (pb.PlainUpdate(delta=b"not safetensors", weight=1).SerializeToString(), "safetensors"),
    ],
)
def test_bad_updates_are_refused_and_change_nothing(body: bytes, match: str) -> None:
    server = PlaintextMode().server(ctx(2, 2))
    with pytest.raises(ProtocolRejection, match=match):
        server.receive("c000", body)
    assert server.expected() == {"c000", "c001"}
