import numpy as np
import pytest

from fedsec.crypto.secagg.prg import Expander, expand, keystream


def test_same_seed_same_mask_different_seed_different_mask():
    a = expand(b"\x01" * 32, 1000)
    assert np.array_equal(a, expand(b"\x01" * 32, 1000))
    assert not np.array_equal(a, expand(b"\x02" * 32, 1000))


def test_a_shorter_expansion_is_a_prefix_of_a_longer_one():
    long = expand(b"\x07" * 32, 1001, np.uint64)
    assert np.array_equal(expand(b"\x07" * 32, 17, np.uint64), long[:17])


def test_words_are_little_endian_keystream():
    seed = b"\x03" * 32
    ks = bytes(keystream(seed, 8)[:8])
    assert int(expand(seed, 2, np.uint32)[1]) == int.from_bytes(ks[4:8], "little")


def test_mask_bytes_look_uniform():
    data = np.frombuffer(bytes(keystream(b"\x09" * 32, 1 << 18)[: 1 << 18]), dtype=np.uint8)
    counts = np.bincount(data, minlength=256)
    expected = data.size / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 400  # 255 degrees of freedom: a uniform source exceeds 400 with p < 1e-7


def test_seed_must_be_32_bytes():
    with pytest.raises(ValueError, match="32 bytes"):
        expand(b"short", 4)


def test_expander_reuses_its_buffer_and_matches_expand():
    ex = Expander(333, np.uint64)
    a = ex(b"\x01" * 32).copy()
    b = ex(b"\x02" * 32)
    assert np.array_equal(a, expand(b"\x01" * 32, 333, np.uint64))
    assert np.array_equal(b, expand(b"\x02" * 32, 333, np.uint64))
    with pytest.raises(ValueError, match="32 bytes"):
        ex(b"x")
