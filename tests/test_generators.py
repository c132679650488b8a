"""Every generator gives the graph its name promises, with doubly stochastic weights; schedules average exactly."""

from __future__ import annotations

import numpy as np
import pytest

from p2ptrain.topology import TopologyError, dump_topology, generate, parse_topology
from p2ptrain.topology.graph import _unreachable


def degrees(topology):
    return topology.adjacency.sum(axis=1)


@pytest.mark.parametrize(
    "kind, n, edges, min_degree, max_degree",
    [
        ("ring", 16, 16, 2, 2),
        ("line", 10, 9, 1, 2),
        ("star", 9, 8, 1, 8),
        ("complete", 7, 21, 6, 6),
        ("torus", 16, 32, 4, 4),
        ("grid", 16, 24, 2, 4),
        ("hypercube", 32, 80, 5, 5),
        ("two-clusters", 10, 21, 4, 5),
        ("exponential", 16, 64, 4, 4),
    ],
)
def test_each_generator_gives_the_promised_graph(kind, n, edges, min_degree, max_degree):
    topology = generate(kind, n)
    assert topology.size == n
    assert len(topology.edges()) == edges
    assert degrees(topology).min() == min_degree and degrees(topology).max() == max_degree
    assert not _unreachable(topology.adjacency, topology.directed)
    assert topology.doubly_stochastic


def test_two_clusters_are_joined_by_exactly_one_edge():
    topology = generate("two-clusters", 12)
    crossing = [(a, b) for a, b in topology.edges() if (int(a[1:]) < 6) != (int(b[1:]) < 6)]
    assert crossing == [("p0", "p6")]


@pytest.mark.parametrize("kind", ["erdos-renyi", "geometric"])
def test_random_graphs_are_connected_and_reproducible_from_the_seed(kind):
    a, b, c = generate(kind, 32, seed=1), generate(kind, 32, seed=1), generate(kind, 32, seed=2)
    assert a.edges() == b.edges() and a.edges() != c.edges()
    assert not _unreachable(a.adjacency, directed=False)
    assert a.doubly_stochastic


def test_too_sparse_random_graphs_are_refused_with_a_hint():
    with pytest.raises(TopologyError, match="raise --probability"):
        generate("erdos-renyi", 40, probability=0.01)


@pytest.mark.parametrize("kind, n, message", [("hypercube", 12, "power of two"), ("torus", 10, "square number"),
                                               ("one-peer-exponential", 6, "power of two")])
def test_impossible_sizes_say_what_would_work(kind, n, message):
    with pytest.raises(TopologyError, match=message):
        generate(kind, n)


def test_powers_of_two_are_recognised_with_integers():
    # 2**k for every k up to 2**40: a float log2 would round some of them down.
    from p2ptrain.topology.generators import _log2

    assert [_log2(1 << k, "x") for k in range(1, 41)] == list(range(1, 41))
    with pytest.raises(TopologyError):
        _log2(243, "x")  # 3**5


@pytest.mark.parametrize("n", [8, 16, 32])
def test_one_peer_exponential_reaches_the_exact_average_after_log2_n_rounds(n):
    topology = generate("one-peer-exponential", n)
    k = n.bit_length() - 1
    assert topology.period == k
    for r in range(k):
        assert set(degrees_of_round(topology, r)) == {1}  # one message per peer per round
        w = topology.weights_at(r)
        np.testing.assert_allclose(w[w > 0], 0.5)
    product = np.eye(n)
    for r in range(k):
        product = topology.weights_at(r) @ product
    np.testing.assert_allclose(product, np.full((n, n), 1 / n), atol=1e-15)
    assert topology.consensus_rate == pytest.approx(0, abs=1e-7)


def degrees_of_round(topology, r):
    return [len(topology.in_neighbours(pid, r)) for pid in topology.ids]


def test_a_schedule_survives_the_file_round_trip():
    topology = generate("one-peer-exponential", 8)
    again = parse_topology(dump_topology(topology))
    assert again.period == 3
    for r in range(3):
        assert again.edges(r) == topology.edges(r)
        np.testing.assert_array_equal(again.weights_at(r), topology.weights_at(r))
    assert again.in_neighbours("p0", 2) == ("p4",)
    assert set(again.in_neighbours("p0")) == {"p7", "p6", "p4"}  # every round together


def test_lazy_weights_halve_the_step_and_keep_eigenvalues_nonnegative():
    plain, lazy = generate("ring", 8), generate("ring", 8, mixing="lazy")
    np.testing.assert_allclose(lazy.weights, (np.eye(8) + plain.weights) / 2)
    assert np.linalg.eigvalsh(lazy.weights).min() >= -1e-12
    assert lazy.doubly_stochastic


def test_a_schedule_must_be_connected_over_its_period_only():
    text = """
directed = true
mixing = "uniform"
[[peers]]
id = "a"
endpoint = "inproc://a"
[[peers]]
id = "b"
endpoint = "inproc://b"
[[schedule]]
edges = [["a", "b"]]
[[schedule]]
edges = [["b", "a"]]
"""
    assert parse_topology(text).period == 2
    with pytest.raises(TopologyError, match="not strongly connected over one period"):
        parse_topology(text.replace('edges = [["b", "a"]]', "edges = []"))
