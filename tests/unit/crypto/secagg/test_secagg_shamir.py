import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsec.crypto.secagg import shamir


def _is_probable_prime(n: int, rounds: int = 32) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    rng = random.Random(1)
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def test_field_is_the_least_prime_above_2_256():
    assert _is_probable_prime(shamir.PRIME)
    assert not any(_is_probable_prime(2**256 + i) for i in range(1, 297, 2))


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    m=st.integers(1, 12),
    data=st.data(),
)
def test_any_threshold_subset_rebuilds_the_secret(secret: bytes, m: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, m))
    xs = data.draw(st.lists(st.integers(1, 10_000), min_size=m, max_size=m, unique=True))
    ys = shamir.split(secret, xs, t)
    subset = data.draw(st.lists(st.sampled_from(list(zip(xs, ys))), min_size=t, max_size=t, unique=True))
    assert shamir.combine(subset) == secret


def test_fewer_than_threshold_shares_do_not_rebuild_the_secret():
    secret = bytes(range(32))
    xs = [1, 2, 3, 4, 5]
    ys = shamir.split(secret, xs, 3)
    # Two shares of a degree-2 polynomial are consistent with every secret; interpolating them as a
    # line gives the line's value at 0, unrelated to the secret (out of range, and so refused, only
    # with probability 297 / 2**256).
    two = list(zip(xs, ys))[:2]
    line_at_zero = _interpolate(two, 0).to_bytes(32, "big")
    assert shamir.combine(two) == line_at_zero != secret


def _interpolate(nodes: list[tuple[int, int]], x: int) -> int:
    total = 0
    for i, (xi, yi) in enumerate(nodes):
        num = den = 1
        for j, (xj, _) in enumerate(nodes):
            if j != i:
                num = num * (x - xj) % shamir.PRIME
                den = den * (xi - xj) % shamir.PRIME
        total += yi * num * pow(den, -1, shamir.PRIME)
    return total % shamir.PRIME


def test_threshold_minus_one_shares_are_consistent_with_every_secret():
    # Perfect secrecy: t-1 shares plus *any* candidate secret lie on one polynomial of degree t-1,
    # so the shares cannot tell the candidates apart. Complete the two shares with a third point
    # taken from the polynomial through (0, candidate): combine() then yields that candidate.
    xs = [3, 7, 9]
    ys = shamir.split(b"\x01" * 32, xs, 3)
    seen = [(3, ys[0]), (7, ys[1])]
    for candidate in (b"\x01" * 32, b"\x02" * 32, b"\xff" * 32):
        nodes = [(0, int.from_bytes(candidate, "big"))] + seen
        assert shamir.combine(seen + [(11, _interpolate(nodes, 11))]) == candidate
    # and the true third share gives the true secret
    assert shamir.combine(seen + [(9, ys[2])]) == b"\x01" * 32


def test_a_corrupted_share_does_not_rebuild_the_secret():
    secret = b"\x42" * 32
    xs = [1, 2, 3]
    ys = shamir.split(secret, xs, 3)
    bad = [(1, ys[0]), (2, (ys[1] + 1) % shamir.PRIME), (3, ys[2])]
    # The error in share 2 moves the result by its Lagrange weight at 0 for x = 1, 2, 3, which is -3.
    assert shamir.combine(bad) == (int.from_bytes(secret, "big") - 3).to_bytes(32, "big")


def test_share_encoding_round_trips_and_rejects_bad_values():
    y = shamir.PRIME - 1
    assert shamir.decode_share(shamir.encode_share(y)) == y
    with pytest.raises(ValueError, match="field element"):
        shamir.decode_share(shamir.PRIME.to_bytes(33, "big"))
    with pytest.raises(ValueError, match="33 bytes"):
        shamir.decode_share(b"\x00" * 32)


@pytest.mark.parametrize(
    ("secret", "xs", "t", "match"),
    [
        (b"\x00" * 31, [1, 2], 2, "32 bytes"),
        (b"\x00" * 32, [1, 1], 2, "distinct"),
        (b"\x00" * 32, [0, 1], 2, "non-zero"),
        (b"\x00" * 32, [1, 2], 3, "threshold"),
    ],
)
def test_split_rejects_bad_arguments(secret: bytes, xs: list[int], t: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        shamir.split(secret, xs, t)
