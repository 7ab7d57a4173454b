import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedsec.crypto.secagg.quantize import FixedPoint


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 20),
    d=st.integers(1, 50),
    ring=st.sampled_from([32, 64]),
    data=st.data(),
)
def test_sum_of_encodings_is_the_clipped_weighted_sum_within_n_units(n: int, d: int, ring: int, data: st.DataObject) -> None:
    room = (2 ** (ring - 1) - 1) // n
    frac = data.draw(st.integers(1, min(room.bit_length() - 1, 40)))
    clip = data.draw(st.floats(0.01, 100.0))
    fp = FixedPoint(ring, frac, clip)
    xs = [(data.draw(arrays(np.float64, d, elements=st.floats(-3.0, 3.0))) * clip).astype(np.float32) for _ in range(n)]
    factors = [data.draw(st.floats(0.0, 1.0)) for _ in range(n)]
    total = np.zeros(d, dtype=fp.dtype)
    for x, f in zip(xs, factors):
        out = np.empty(d, dtype=fp.dtype)
        fp.encode(x, f, out)
        total += out
    want = sum(np.clip(x.astype(np.float64), -clip, clip) * f for x, f in zip(xs, factors))
    got = fp.decode_values(total)
    # each client's stochastic rounding moves it by less than one unit of clip / 2**frac
    assert np.all(np.abs(got - want) <= n * clip / fp.unit * (1 + 1e-9) + 1e-12 * np.abs(want))


def test_rounding_is_unbiased():
    fp = FixedPoint(32, 4, 1.0)
    x = np.full(200_000, 0.3 / 16 + 2 / 16, dtype=np.float64)  # 2.3 units: rounds to 2 or 3
    out = np.empty(x.size, dtype=fp.dtype)
    fp.encode(x, 1.0, out)
    vals = fp.to_signed(out)
    assert set(np.unique(vals)) == {2, 3}
    assert abs(vals.mean() - 2.3) < 0.01


def test_clipping_is_counted_and_negative_values_wrap():
    fp = FixedPoint(32, 8, 2.0)
    out = np.empty(3, dtype=fp.dtype)
    assert fp.encode(np.array([-5.0, 2.0, 9.0]), 1.0, out) == 2
    assert list(fp.to_signed(out)) == [-256, 256, 256]
    assert out[0] == 2**32 - 256


def test_headroom_and_arguments():
    assert FixedPoint(32, 24, 1.0).max_summands() == 127
    with pytest.raises(ValueError, match="frac_bits"):
        FixedPoint(32, 31, 1.0)
    with pytest.raises(ValueError, match="ring_bits"):
        FixedPoint(16, 4, 1.0)
    with pytest.raises(ValueError, match="clip_range"):
        FixedPoint(32, 4, 0.0)
    with pytest.raises(ValueError, match="factor"):
        FixedPoint(32, 4, 1.0).encode(np.zeros(1), 1.5, np.empty(1, np.uint32))
