"""One lying peer (--attack) against mean and robust gossip, through real sockets and the lockstep oracle."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from p2ptrain.algorithms import Diverged
from p2ptrain.config import PeerConfig
from p2ptrain.inprocess import local_endpoints, run_in_process
from p2ptrain.replica import build_replica
from p2ptrain.simulate import simulate
from p2ptrain.storage import read_json_lines
from p2ptrain.topology import generate

ATTACKER = "p3"
CONFIG = PeerConfig(topology="-", dataset="digits", rounds=100, run_id="byz", eval_every=50,
                    attack=f"{ATTACKER}:scale:-10").validate()


def honest_accuracies(config: PeerConfig, topology, states: dict) -> list[float]:
    """Test accuracy of every honest peer's final model."""
    replica = build_replica(config, topology, topology.ids[0])  # any replica: the test split is shared
    accuracies = []
    for peer_id, state in states.items():
        if peer_id != ATTACKER:
            replica.model.load_state_dict(state)
            accuracies.append(replica.evaluate()["test_accuracy"])
    return accuracies


@functools.cache
def no_attack_accuracy(kind: str) -> float:
    """The worst peer's accuracy on ``kind``8 when nobody lies."""
    topology = generate(kind, 8)
    config = dataclasses.replace(CONFIG, attack="")
    return min(honest_accuracies(config, topology, simulate(config, topology)))


@pytest.mark.parametrize("kind", ["ring", "exponential"])
def test_mean_gossip_is_dragged_away_by_one_peer_sending_minus_ten_times_its_parameters(kind):
    topology = generate(kind, 8)
    try:
        worst = min(honest_accuracies(CONFIG, topology, simulate(CONFIG, topology)))
    except Diverged:
        worst = 0.0  # the honest parameters blew up to NaN: as collapsed as it gets
    assert no_attack_accuracy(kind) >= 0.9
    assert worst <= 0.5


@pytest.mark.swarm
@pytest.mark.asyncio
@pytest.mark.parametrize("kind, aggregator", [("ring", "clipped"), ("exponential", "clipped"),
                                             ("exponential", "trimmed-mean")])
async def test_robust_gossip_over_real_sockets_keeps_honest_peers_near_the_no_attack_accuracy(
        kind, aggregator, tmp_path):
    topology = local_endpoints(generate(kind, 8), f"byz-{kind}-{aggregator}", "inproc", tmp_path)
    config = dataclasses.replace(CONFIG, aggregator=aggregator, run_id=f"byz-{aggregator}")
    codes = await run_in_process(topology, config, tmp_path / "peers")
    assert codes == {pid: 0 for pid in topology.ids}
    # The peers, attacker included, did over sockets exactly what the lockstep oracle does.
    expected = simulate(config, topology)
    for peer_id, state in expected.items():
        got = torch.load(tmp_path / "peers" / peer_id / "model.pt", weights_only=True)
        assert all(torch.equal(got[name], tensor) for name, tensor in state.items()), peer_id
    assert min(honest_accuracies(config, topology, expected)) >= no_attack_accuracy(kind) - 0.02
    if aggregator == "clipped":
        # The attacker's neighbours clipped it in every round after the first few.
        neighbour = next(j for j in topology.out_neighbours(ATTACKER))
        records = read_json_lines(tmp_path / "peers" / neighbour / "metrics.jsonl")
        assert sum(ATTACKER in r["clipped"] for r in records) >= 90
