"""CHOCO gossip: the compressors, the update against its matrix form, the swarm's mean, lost messages,
checkpoints, the wire, and a real swarm against the lockstep simulation."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from p2ptrain import wire
from p2ptrain.algorithms import Choco
from p2ptrain.compressors import Int8, RandomK, TopK, index_dtype, random_indices, sample_size
from p2ptrain.config import ConfigError, PeerConfig
from p2ptrain.memory import MemoryNetwork
from p2ptrain.node import Node
from p2ptrain.replica import Replica, agreement, build_algorithm, build_replica, check_run
from p2ptrain.simulate import simulate
from p2ptrain.topology import PeerSpec, Topology, build_topology, generate

from .processes import ROOT

COMPRESSORS = ["identity", "int8", "int8:16", "top-k:0.1", "random-k:0.1"]


# ---- the compressors -----------------------------------------------------------------------------


def test_int8_keeps_every_value_within_half_a_step_of_its_scale():
    torch.manual_seed(0)
    sizes = {"a": 300, "b": 37}
    difference = torch.cat([torch.randn(300) * 5, torch.randn(37) * 0.01])
    for chunk in (None, 64):
        compressor = Int8(sizes, torch.float32, chunk)
        message, decoded = compressor.compress(difference, "p0", 0)
        assert message["q"].dtype == torch.int8 and message["q"].abs().max() <= 127
        spans = [300, 37] if chunk is None else [64] * 4 + [44] + [37]
        assert compressor.spans.tolist() == spans and message["scale"].shape == (len(spans),)
        steps = torch.cat([torch.full((n,), float(s)) for n, s in zip(spans, message["scale"])])
        assert bool(((decoded - difference).abs() <= steps / 2 * (1 + 1e-6)).all())
        assert torch.equal(compressor.decode(message, "p0", 0), decoded)
    # An all-zero tensor has scale 0 and decodes to zeros, not NaN.
    message, decoded = Int8({"z": 5}, torch.float64).compress(torch.zeros(5, dtype=torch.float64), "p0", 0)
    assert message["scale"].tolist() == [0.0] and decoded.tolist() == [0.0] * 5
    # A tensor of no values (an empty buffer) is a span of its own, whose scale is 0.
    compressor = Int8({"a": 2, "empty": 0, "b": 1}, torch.float64)
    message, decoded = compressor.compress(torch.tensor([2.54, -1.27, 0.5], dtype=torch.float64), "p0", 0)
    assert message["scale"].tolist() == [torch.tensor(0.02, dtype=torch.float32).item(), 0.0,
                                         torch.tensor(0.5 / 127, dtype=torch.float32).item()]
    assert torch.equal(compressor.decode(message, "p0", 0), decoded) and decoded.numel() == 3


def test_top_k_sends_the_largest_entries_with_indices_in_the_smallest_dtype():
    difference = torch.tensor([0.1, -9.0, 0.2, 3.0, -0.3, 0.0, 7.0, 0.05], dtype=torch.float64)
    compressor = TopK({"x": 8}, torch.float64, 0.4)  # k = floor(3.2) = 3
    message, decoded = compressor.compress(difference, "p0", 0)
    assert message["index"].dtype == torch.uint8 and message["index"].tolist() == [1, 3, 6]
    assert decoded.tolist() == [0, -9.0, 0, 3.0, 0, 0, 7.0, 0]
    assert [index_dtype(n) for n in (256, 257, 32768, 32769, 2**31)] == [torch.uint8, torch.int16, torch.int16,
                                                                        torch.int32, torch.int32]
    assert sample_size(0.01, 4810) == 48 and sample_size(1e-9, 10) == 1 and sample_size(1.0, 10) == 10
    with pytest.raises(ValueError, match="outside"):
        compressor.decode({"index": torch.tensor([1, 3, 200], dtype=torch.uint8), "value": message["value"]}, "p1", 0)
    for index in ([1, 1, 6], [6, 3, 1]):  # PROTOCOL.md 10.2: k distinct indices in ascending order
        with pytest.raises(ValueError, match="not distinct and ascending"):
            compressor.decode({"index": torch.tensor(index, dtype=torch.uint8), "value": message["value"]}, "p1", 0)


def splitmix64_indices(seed: int, sender: str, round_: int, count: int, total: int) -> list[int]:
    """PROTOCOL.md 10.3 in plain Python integers: the oracle for the vectorized generator."""
    mask = 2**64 - 1
    state = int.from_bytes(hashlib.blake2b(f"{seed}:{sender}:{round_}".encode(), digest_size=8).digest(), "little")
    out = []
    for m in range(count):
        z = (state + (m + 1) * 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append((z ^ (z >> 31)) % total)
    return out


def test_random_k_indices_follow_the_protocol_and_both_ends_agree_without_sending_them():
    assert random_indices(7, "p3", 12, 50, 4810).tolist() == splitmix64_indices(7, "p3", 12, 50, 4810)
    vector = re.search(r"```random-k-vector\n(.*?)```", (ROOT / "PROTOCOL.md").read_text(), re.S).group(1)
    fields = dict(line.split(": ", 1) for line in vector.strip().splitlines())
    assert random_indices(int(fields["seed"]), fields["sender"], int(fields["round"]), int(fields["k"]),
                          int(fields["N"])).tolist() == json.loads(fields["indices"])
    compressor = RandomK({"w": 90, "b": 10}, torch.float32, 0.1, seed=7)
    difference = torch.randn(100)
    message, decoded = compressor.compress(difference, "p3", 12)
    assert list(message) == ["value"] and message["value"].shape == (10,)
    kept = decoded != 0
    assert torch.equal(decoded[kept], difference[kept])
    assert torch.equal(compressor.decode(message, "p3", 12), decoded)
    # Another sender or round draws other indices.
    assert random_indices(7, "p4", 12, 50, 4810).tolist() != random_indices(7, "p3", 12, 50, 4810).tolist()


# ---- the update against the matrix form ------------------------------------------------------------


def numpy_q(kind: str, d: np.ndarray, sender: str, round_: int, seed: int) -> np.ndarray:
    """Q written again in numpy, for one flat float64 vector."""
    if kind == "identity":
        return d.copy()
    if kind == "int8":
        scale = np.float32(np.abs(d).max() / 127)
        return np.clip(np.round(d / np.float64(scale)), -127, 127) * np.float64(scale)
    k = sample_size(0.1, d.size)
    out = np.zeros_like(d)
    if kind == "top-k":
        chosen = np.argsort(-np.abs(d), kind="stable")[:k]
    else:
        chosen = np.array(splitmix64_indices(seed, sender, round_, k, d.size))
    out[chosen] = d[chosen]
    return out


@pytest.mark.parametrize("compressor", ["identity", "int8", "top-k:0.1", "random-k:0.1"])
@pytest.mark.parametrize("kind, n", [("ring", 8), ("torus", 16), ("exponential", 16)])
def test_every_peers_update_equals_the_matrix_form_of_the_whole_graph(compressor, kind, n):
    # X <- X - G (the local steps), H <- H + Q(X - H) row by row (H <- X in full rounds),
    # X <- X + gamma (W - I) H: numpy, for the whole graph at once.
    topology, gamma, refresh, rounds, size = generate(kind, n), 0.4, 5, 12, 30
    rng = np.random.default_rng(3)
    X = rng.normal(size=(n, size))
    steps = rng.normal(scale=0.1, size=(rounds, n, size))
    params = {pid: {"x": torch.nn.Parameter(torch.tensor(X[i]))} for i, pid in enumerate(topology.ids)}
    peers = {pid: Choco(pid, topology.mixing_row(pid), params[pid], compressor, gamma, refresh, seed=5)
             for pid in topology.ids}
    H, W = np.zeros_like(X), topology.weights
    for r in range(rounds):
        X = X - steps[r]
        for i, pid in enumerate(topology.ids):
            params[pid]["x"].data = params[pid]["x"].data - torch.tensor(steps[r, i])
        if compressor == "identity" or r % refresh == 0:
            H = X.copy()
        else:
            H = H + np.stack([numpy_q(compressor.split(":")[0], X[i] - H[i], pid, r, 5)
                              for i, pid in enumerate(topology.ids)])
        X = X + gamma * (W - np.eye(n)) @ H
        sent = {pid: peer.outgoing(r) for pid, peer in peers.items()}
        for pid, peer in peers.items():
            peer.update(r, {j: sent[j] for j in topology.in_neighbours(pid)})
        got = np.stack([params[pid]["x"].detach().numpy() for pid in topology.ids])
        np.testing.assert_allclose(got, X, rtol=0, atol=1e-12)
        for i, pid in enumerate(topology.ids):
            np.testing.assert_allclose(peers[pid].own_copy["x"].numpy(), H[i], rtol=0, atol=1e-12)


def test_the_identity_with_gamma_1_is_plain_gossip_bit_for_bit():
    topology = generate("ring", 8)
    config = PeerConfig(topology="-", rounds=25, local_steps=2, eval_every=1000).validate()
    gossip = simulate(config, topology)
    choco = simulate(config.replace(algo="choco", compressor="identity", choco_gamma=1.0).validate(), topology)
    for peer_id, state in gossip.items():
        for name, tensor in state.items():
            assert torch.equal(choco[peer_id][name], tensor), f"{peer_id} {name}"
    other = simulate(config.replace(algo="choco", compressor="int8").validate(), topology)
    assert not torch.equal(other["p0"]["0.weight"], gossip["p0"]["0.weight"])  # the comparison can fail


@pytest.mark.parametrize("compressor", COMPRESSORS + ["int8:1000"])
@pytest.mark.parametrize("kind", ["ring", "exponential"])
def test_the_swarm_mean_is_invariant_under_every_compressor(compressor, kind):
    # The lockstep simulation's loop (simulate.py), with the mean of x read before and after each mix.
    topology = generate(kind, 16)
    config = PeerConfig(topology="-", dataset="synthetic-lstsq", rounds=30, local_steps=1, lr=0.05,
                        lr_schedule="constant", momentum=0.0, algo="choco", compressor=compressor,
                        choco_gamma=0.3, choco_refresh_every=7).validate()
    replicas = {pid: build_replica(config, topology, pid) for pid in topology.ids}

    def mean() -> np.ndarray:
        return np.mean([r.model.x.detach().numpy() for r in replicas.values()], axis=0)

    moved = 0.0
    for round_ in range(config.rounds):
        for replica in replicas.values():
            replica.train(round_)
        before = mean()
        sent = {pid: r.sent(round_) for pid, r in replicas.items()}
        for pid, replica in replicas.items():
            replica.algorithm.update(round_, {j: sent[j] for j in topology.in_neighbours(pid)})
        np.testing.assert_allclose(mean(), before, rtol=0, atol=1e-12)
        moved = max(moved, float(np.abs(np.stack([r.model.x.detach().numpy() for r in replicas.values()])
                                        - before).max()))
    assert moved > 1e-3  # the peers did move: the mix was not a no-op


# ---- lost messages, over the wire ----------------------------------------------------------------


class Vector(torch.nn.Module):
    def __init__(self, values):
        super().__init__()
        self.x = torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))


def choco_swarm(tmp_path: Path, topology: Topology, network: MemoryNetwork, **options) -> dict[str, Node]:
    """A started Node per peer on ``network``, each holding its own vector."""
    options = {"run_id": "unit", "recv_timeout": 1.5, "startup_timeout": 4.0, "rounds": 12, "eval_every": 1000,
               "log_every": 1000, "algo": "choco", "choco_refresh_every": 4, "compressor": "int8",
               "choco_gamma": 0.5} | options
    nodes = {}
    for index, peer_id in enumerate(topology.ids):
        config = PeerConfig(topology=topology.name, peer=peer_id, out=str(tmp_path / peer_id), **options).validate()
        model = Vector([math.sin(index + k) * (k + 1) for k in range(6)])
        replica = Replica(peer_id, None, model, None, build_algorithm(config, topology, peer_id, model),
                          torch.device("cpu"), config.lr_at, config.local_steps, agreement(config, None))
        nodes[peer_id] = Node(config, topology, replica, network.transport(peer_id, topology.out_neighbours(peer_id)),
                              clock=network.clock, wall_clock=network.clock)
        nodes[peer_id].start()
    return nodes


async def run_rounds(nodes: dict[str, Node], rounds: range) -> None:
    for round_ in rounds:
        for index, node in enumerate(nodes.values()):
            # A local step of its own, so the public copies keep having something to follow.
            node.model.x.data = node.model.x.data + 0.1 * math.cos(round_ + index)
        await asyncio.gather(*(node.exchange(round_) for node in nodes.values()))


@pytest.mark.asyncio
async def test_a_lost_difference_leaves_the_sender_out_until_its_next_full_round(tmp_path):
    topology, network = generate("ring", 4), MemoryNetwork()
    nodes = choco_swarm(tmp_path, topology, network)
    await run_rounds(nodes, range(0, 5))
    network.full = {"p1"}  # round 5: nothing reaches p1
    await run_rounds(nodes, range(5, 6))
    network.full = set()
    p1 = nodes["p1"].algorithm
    assert nodes["p1"].last["heard"] == [] and nodes["p0"].stats.send_dropped == 1
    # p1's copies of p0 and p2 missed a difference; their own copies moved on.
    assert not torch.equal(p1.copies["p0"]["x"], nodes["p0"].algorithm.own_copy["x"])
    for round_ in range(6, 12):
        before = nodes["p1"].model.x.detach().clone()
        own_before = p1.own_copy["x"].clone()
        await run_rounds(nodes, range(round_, round_ + 1))
        line = nodes["p1"].last
        assert line["heard"] == ["p0", "p2"]  # the messages arrive...
        if round_ < 8:
            # ...but p1 holds no copy their differences apply to: it mixes as if they were missing,
            # its whole weight on itself, so x moves only by its own copy's update.
            assert line["choco_unsynced"] == ["p0", "p2"]
            expected = (before + 0.1 * math.cos(round_ + 1) - p1.own_copy["x"]) + p1.own_copy["x"]
            assert torch.allclose(nodes["p1"].model.x.detach(), expected, rtol=0, atol=1e-15)
            assert not torch.equal(p1.own_copy["x"], own_before)
        else:
            # Round 8 is a full round (every 4th): the copies are the senders' own again, bit for bit.
            assert line["choco_unsynced"] == []
            for j in ("p0", "p2"):
                assert torch.equal(p1.copies[j]["x"], nodes[j].algorithm.own_copy["x"])
    # The guarantee, on every peer: a neighbour is mixed only through a copy equal to its own.
    for node in nodes.values():
        for j in set(node.last["heard"]) - set(node.last["choco_unsynced"]):
            assert torch.equal(node.algorithm.copies[j]["x"], nodes[j].algorithm.own_copy["x"])


@pytest.mark.asyncio
@pytest.mark.parametrize("compressor", COMPRESSORS)
async def test_a_swarm_resumed_from_its_checkpoints_ends_exactly_where_an_uninterrupted_one_does(
        tmp_path, compressor):
    topology = generate("ring", 4)
    options = {"compressor": compressor, "checkpoint_every": 5, "rounds": 12}
    whole = choco_swarm(tmp_path / "whole", topology, MemoryNetwork(), **options)
    await run_rounds(whole, range(12))
    crashed = choco_swarm(tmp_path / "again", topology, MemoryNetwork(), **options)
    await run_rounds(crashed, range(8))  # every peer dies after round 7; the checkpoints are round 5's
    resumed = choco_swarm(tmp_path / "again", topology, MemoryNetwork(), resume=True, **options)
    assert {node.start_round for node in resumed.values()} == {5}
    await run_rounds(resumed, range(5, 12))
    for peer_id, node in whole.items():
        assert torch.equal(resumed[peer_id].model.x.detach(), node.model.x.detach()), peer_id
        assert resumed[peer_id].last["choco_unsynced"] == []
    # The comparison can fail: without the public copies the resumed peers would end elsewhere.
    fresh = choco_swarm(tmp_path / "lost", topology, MemoryNetwork(), **options)
    await run_rounds(fresh, range(5))
    for node in fresh.values():
        node.algorithm.own_copy = {n: torch.zeros_like(t) for n, t in node.algorithm.own_copy.items()}
    if compressor != "identity":
        await run_rounds(fresh, range(5, 12))
        assert any(not torch.equal(fresh[p].model.x.detach(), whole[p].model.x.detach()) for p in whole)


@pytest.mark.parametrize("refresh, layouts", [(0, ["base", "q", "scale"]), (1, ["copy"])])
def test_without_full_rounds_or_with_only_full_rounds_a_run_has_one_layout_and_no_fragment_field(refresh, layouts):
    topology = generate("ring", 4)
    params = {pid: {"x": torch.nn.Parameter(torch.tensor([1.0 + i, -2.0, 0.5 * i]))}
              for i, pid in enumerate(topology.ids)}
    peers = {pid: Choco(pid, topology.mixing_row(pid), params[pid], "int8", 1.0, refresh) for pid in topology.ids}
    assert [list(layout) for layout in peers["p0"].message_layouts()] == [layouts]
    assert all(peers["p0"].fragment_at(r) is None for r in range(5))
    for round_ in range(5):
        sent = {pid: peer.outgoing(round_) for pid, peer in peers.items()}
        assert all(list(message) == layouts for message in sent.values())
        for pid, peer in peers.items():
            peer.update(round_, {j: sent[j] for j in topology.in_neighbours(pid)})
    # Copies that start at zero on both ends agree from the first difference on, with no full round at all.
    for pid, peer in peers.items():
        assert peer.metrics()["choco_unsynced"] == []
        for j in topology.in_neighbours(pid):
            assert torch.equal(peer.copies[j]["x"], peers[j].own_copy["x"])


def test_a_checkpoint_of_other_choco_settings_is_refused():
    topology = generate("ring", 4)
    model = Vector([1.0, 2.0])
    config = PeerConfig(topology="-", algo="choco", compressor="int8").validate()
    state = build_algorithm(config, topology, "p0", model).state_dict()
    other = build_algorithm(config.replace(compressor="top-k:0.5"), topology, "p0", model)
    with pytest.raises(ValueError, match="same --compressor"):
        other.load_state_dict(state)


def test_messages_of_each_layout_pass_the_receivers_contract():
    from p2ptrain.node import message_contract

    topology = generate("ring", 4)
    config = PeerConfig(topology="-", algo="choco", compressor="top-k:0.5", choco_gamma=0.5,
                        choco_refresh_every=3).validate()
    sender, receiver = (build_algorithm(config, topology, p, Vector([1.0, -2.0, 3.0])) for p in ("p1", "p0"))
    fp = wire.fingerprint(wire.specs_of(receiver.state_tensors()), agreement(config, None))
    contract = message_contract("r", fp, frozenset({"p1"}), receiver, 1, wire.specs_of(receiver.state_tensors()))
    for round_ in range(4):
        frames = wire.encode(kind="params", sender="p1", run_id="r", round=round_, fingerprint=fp,
                             tensors=sender.outgoing(round_), fragment=sender.fragment_at(round_))
        message = wire.decode(frames, contract)
        assert list(message.tensors) == (["copy"] if round_ % 3 == 0 else ["base", "index", "value"])
    assert [s.dtype for s in contract.fragments[1]] == ["int64", "uint8", "float64"]
    with pytest.raises(wire.FragmentMismatch):  # a compressed message in a full round
        wire.decode(wire.encode(kind="params", sender="p1", run_id="r", round=3, fingerprint=fp,
                                tensors=sender.outgoing(1), fragment=1), contract)


def test_a_gossip_peer_told_a_choco_message_says_the_algorithms_differ():
    gossip = (wire.TensorSpec("weight", "float32", (1, 2)), wire.TensorSpec("bias", "float32", (1,)))
    contract = wire.Contract("r", "e" * 16, frozenset({"p1"}), gossip)
    for tensors in ({"copy": torch.zeros(3)}, {"base": torch.zeros(1, dtype=torch.int64), "value": torch.zeros(1)}):
        frames = wire.encode(kind="params", sender="p1", run_id="r", round=1, fingerprint="f" * 16, tensors=tensors)
        with pytest.raises(wire.FingerprintMismatch, match="'p1' sends CHOCO tensors and this peer gossip ones"):
            wire.decode(frames, contract)


# ---- options ---------------------------------------------------------------------------------------


def lopsided() -> Topology:
    """A directed graph whose uniform weights are row- but not column-stochastic."""
    peers = [PeerSpec(p, f"tcp://127.0.0.1:{26000 + i}", f"tcp://127.0.0.1:{26000 + i}") for i, p in enumerate("abc")]
    topology = build_topology("lopsided", peers, [("a", "b"), ("b", "c"), ("c", "a"), ("a", "c")], directed=True,
                              mixing="uniform")
    assert not topology.doubly_stochastic
    return topology


def test_choco_refuses_what_it_cannot_do():
    config = PeerConfig(topology="-", algo="choco")
    for changes, message in [({"compressor": "int4"}, "not understood"), ({"compressor": "top-k:0"}, "in \\(0, 1\\]"),
                             ({"compressor": "int8:0"}, "not understood"), ({"choco_gamma": 1.5}, "in \\(0, 1\\]"),
                             ({"mode": "async"}, "--mode sync with choco"), ({"fragments": 2}, "--algo gossip"),
                             ({"choco_refresh_every": -1}, "0 \\(never\\)"),
                             ({"compressor": "top-k:0.01"}, "pass --choco-gamma, e.g. 0.1")]:
        with pytest.raises(ConfigError, match=message):
            config.replace(**changes).validate()
    with pytest.raises(ConfigError, match="static graph"):
        check_run(config.validate(), generate("one-peer-exponential", 8))
    with pytest.raises(ConfigError, match="doubly stochastic"):
        check_run(config.validate(), lopsided())
    with pytest.raises(ConfigError, match="compressed differences"):
        check_run(config.replace(attack="p1:scale:-1").validate(), generate("ring", 4))
    seeded = agreement(config.replace(compressor="random-k:0.01", choco_gamma=0.01, seed=3).validate(), None)
    assert seeded["compressor_seed"] == 3 and seeded["choco_gamma"] == 0.01
    assert agreement(config.validate(), None)["choco_gamma"] == 1.0  # int8's default step


def test_the_experiment_runner_runs_choco_where_it_can_and_says_why_not_elsewhere():
    from p2ptrain.experiment import Run, unsupported

    options = PeerConfig(topology="-", compressor="top-k:0.01", choco_gamma=0.1).validate()
    assert unsupported(Run("ring16", "choco", "dirichlet:0.1", 0), generate("ring", 16), options) is None
    reason = unsupported(Run("one-peer-exponential16", "choco", "iid", 0), generate("one-peer-exponential", 16),
                         options)
    assert "CHOCO needs a static graph" in reason
    assert "needs a CHOCO step" in unsupported(Run("ring16", "choco", "iid", 0), generate("ring", 16),
                                               options.replace(choco_gamma=0.0))


def test_int8_messages_of_ring16_digits_are_at_most_027_of_plain_gossips():
    # The frames each peer sends, header included, averaged over a run of 200 rounds (two full ones).
    topology = generate("ring", 16)
    sizes = {}
    for algo, compressor in [("gossip", "int8"), ("choco", "int8"), ("choco", "int8:256")]:
        config = PeerConfig(topology="-", algo=algo, compressor=compressor).validate()
        replica = build_replica(config, topology, "p3")
        layouts = replica.algorithm.message_layouts()
        per_round = [wire.frame_bytes(wire.encode(
            kind="params", sender="p3", run_id="ring16-choco-s0", round=r, fingerprint="f" * 16,
            tensors=layouts[replica.algorithm.fragment_at(r) or 0], fragment=replica.algorithm.fragment_at(r)))
            for r in range(200)]
        sizes[algo, compressor] = np.mean(per_round)
    assert sizes["choco", "int8"] / sizes["gossip", "int8"] <= 0.27
    assert sizes["choco", "int8:256"] / sizes["gossip", "int8"] <= 0.27


# ---- a real swarm ----------------------------------------------------------------------------------


@pytest.mark.swarm
def test_a_swarm_of_processes_running_choco_equals_the_simulation(topology_file, tmp_path):
    from p2ptrain.storage import read_json_lines
    from p2ptrain.topology import load_topology

    from .processes import run_launcher

    out = tmp_path / "run"
    result = run_launcher([str(topology_file("ring", 4)), "--algo", "choco", "--compressor", "int8:64",
                           "--choco-refresh-every", "7", "--rounds", "20", "--eval-every", "10", "--out", str(out),
                           "--timeout", "100"], timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    config = PeerConfig.from_file(out / "peer-config.json")
    assert config.algo == "choco" and config.compressor == "int8:64"
    for peer_id, state in simulate(config, load_topology(out / "topology.toml")).items():
        got = torch.load(out / "peers" / peer_id / "model.pt", weights_only=True)
        for name, tensor in state.items():
            assert torch.equal(got[name], tensor), f"{peer_id} {name}"
    records = read_json_lines(out / "peers" / "p1" / "metrics.jsonl")
    assert all(r["heard"] == ["p0", "p2"] and not r["choco_unsynced"] and not r["rejected"] for r in records)
    assert records[1]["bytes_sent"] < records[0]["bytes_sent"] / 3  # a compressed round against the full round 0
