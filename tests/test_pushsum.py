"""Push-sum against its matrix form, the exact mean on a column-stochastic graph, lost mass, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from p2ptrain.algorithms import PushSum
from p2ptrain.algorithms.pushsum import SUM_PREFIX, WEIGHT
from p2ptrain.config import ConfigError, PeerConfig
from p2ptrain.data import load_dataset
from p2ptrain.replica import build_replica, push_share
from p2ptrain.simulate import simulate
from p2ptrain.topology import PeerSpec, build_topology, generate, load_topology

from .test_tracking import lockstep_restored_at, one_sided_losses

DIRECTED = load_topology(Path(__file__).resolve().parent.parent / "topologies" / "exponential16-push.toml")


def averaging_peers(topology, values: np.ndarray) -> dict[str, PushSum]:
    """A push-sum peer per node of the graph, each holding one row of ``values`` (in their dtype)."""
    return {pid: PushSum(topology.in_neighbours(pid), len(topology.out_neighbours(pid)), push_share(topology, pid),
                         {"v": torch.nn.Parameter(torch.tensor(values[i]))})
            for i, pid in enumerate(topology.ids)}


def average(topology, peers, rounds: int, dropped=lambda *_: False, observe=None) -> np.ndarray:
    """Lockstep push-sum with no local steps; the message sender -> receiver of round r is lost when dropped."""
    for round_ in range(rounds):
        for peer in peers.values():
            peer.begin_local(round_)
            peer.end_local(round_, None)
        sent = {pid: peer.outgoing(round_) for pid, peer in peers.items()}
        for pid, peer in peers.items():
            peer.update(round_, {j: sent[j] for j in topology.in_neighbours(pid) if not dropped(round_, j, pid)})
        if observe is not None:
            observe(round_, peers, sent)
    return np.stack([peers[pid].parameters["v"].detach().numpy() for pid in topology.ids])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_half_or_single_precision_model_keeps_its_error_to_its_own_rounding_however_long_it_runs(dtype):
    # The running sums are float64: kept in the model's dtype, each share sent was rounded to the step of a sum
    # hundreds of shares large, an error growing with the rounds (float32: 5e-5 after 1,000 rounds).
    values = np.random.default_rng(4).normal(size=(16, 50)).astype(dtype)
    z = average(DIRECTED, averaging_peers(DIRECTED, values), 1000)
    assert z.dtype == dtype
    mean = values.astype(np.float64).mean(axis=0)
    assert np.abs(z - mean).max() <= np.finfo(dtype).eps * np.abs(mean).max()  # the rounding of z itself


def test_the_shipped_directed_graph_is_column_but_not_doubly_stochastic():
    w = DIRECTED.weights
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-15)
    assert np.abs(w.sum(axis=1) - 1).max() >= 0.05
    assert DIRECTED.directed and DIRECTED.size == 16 and not DIRECTED.doubly_stochastic


def test_peer_updates_equal_the_matrix_form_of_the_whole_graph():
    values = np.random.default_rng(0).normal(size=(16, 5))
    w = DIRECTED.weights
    x, p, history = values.copy(), np.ones(16), []
    for _ in range(30):
        x, p = w @ x, w @ p
        history.append(x / p[:, None])
    got = []
    average(DIRECTED, averaging_peers(DIRECTED, values), 30,
            observe=lambda r, peers, sent: got.append(np.stack([peers[j].parameters["v"].detach().numpy()
                                                                for j in DIRECTED.ids])))
    for round_, (mine, theirs) in enumerate(zip(got, history)):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-13, err_msg=f"round {round_}")


def test_push_sum_finds_the_exact_mean_where_plain_mixing_does_not():
    values = np.random.default_rng(1).normal(size=(16, 4))
    mean = values.mean(axis=0)
    z = average(DIRECTED, averaging_peers(DIRECTED, values), 200)
    assert np.abs(z - mean).max() <= 1e-10
    # Plain mixing with the same weights, x <- W x without p, keeps the sum but not the mean: rows of W
    # do not sum to 1, so the peers never agree. Rescaled by each receiver so its row sums to 1, they
    # agree, on a mean weighted by the graph.
    w = DIRECTED.weights
    plain, rescaled = values.copy(), values.copy()
    for _ in range(200):
        plain, rescaled = w @ plain, (w / w.sum(axis=1, keepdims=True)) @ rescaled
    assert np.abs(plain - mean).max() >= 1e-3
    assert np.abs(rescaled - rescaled.mean(axis=0)).max() <= 1e-10  # consensus...
    assert np.abs(rescaled - mean).max() >= 1e-3  # ...on the wrong value


def mass(peers, sent, topology) -> tuple[np.ndarray, float]:
    """x and p held by the peers plus what is in flight (running sums not yet taken by each receiver)."""
    x = sum(peer.x["v"].numpy() for peer in peers.values())
    p = sum(peer.p.item() for peer in peers.values())
    for receiver in topology.ids:
        for sender in topology.in_neighbours(receiver):
            x = x + sent[sender][SUM_PREFIX + "v"].numpy() - peers[receiver].taken_x[sender]["v"].numpy()
            p += sent[sender][WEIGHT].item() - peers[receiver].taken_p[sender].item()
    return x, p


def test_lost_messages_delay_mass_but_lose_none_and_the_mean_stays_exact():
    values = np.random.default_rng(2).normal(size=(16, 3))
    mean = values.mean(axis=0)
    conserved = []
    z = average(DIRECTED, averaging_peers(DIRECTED, values), 300, one_sided_losses,
                lambda r, peers, sent: conserved.append(mass(peers, sent, DIRECTED)))
    for x, p in conserved:  # every round, lossy ones included
        np.testing.assert_allclose(x, values.sum(axis=0), rtol=0, atol=1e-12)
        assert p == pytest.approx(16, abs=1e-12)
    assert np.abs(z - mean).max() <= 1e-10
    # The negative control: messages carrying only the round's share, so a lost one's mass is gone.
    w = DIRECTED.weights
    x, p = values.copy(), np.ones(16)
    for round_ in range(300):
        delivered = np.array([[i == j or not one_sided_losses(round_, DIRECTED.ids[j], DIRECTED.ids[i])
                               for j in range(16)] for i in range(16)])
        x, p = (w * delivered) @ x, (w * delivered) @ p
    naive = x / p[:, None]
    assert np.abs(naive - naive.mean(axis=0)).max() <= 1e-10
    assert np.abs(naive - mean).max() >= 1e-4


def sgp_config(**overrides) -> PeerConfig:
    options = dict(topology="-", algo="push-sum", dataset="synthetic-lstsq", lr=0.01, lr_schedule="constant",
                   momentum=0.0, batch_size=40, local_steps=1, rounds=40)
    return PeerConfig(**(options | overrides)).validate()


def test_push_sum_sgd_equals_stochastic_gradient_push_in_matrix_form():
    # SGP (Assran et al. 2019): x <- W (x - a g(z)), p <- W p, z = x / p, here with full-batch gradients.
    data = load_dataset("synthetic-lstsq", 16)
    blocks = [(data.x_train[rows], data.y_train[rows]) for rows in data.blocks]
    w = DIRECTED.weights
    x, p, history = np.zeros((16, 20)), np.ones(16), []
    for _ in range(40):
        z = x / p[:, None]
        g = np.stack([a.T @ (a @ z[i] - b) / len(b) for i, (a, b) in enumerate(blocks)])
        x, p = w @ (x - 0.01 * g), w @ p
        history.append(x / p[:, None])
    got = []
    simulate(sgp_config(), DIRECTED,
             lambda r, reps: got.append(np.stack([reps[j].model.x.detach().numpy() for j in DIRECTED.ids])))
    for round_, (mine, theirs) in enumerate(zip(got, history)):
        assert np.abs(mine - theirs).max() <= 1e-10 * np.abs(theirs).max(), f"round {round_}"


def test_a_checkpointed_peer_resumes_exactly():
    config = sgp_config(dataset="digits", batch_size=16, lr=0.1, momentum=0.9, rounds=12, local_steps=2)
    topology = DIRECTED
    whole = simulate(config, topology)
    replicas = lockstep_restored_at(config, topology, 5)
    for pid in topology.ids:
        for name, tensor in whole[pid].items():
            assert torch.equal(replicas[pid].model.state_dict()[name], tensor), (pid, name)


def test_gossip_refuses_weights_that_are_not_doubly_stochastic_and_names_push_sum():
    with pytest.raises(ConfigError, match="not doubly stochastic.*--algo push-sum"):
        build_replica(PeerConfig(topology="-").validate(), DIRECTED, "p0")


def test_push_sum_refuses_weights_it_cannot_use():
    peers = [PeerSpec(f"p{i}", f"inproc://p{i}", f"inproc://p{i}") for i in range(3)]
    # Max-degree weights on a directed graph that is not regular: p0 gives away 2/3 and keeps 2/3.
    uneven = build_topology("uneven", peers, [("p0", "p1"), ("p1", "p2"), ("p2", "p0"), ("p0", "p2")],
                            directed=True, mixing="uniform")
    with pytest.raises(ConfigError, match='column-stochastic.*mixing = "push"'):
        build_replica(sgp_config(), uneven, "p0")
    # Doubly stochastic, but p0 sends p1 and p2 different shares: one message cannot carry both.
    circulant = {"p0": {"p0": 0.5, "p1": 0.3, "p2": 0.2}, "p1": {"p0": 0.2, "p1": 0.5, "p2": 0.3},
                 "p2": {"p0": 0.3, "p1": 0.2, "p2": 0.5}}
    unequal = build_topology("unequal", peers, [("p0", "p1"), ("p1", "p2"), ("p0", "p2")], mixing="explicit",
                             explicit_weights=circulant)
    with pytest.raises(ConfigError, match="p0 gives its out-neighbours different weights"):
        build_replica(sgp_config(), unequal, "p0")
    with pytest.raises(ConfigError, match="use a static topology"):
        build_replica(sgp_config(), generate("one-peer-exponential", 4, mixing="push"), "p0")


def test_a_peer_restored_from_an_older_checkpoint_keeps_the_mass_balance():
    values = np.random.default_rng(3).normal(size=(16, 3))
    peers = averaging_peers(DIRECTED, values)
    saved = {}

    def observe(round_, peers, sent):
        if round_ == 20:  # p3 writes a checkpoint...
            saved.update(state=saved_and_loaded_state(peers["p3"]), z=peers["p3"].parameters["v"].detach().clone())
        if round_ == 30:  # ...and, ten rounds later, is killed and comes back from it
            peers["p3"].parameters["v"].data = saved["z"].clone()
            peers["p3"].load_state_dict(saved["state"])
        if round_ == 31:  # its neighbours take back the mass it sent twice: their z is held meanwhile...
            held = [pid for pid, peer in peers.items() if peer.metrics().get("z_held")]
            assert held
            for pid in held:  # ...and a checkpoint written now, then resumed from, still keeps the balance
                z_now = peers[pid].parameters["v"].detach().clone()
                state = saved_and_loaded_state(peers[pid])
                peers[pid].parameters["v"].data = z_now
                peers[pid].load_state_dict(state)
                assert peers[pid].metrics().get("z_held")

    z = average(DIRECTED, peers, 300, observe=observe)
    assert np.abs(z - values.mean(axis=0)).max() <= 1e-10


def saved_and_loaded_state(peer) -> dict:
    import io

    buffer = io.BytesIO()
    torch.save(peer.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.asyncio
async def test_a_node_missing_a_message_takes_its_mass_with_the_next_one_and_drops_the_late_one(tmp_path):
    from p2ptrain import wire
    from p2ptrain.memory import MemoryNetwork

    from .test_peer import RUN, make_node

    peers = [PeerSpec(f"p{i}", f"inproc://p{i}", f"inproc://p{i}") for i in range(3)]
    # p0 receives from p1 and p2 and sends to p1 only: it keeps half of its mass and sends half.
    topology = build_topology("directed3", peers, [("p0", "p1"), ("p1", "p2"), ("p2", "p0"), ("p1", "p0")],
                              directed=True, mixing="push")
    network = MemoryNetwork()
    node = make_node(tmp_path, topology, network, algo="push-sum", local_steps=0, value=2.0)

    def sums(sender: str, round_: int, x: float, p: float) -> list:
        return wire.encode(kind="params", sender=sender, run_id=RUN, round=round_, fingerprint=node.fingerprint,
                           tensors={SUM_PREFIX + "x": torch.full((2,), x, dtype=torch.float64),
                                    WEIGHT: torch.tensor([p], dtype=torch.float64)},
                           topology=node.topology_digest(round_))

    node.algorithm.end_local(0, None)
    network.deliver("p0", sums("p1", 0, 1.0, 0.25), sender="p1")  # p2's message of round 0 is lost
    await node.exchange(0)
    assert node.last["missing"] == ["p2"] and node.last["wait_seconds"] == 4.0  # the startup deadline
    assert node.algorithm.p.item() == 0.5 + 0.25  # kept half of 1, plus p1's
    assert x_value(node) == 2.0 / 2 + 1.0

    node.algorithm.end_local(1, None)
    network.deliver("p0", sums("p2", 0, 9.0, 9.0), sender="p2")  # round 0's, too late: stale, dropped
    network.deliver("p0", sums("p2", 1, 3.0, 1.0), sender="p2")  # its sums of rounds 0 and 1
    network.deliver("p0", sums("p1", 1, 1.5, 0.5), sender="p1")
    await node.exchange(1)
    assert node.last["missing"] == [] and node.last["stale_dropped"] == 1 and node.last["wait_seconds"] == 0
    assert node.algorithm.p.item() == 0.75 / 2 + (0.5 - 0.25) + 1.0
    assert x_value(node) == 2.0 / 2 + (1.5 - 1.0) + 3.0
    torch.testing.assert_close(node.model.x.detach(), torch.full((2,), 4.5 / 1.625, dtype=torch.float64),
                               rtol=0, atol=1e-15)


def x_value(node) -> float:
    (value,) = set(node.algorithm.x["x"].tolist())
    return value
