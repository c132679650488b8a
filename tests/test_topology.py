"""Topology files, validation messages, mixing weights and their spectra, against closed forms."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptrain.topology import (
    PeerSpec,
    TopologyError,
    build_topology,
    dump_topology,
    generate,
    load_topology,
    parse_topology,
)
from p2ptrain.topology.__main__ import main as topology_cli
from p2ptrain.topology.weights import consensus_rate, metropolis_hastings, uniform

TOPOLOGIES = Path(__file__).resolve().parent.parent / "topologies"
SHIPPED = ["ring8", "line8", "star8", "complete8", "torus16", "exponential16", "pair", "ring16"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_topologies_load_and_are_doubly_stochastic(name):
    topology = load_topology(TOPOLOGIES / f"{name}.toml")
    assert topology.name == name
    assert all(p.endpoint.startswith("tcp://127.0.0.1:") for p in topology.peers)
    w = topology.weights
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
    assert topology.doubly_stochastic


@pytest.mark.parametrize(
    "name, edges, max_degree",
    [("ring8", 8, 2), ("line8", 7, 2), ("star8", 7, 7), ("complete8", 28, 7), ("torus16", 32, 4),
     ("exponential16", 64, 4)],
)
def test_shipped_topologies_have_the_promised_shape(name, edges, max_degree):
    topology = load_topology(TOPOLOGIES / f"{name}.toml")
    assert len(topology.edges()) == edges
    assert topology.adjacency.sum(axis=1).max() == max_degree


def test_exponential16_sends_to_powers_of_two():
    topology = load_topology(TOPOLOGIES / "exponential16.toml")
    assert topology.directed
    assert set(topology.out_neighbours("p3")) == {"p4", "p5", "p7", "p11"}
    assert set(topology.in_neighbours("p3")) == {"p2", "p1", "p15", "p11"}


@pytest.mark.parametrize("n", [3, 5, 8, 16, 33])
def test_ring_rho_matches_closed_form(n):
    # Metropolis weights on a ring are 1/3 everywhere: rho = 1/3 + 2/3 cos(2 pi / n).
    topology = generate("ring", n)
    np.testing.assert_allclose(topology.weights[topology.weights > 0], 1 / 3)
    assert topology.consensus_rate == pytest.approx(1 / 3 + 2 / 3 * math.cos(2 * math.pi / n), abs=1e-12)


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5])
def test_hypercube_rho_matches_closed_form(d):
    n = 2**d
    edges = [(f"p{i}", f"p{i ^ (1 << k)}") for i in range(n) for k in range(d) if i < i ^ (1 << k)]
    peers = [PeerSpec(f"p{i}", f"tcp://127.0.0.1:{20000 + i}", f"tcp://127.0.0.1:{20000 + i}") for i in range(n)]
    topology = build_topology(f"hypercube{n}", peers, edges)
    assert topology.consensus_rate == pytest.approx(1 - 2 / (d + 1), abs=1e-12)


@pytest.mark.parametrize("n", [2, 5, 8])
def test_complete_graph_averages_in_one_round(n):
    topology = generate("complete", n)
    np.testing.assert_allclose(topology.weights, np.full((n, n), 1 / n), atol=1e-15)
    assert topology.consensus_rate == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("n", [3, 8, 20])
def test_star_rho_matches_closed_form(n):
    # Metropolis on a star: leaf-hub weight 1/n, leaves keep 1 - 1/n, so W = I - L/n with the
    # star Laplacian L (eigenvalues 0, 1, n): rho = max(|1 - 1/n|, |1 - n/n|) = 1 - 1/n.
    topology = generate("star", n)
    assert topology.consensus_rate == pytest.approx(1 - 1 / n, abs=1e-12)


@st.composite
def connected_graphs(draw):
    n = draw(st.integers(2, 12))
    # A random spanning tree keeps it connected; extra edges make it general.
    edges = {(draw(st.integers(0, i - 1)), i) for i in range(1, n)}
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    edges |= set(draw(st.lists(st.sampled_from(pairs), max_size=len(pairs))))
    adjacency = np.zeros((n, n), dtype=bool)
    for i, j in edges:
        adjacency[i, j] = adjacency[j, i] = True
    return adjacency


@settings(max_examples=200, deadline=None)
@given(connected_graphs(), st.sampled_from(["metropolis", "uniform"]),
       st.lists(st.floats(-1e3, 1e3), min_size=12, max_size=12))
def test_undirected_weights_are_doubly_stochastic_and_keep_the_mean(adjacency, kind, values):
    w = metropolis_hastings(adjacency) if kind == "metropolis" else uniform(adjacency)
    n = len(w)
    assert np.all(w >= -1e-15)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(w[~adjacency & ~np.eye(n, dtype=bool)] == 0)  # only neighbours get weight
    x = np.asarray(values[:n])
    assert (w @ x).mean() == pytest.approx(x.mean(), abs=1e-9)
    assert consensus_rate(w) <= 1 + 1e-12


def test_dump_and_parse_round_trip_keeps_graph_and_weights():
    for topology in [generate("torus", 9), generate("exponential", 8), generate("line", 4, mixing="uniform")]:
        again = parse_topology(dump_topology(topology))
        assert again.ids == topology.ids
        assert again.directed == topology.directed
        assert again.edges() == topology.edges()
        np.testing.assert_array_equal(again.weights, topology.weights)


PEERS = """
[[peers]]
id = "a"
endpoint = "tcp://127.0.0.1:21000"
[[peers]]
id = "b"
endpoint = "tcp://127.0.0.1:21001"
[[peers]]
id = "c"
endpoint = "tcp://127.0.0.1:21002"
"""


def test_explicit_weights_are_used_as_written():
    text = 'name = "explicit3"\nmixing = "explicit"\nedges = [["a", "b"], ["b", "c"]]\n' + PEERS + """
[weights]
a = { a = 0.75, b = 0.25 }
b = { a = 0.25, b = 0.5, c = 0.25 }
c = { b = 0.25, c = 0.75 }
"""
    topology = parse_topology(text)
    np.testing.assert_array_equal(topology.weights, [[0.75, 0.25, 0], [0.25, 0.5, 0.25], [0, 0.25, 0.75]])
    assert topology.mixing_row("b") == {"a": 0.25, "b": 0.5, "c": 0.25}
    again = parse_topology(dump_topology(topology))
    np.testing.assert_array_equal(again.weights, topology.weights)


@pytest.mark.parametrize(
    "top, tail, message",
    [
        ('edges = [["a", "x"]]', PEERS, "unknown peer 'x'; add it to [[peers]] or fix the edge"),
        ('edges = [["a", "a"], ["a", "b"], ["b", "c"]]', PEERS, "self-loop"),
        ('edges = [["a", "b"]]', PEERS, "not connected: c cannot be reached"),
        ('edges = [["a", "b"], ["b", "c"]]', PEERS.replace('"c"', '"b"'), "duplicate peer id 'b'"),
        ('edges = [["a", "b"], ["b", "c"]]', PEERS.replace("21002", "21001"), "share endpoint"),
        ('edges = [["a", "b"], ["b", "c"]]', PEERS.replace("21002", "021001"), "share endpoint"),
        ('edges = [["a", "b"], ["b", "c"]]', PEERS.replace("127.0.0.1:21002", "LocalHost:21001").replace(
            "127.0.0.1:21001", "localhost:21001"), "share endpoint"),
        ('edges = [["a", "b"], ["b", "c"]]', PEERS.replace("tcp://127.0.0.1:21002", "127.0.0.1:21002"),
         "write it as tcp://HOST:PORT"),
        ('edges = [["a", "b"], ["b", "c"]]', PEERS.replace("21002", "70000"), "use a port from 1 to 65535"),
        ('mixing = "explicit"\nedges = [["a", "b"], ["b", "c"]]',
         PEERS + '[weights]\na = { a = 1.5, b = -0.5 }\nb = { a = 0.5, b = 0.5 }\nc = { c = 1.0 }',
         "is negative; weights must be >= 0"),
        ('mixing = "explicit"\nedges = [["a", "b"], ["b", "c"]]',
         PEERS + '[weights]\na = { a = 0.5, b = 0.4 }\nb = { a = 0.5, b = 0.5 }\nc = { c = 1.0 }',
         "sums to 0.9, not 1; rescale the row"),
        ('mixing = "explicit"\nedges = [["a", "b"], ["b", "c"]]',
         PEERS + '[weights]\na = { a = 0.5, c = 0.5 }\nb = { b = 1.0 }\nc = { c = 1.0 }',
         "does not receive from 'c'; add the edge or drop the weight"),
        ('mixing = "explicit"\nedges = [["a", "b"], ["b", "c"]]', PEERS, "needs a [weights] table"),
        ('mixing = "fancy"\nedges = [["a", "b"], ["b", "c"]]', PEERS, "unknown mixing 'fancy'"),
        ('directed = true\nedges = [["a", "b"], ["b", "c"], ["c", "a"]]', PEERS,
         "Metropolis-Hastings weights need an undirected graph"),
        ('directed = true\nmixing = "uniform"\nedges = [["a", "b"], ["b", "c"]]', PEERS, "not strongly connected"),
        ('mixng = "uniform"\nedges = [["a", "b"], ["b", "c"]]', PEERS, "unknown key(s) mixng"),
        ('edges = [["a", "b"], ["b", "c"]', PEERS, "not valid TOML"),
        ("edges = []", "", "no peers; add [[peers]] tables"),
        # A trailing newline is no part of an id or an endpoint ("$" alone would have let it through).
        ('edges = [["a", "b"], ["b", "c"]]', PEERS.replace('"c"', '"c\\n"'), "peer id 'c\\n' is not usable"),
        ('edges = [["a", "b"], ["b", "c"]]', PEERS.replace('21002"', '21002\\n"'), "write it as tcp://HOST:PORT"),
        ('edges = [["a", "b"], ["b", "c"]]', PEERS.replace('"c"', '".."'), "beginning with a letter or a digit"),
        ('edges = [["a", "b"], ["b", "c"]]', PEERS.replace("tcp://127.0.0.1:21002", "tcp://*:21002"),
         "* means every interface"),
        ('edges = [["a", "b"], ["b", "c"]]', PEERS.replace("tcp://127.0.0.1:21002", "tcp://0.0.0.0:21002"),
         "0.0.0.0 means every interface"),
        ('edges = [["a", "b"], ["b", "c"]]', PEERS + 'bind = "tcp://0.0.0.0"', "has bind 'tcp://0.0.0.0'"),
        ('edges = [["a", ["b"]], ["b", "c"]]', PEERS, "must name exactly two peers by their ids"),
        ('mixing = "explicit"\nedges = [["a", "b"], ["b", "c"]]\nweights = 5', PEERS,
         "[weights] must be a table with one row per peer"),
        ('mixing = "explicit"\nedges = [["a", "b"], ["b", "c"]]',
         PEERS + '[weights]\na = { a = nan, b = 0.5 }\nb = { a = 0.5, b = 0.5 }\nc = { c = 1.0 }',
         "[weights].a.a = nan must be a finite number"),
        ('mixing = "explicit"\n[[schedule]]\nedges = [["a", "b"], ["b", "c"]]',
         PEERS + '[weights]\na = { a = 1.0 }\nb = { b = 1.0 }\nc = { c = 1.0 }',
         "a top-level [weights] table is given with a schedule"),
    ],
)
def test_invalid_topologies_name_the_problem_and_the_fix(top, tail, message):
    with pytest.raises(TopologyError) as error:
        parse_topology(top + "\n" + tail, where="bad.toml")
    assert message in str(error.value)
    assert str(error.value).startswith("bad.toml: ")


def test_names_beyond_ascii_survive_a_dump_and_a_load():
    topology = dataclasses.replace(generate("ring", 3), name="ring \U0001F600 \x7f")
    assert parse_topology(dump_topology(topology)).name == topology.name  # no surrogate pairs: TOML has none


def test_missing_file_says_where_to_look(tmp_path):
    with pytest.raises(TopologyError, match="does not exist; pass a file from topologies/"):
        load_topology(tmp_path / "nope.toml")


def test_directed_uniform_ring_is_doubly_stochastic():
    text = 'directed = true\nmixing = "uniform"\nedges = [["a", "b"], ["b", "c"], ["c", "a"]]\n' + PEERS
    topology = parse_topology(text)
    assert topology.out_neighbours("a") == ("b",)
    assert topology.in_neighbours("a") == ("c",)
    np.testing.assert_allclose(topology.weights, [[0.5, 0, 0.5], [0.5, 0.5, 0], [0, 0.5, 0.5]])
    assert topology.doubly_stochastic


def test_cli_generate_then_info(tmp_path, capsys):
    out = tmp_path / "t.toml"
    assert topology_cli(["generate", "torus", "--peers", "16", "--base-port", "31000", "-o", str(out)]) == 0
    assert load_topology(out).peer("p5").endpoint == "tcp://127.0.0.1:31005"
    assert topology_cli(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "rho           0.600000" in printed
    # ceil(log(1e-6) / log(0.6)) = 28 rounds
    assert "rounds to shrink disagreement 1e6-fold: 28" in printed
    assert topology_cli(["info", str(tmp_path / "missing.toml")]) == 2
