"""Gradient tracking and push-sum by real peer processes over TCP loopback, against the lockstep simulation."""

from __future__ import annotations

import json

import pytest
import torch

from p2ptrain.config import PeerConfig
from p2ptrain.ports import free_port_block
from p2ptrain.simulate import simulate
from p2ptrain.storage import read_json_lines
from p2ptrain.topology import PeerSpec, build_topology, dump_topology, load_topology

from .processes import run_launcher

pytestmark = pytest.mark.swarm


def launched_and_simulated(out, args: list[str]):
    result = run_launcher(args + ["--out", str(out), "--timeout", "100"], timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    config = PeerConfig.from_dict(json.loads((out / "peers" / "p0" / "config.json").read_text())["config"])
    return json.loads((out / "summary.json").read_text()), simulate(config, load_topology(out / "topology.toml"))


def assert_same_models(out, expected) -> None:
    for peer_id, state in expected.items():
        got = torch.load(out / "peers" / peer_id / "model.pt", weights_only=True)
        for name, tensor in state.items():
            torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-12)


def test_a_gradient_tracking_swarm_ends_where_the_simulation_does(topology_file, tmp_path):
    out = tmp_path / "run"
    summary, expected = launched_and_simulated(out, [
        str(topology_file("ring", 4)), "--algo", "gradient-tracking", "--dataset", "synthetic-lstsq", "--lr", "0.01",
        "--lr-schedule", "constant", "--momentum", "0", "--batch-size", "40", "--rounds", "80"])
    assert summary["algo"] == "gradient-tracking"
    assert_same_models(out, expected)
    records = read_json_lines(out / "peers" / "p1" / "metrics.jsonl")
    assert len(records) == 80 and all(r["tracker_norm"] > 0 for r in records)
    # x and the running sum of y, both float64 of the model's 20 values: two tensors where gossip sends one.
    assert records[0]["bytes_sent"] // 2 > 2 * 8 * 20
    state = torch.load(out / "peers" / "p1" / "algorithm.pt", weights_only=True)
    assert set(state["neighbour_sums"]) == {"p0", "p2"}


def test_a_push_sum_swarm_on_a_directed_graph_ends_where_the_simulation_does(tmp_path):
    base = free_port_block(4)
    peers = [PeerSpec(f"p{i}", f"tcp://127.0.0.1:{base + i}", f"tcp://127.0.0.1:{base + i}") for i in range(4)]
    # p0 sends to two peers, the others to one: column stochastic, rows summing to 2/3, 7/6, 7/6 and 1.
    topology = build_topology("directed4", peers, [("p0", "p1"), ("p1", "p2"), ("p2", "p3"), ("p3", "p0"),
                                                   ("p0", "p2")], directed=True, mixing="push")
    assert not topology.doubly_stochastic
    path = tmp_path / "directed4.toml"
    path.write_text(dump_topology(topology))
    out = tmp_path / "run"
    summary, expected = launched_and_simulated(out, [str(path), "--algo", "push-sum", "--rounds", "40"])
    assert_same_models(out, expected)
    for peer in summary["peers"].values():
        assert peer["test_accuracy"] >= 0.8
    # The last round's messages were all taken: no mass in flight, so the weights sum to the peer count.
    weights = [torch.load(out / "peers" / f"p{i}" / "algorithm.pt", weights_only=True)["p"].item() for i in range(4)]
    assert sum(weights) == pytest.approx(4.0, abs=1e-12)
    assert min(weights) != pytest.approx(max(weights), abs=1e-3)  # not doubly stochastic: p differs by peer
