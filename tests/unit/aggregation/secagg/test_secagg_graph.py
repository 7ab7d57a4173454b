import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsec.aggregation.secagg.graph import neighbour_graph, neighbours_of


def _connected(nodes: set[int], graph: tuple[frozenset[int], ...]) -> bool:
    if not nodes:
        return True
    start = next(iter(nodes))
    seen, todo = {start}, [start]
    while todo:
        for v in graph[todo.pop()] & nodes:
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return seen == nodes


@settings(max_examples=50, deadline=None)
@given(n=st.integers(3, 200), half=st.integers(1, 12), seed=st.binary(max_size=8))
def test_graph_is_symmetric_regular_and_survives_k_minus_1_removals(n: int, half: int, seed: bytes) -> None:
    k = 2 * half
    g = neighbour_graph(n, k, hashlib.sha256(seed).digest())
    want = min(k, n - 1)
    for i, nb in enumerate(g):
        assert i not in nb
        assert len(nb) == want
        assert all(i in g[j] for j in nb)
    removed = set(random.Random(seed).sample(range(n), min(want - 1, n - 1)))
    assert _connected(set(range(n)) - removed, g)


def test_graph_is_a_public_function_of_the_seed():
    a, b = b"a" * 32, b"b" * 32
    assert neighbour_graph(50, 6, a) == neighbour_graph(50, 6, a)
    assert neighbour_graph(50, 6, a) != neighbour_graph(50, 6, b)


def test_sparse_degree_must_be_even():
    with pytest.raises(ValueError, match="even"):
        neighbour_graph(10, 3, bytes(32))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 60), half=st.integers(1, 8), seed=st.binary(max_size=8))
def test_a_client_computes_its_own_neighbourhood_as_the_server_does(n: int, half: int, seed: bytes) -> None:
    s = hashlib.sha256(seed).digest()
    g = neighbour_graph(n, 2 * half, s)
    assert all(neighbours_of(i, n, 2 * half, s) == g[i] for i in range(n))
