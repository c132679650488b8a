"""The Python API and task plugins in real swarms: separate processes over TCP, checked against the simulation."""

from __future__ import annotations

import json

import pytest
import torch
import zmq

import p2ptrain
from p2ptrain import wire
from p2ptrain.config import ConfigError, PeerConfig
from p2ptrain.ports import free_port_block
from p2ptrain.simulate import simulate
from p2ptrain.storage import read_json_lines
from p2ptrain.topology import generate, load_topology

from .processes import ROOT, LoggedProcess, run_launcher
from .together import exchange_together

pytestmark = pytest.mark.swarm
PLUGIN = f"{ROOT / 'tests' / 'plugin_tasks.py'}:batchnorm_adam"


def assert_models_equal(out, expected: dict[str, dict[str, torch.Tensor]]) -> None:
    """Every peer's parameters and buffers (BatchNorm statistics, step counters) equal the oracle's."""
    for peer_id, state in expected.items():
        got = torch.load(out / peer_id / "model.pt", weights_only=True)
        assert set(got) == set(state)
        for name, tensor in state.items():
            assert torch.equal(got[name], tensor), f"{peer_id} {name}"


def test_a_launched_swarm_of_a_plugin_task_with_batchnorm_and_adam_equals_the_simulation(topology_file, tmp_path):
    out = tmp_path / "run"
    result = run_launcher([str(topology_file("ring", 4)), "--task", PLUGIN, "--rounds", "30", "--local-steps", "2",
                           "--eval-every", "10", "--out", str(out), "--timeout", "100"], timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    config = PeerConfig.from_file(out / "peer-config.json")
    assert (config.lr, config.lr_schedule) == (0.01, "constant")  # the task's defaults
    assert_models_equal(out / "peers", simulate(config, load_topology(out / "topology.toml")))
    summary = json.loads((out / "summary.json").read_text())
    assert all(p["test_accuracy"] > 0.8 for p in summary["peers"].values())
    assert "batchnorm-adam" in result.stdout


@pytest.mark.parametrize("algo, kind, peers", [("gossip", "ring", 4), ("admm", "complete", 3),
                                               ("gradient-tracking", "ring", 3), ("push-sum", "exponential", 4),
                                               ("choco", "ring", 4)])
def test_training_scripts_using_the_python_api_end_where_the_simulation_does(topology_file, tmp_path, algo, kind,
                                                                             peers):
    path = topology_file(kind, peers)
    rounds, local_steps = 12, 3
    scripts = [LoggedProcess(["python3", "-m", "tests.api_peer", str(path), str(tmp_path / f"p{rank}"), str(rounds),
                              str(local_steps), algo], env={"RANK": str(rank)}) for rank in range(peers)]
    try:
        for script in scripts:
            assert script.finish(timeout=90) == 0, script.log()
    finally:
        for script in scripts:
            script.kill()
    config = PeerConfig(topology="-", task=PLUGIN, algo=algo, admm_penalty=0.5 if algo == "admm" else 0.0,
                        rounds=rounds, local_steps=local_steps, lr=0.01, lr_schedule="constant").validate()
    assert_models_equal(tmp_path, simulate(config, load_topology(path)))
    for rank in range(peers):
        records = read_json_lines(tmp_path / f"p{rank}" / "metrics.jsonl")
        assert [r["round"] for r in records] == list(range(rounds))
        assert all(not r["missing"] for r in records)
        assert json.loads((tmp_path / f"p{rank}" / "result.json").read_text())["status"] == "completed"


def test_an_async_api_peer_left_behind_jumps_to_its_neighbours_round(tmp_path):
    # PROTOCOL.md section 7: a peer more than max_staleness rounds behind its neighbours continues from
    # their round, under the API as on the command line; p1 is played by two sockets of this test.
    topology = generate("complete", 2, base_port=free_port_block(2))
    context = zmq.Context()
    p1_inbox = context.socket(zmq.PULL)
    p1_inbox.bind(topology.peer("p1").bind)
    p1_outbox = context.socket(zmq.PUSH)
    p1_outbox.connect(topology.peer("p0").endpoint)
    peer = p2ptrain.Peer(topology, torch.nn.Linear(2, 1), peer="p0", mode="async", max_staleness=2, insecure=True,
                         out=str(tmp_path / "p0"), run_id="async", recv_timeout=20)
    try:
        node = peer.node
        p1_outbox.send_multipart(wire.encode(kind="params", sender="p1", run_id="async", round=9,
                                             fingerprint=node.fingerprint, tensors=node.algorithm.outgoing(9),
                                             topology=node.topology_digest(9)))
        peer.exchange()  # round 0, which waits until p1 was heard once
        assert node.last["heard"] == ["p1"] and peer.round == 9 and node.rounds_completed == 1
        assert p1_inbox.poll(20_000) and wire.decode_header(p1_inbox.recv_multipart()[0])["round"] == 0
    finally:
        peer.close()
        context.destroy(linger=0)


def test_without_an_optimizer_exchange_runs_the_algorithms_round_or_says_it_needs_the_optimizer(tmp_path):
    # Push-sum's round is in end_local (the shares it sends): called by hand, exchange() runs it too. On two
    # peers with push weights each keeps half and sends half, so one exchange leaves both at the mean.
    topology = generate("complete", 2, base_port=free_port_block(2), mixing="push")
    models = {peer_id: torch.nn.Linear(1, 1, bias=False) for peer_id in topology.ids}
    for value, model in zip((0.0, 2.0), models.values()):
        torch.nn.init.constant_(model.weight, value)
    peers = {peer_id: p2ptrain.Peer(topology, model, peer=peer_id, algo="push-sum", insecure=True,
                                    out=str(tmp_path / peer_id), run_id="manual", recv_timeout=20)
             for peer_id, model in models.items()}
    try:
        exchange_together(peers.values())
        assert [model.weight.item() for model in models.values()] == [1.0, 1.0]
    finally:
        for peer in peers.values():
            peer.close()
    # Gradient tracking adds its correction before every optimizer step: by hand there would be none.
    tracking = p2ptrain.Peer(generate("complete", 2, base_port=free_port_block(2)), torch.nn.Linear(1, 1),
                             peer="p0", algo="gradient-tracking", insecure=True, out=str(tmp_path / "t"))
    try:
        with pytest.raises(ConfigError, match="hand the Peer your optimizer"):
            tracking.exchange()
        tracking.attach(torch.optim.SGD(tracking.model.parameters(), lr=0.1))
        with pytest.raises(RuntimeError, match="an optimizer is attached"):
            tracking.exchange()
    finally:
        tracking.close()
