"""Multi-host runs without a swarm: topology files for clusters, ranks and world sizes from every
launcher's variables, restarts counted by a launcher, and run configuration files."""

from __future__ import annotations

import json
import re

import networkx as nx
import numpy as np
import pytest

from p2ptrain.topology import Topology, TopologyError, generate, load_topology
from p2ptrain.topology.__main__ import main as topology_main


def generated(tmp_path, *args) -> Topology:
    path = tmp_path / "generated.toml"
    assert topology_main(["generate", *args, "-o", str(path)]) == 0
    return load_topology(path)


def test_peers_are_numbered_host_by_host_with_ports_from_the_base_port_on_each(tmp_path):
    topology = generated(tmp_path, "ring", "--hosts", "10.0.0.1,10.0.0.2,node3", "--per-host", "2",
                         "--base-port", "26000")
    assert [spec.endpoint for spec in topology.peers] == [
        "tcp://10.0.0.1:26000", "tcp://10.0.0.1:26001", "tcp://10.0.0.2:26000", "tcp://10.0.0.2:26001",
        "tcp://node3:26000", "tcp://node3:26001"]
    # An address is bound as it is; a host name cannot be bound by ZeroMQ: every interface is.
    assert [spec.bind for spec in topology.peers][3:] == [
        "tcp://10.0.0.2:26001", "tcp://0.0.0.0:26000", "tcp://0.0.0.0:26001"]
    # The graph is the ring of six it would be on one host.
    np.testing.assert_array_equal(topology.weights, generate("ring", 6).weights)


def test_a_hosts_file_reads_as_scontrol_show_hostnames_prints(tmp_path):
    (tmp_path / "hosts").write_text("node01\nnode02\n\n# a comment\nnode03\n")
    topology = generated(tmp_path, "complete", "--hosts-file", str(tmp_path / "hosts"))
    assert [spec.endpoint for spec in topology.peers] == [
        "tcp://node01:25000", "tcp://node02:25000", "tcp://node03:25000"]
    assert topology.size == 3 and len(topology.edges()) == 3


def test_an_endpoint_template_names_each_peer_of_a_statefulset(tmp_path):
    topology = generated(tmp_path, "ring", "--peers", "4", "--endpoint-template", "tcp://p2p-{index}.p2p.svc:25000")
    assert [spec.endpoint for spec in topology.peers] == [f"tcp://p2p-{i}.p2p.svc:25000" for i in range(4)]
    assert {spec.bind for spec in topology.peers} == {"tcp://0.0.0.0:25000"}


@pytest.mark.parametrize("args, message", [
    (["--hosts", "a,b", "--peers", "3"], "2 hosts x 1 per host = 2 peers, but the topology has 3"),
    (["--hosts", "a,a", "--per-host", "2"], "host(s) a listed twice"),
    (["--peers", "4", "--per-host", "2"], "--per-host goes with --hosts"),
    (["--per-host", "2"], "how many peers?"),
    (["--peers", "2", "--endpoint-template", "tcp://p2p.svc:25000"], "use {index}"),
    (["--peers", "2", "--endpoint-template", "tcp://p2p-{rank}:25000"], "use {index}"),
    (["--peers", "2", "--endpoint-template", "p2p-{index}"], "write tcp://HOST:PORT"),
])
def test_placements_that_cannot_work_are_refused_with_the_fix(args, message, tmp_path, capsys):
    assert topology_main(["generate", "ring", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_hosts_file_is_refused_in_one_line(tmp_path, capsys):
    assert topology_main(["generate", "ring", "--hosts-file", str(tmp_path / "nope")]) == 2
    assert "cannot read it" in capsys.readouterr().err


def test_a_networkx_graph_becomes_a_topology_with_its_nodes_as_peers():
    graph = nx.petersen_graph()
    endpoints = [f"tcp://10.1.0.{i}:25000" for i in range(10)]
    topology = Topology.from_networkx(graph, endpoints, name="petersen")
    assert topology.ids == tuple(str(i) for i in range(10)) and topology.peer("3").endpoint == "tcp://10.1.0.3:25000"
    # Metropolis weights of a 3-regular graph: 1/4 on every edge and on the peer itself.
    expected = (nx.to_numpy_array(graph, nodelist=list(graph.nodes)) + np.eye(10)) / 4
    np.testing.assert_allclose(topology.weights, expected, rtol=0, atol=1e-15)
    # The Petersen graph's adjacency has eigenvalues 3, 1 and -2, so W = (A + I)/4 has 1, 1/2 and -1/4: rho = 1/2.
    assert topology.consensus_rate == pytest.approx(0.5, abs=1e-12)


def test_a_directed_networkx_graph_stays_directed_and_endpoints_may_be_given_by_node():
    graph = nx.DiGraph([("a", "b"), ("b", "c"), ("c", "a")])
    topology = Topology.from_networkx(graph, {n: f"tcp://127.0.0.1:{25000 + i}" for i, n in enumerate("abc")},
                                      mixing="uniform")
    assert topology.directed and topology.in_neighbours("b") == ("a",)


@pytest.mark.parametrize("graph, endpoints, message", [
    (nx.MultiGraph([(0, 1), (0, 1)]), ["tcp://h:1", "tcp://h:2"], "multigraph"),
    (nx.path_graph(3), ["tcp://h:1", "tcp://h:2"], "2 endpoints for a graph of 3 nodes"),
    (nx.path_graph(2), {0: "tcp://h:1"}, "no endpoint for node(s) 1"),
    ([(0, 1)], ["tcp://h:1", "tcp://h:2"], "takes a networkx graph"),
    (nx.Graph([(0, 1), (2, 3)]), [f"tcp://h:{i}" for i in range(1, 5)], "not connected"),
])
def test_networkx_graphs_that_cannot_be_topologies_are_refused(graph, endpoints, message):
    with pytest.raises(TopologyError, match=re.escape(message)):
        Topology.from_networkx(graph, endpoints)
