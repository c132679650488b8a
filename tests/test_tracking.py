"""Gradient tracking against its matrix form (DIGing), the centralized optimum, lost messages and checkpoints."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from p2ptrain.algorithms import Diverged
from p2ptrain.algorithms.tracking import SUM_PREFIX, X_PREFIX
from p2ptrain.config import ConfigError, PeerConfig
from p2ptrain.data import load_dataset
from p2ptrain.problems import centralized_optimum
from p2ptrain.replica import build_replica
from p2ptrain.results import relative_error
from p2ptrain.simulate import simulate
from p2ptrain.topology import generate

STEP = 0.01


def tracking_config(**overrides) -> PeerConfig:
    # Plain SGD with full-batch gradients (40 rows per peer): one step is exactly x - a y.
    options = dict(topology="-", algo="gradient-tracking", dataset="synthetic-lstsq", lr=STEP,
                   lr_schedule="constant", momentum=0.0, batch_size=40, local_steps=1, rounds=60)
    return PeerConfig(**(options | overrides)).validate()


def gradients(n_peers: int):
    """g(X): row i is the gradient of f_i(x) = 0.5 mean((A_i x - b_i)^2) at X[i]."""
    data = load_dataset("synthetic-lstsq", n_peers)
    blocks = [(data.x_train[rows], data.y_train[rows]) for rows in data.blocks]
    return lambda x: np.stack([a.T @ (a @ x[i] - b) / len(b) for i, (a, b) in enumerate(blocks)])


def diging(weights_at, n_peers: int, step: float, rounds: int) -> list[np.ndarray]:
    """DIGing on the whole graph in numpy: x(k+1) = W_k x(k) - a y(k); y(k+1) = W_k y(k) + g(x(k+1)) - g(x(k))."""
    grad = gradients(n_peers)
    x = np.zeros((n_peers, 20))
    y = grad(x)
    history = []
    for k in range(rounds):
        w = weights_at(k)
        new_x = w @ x - step * y
        y = w @ y + grad(new_x) - grad(x)
        x = new_x
        history.append(x)
    return history


def stacked(replicas, ids) -> np.ndarray:
    return np.stack([replicas[pid].model.x.detach().numpy() for pid in ids])


@pytest.mark.parametrize("kind, n", [("ring", 8), ("exponential", 8), ("star", 6)])
def test_peer_updates_equal_the_matrix_form_of_the_whole_graph(kind, n):
    topology = generate(kind, n)
    expected = diging(lambda k: topology.weights, n, STEP, 60)
    got = []
    simulate(tracking_config(), topology, lambda r, reps: got.append(stacked(reps, topology.ids)))
    assert len(got) == 60
    for round_, (mine, theirs) in enumerate(zip(got, expected)):
        assert np.abs(mine - theirs).max() <= 1e-10 * np.abs(theirs).max(), f"round {round_}"


def test_gradient_tracking_reaches_lstsq_of_the_stacked_data_with_a_constant_step():
    topology = generate("ring", 8)
    optimum = centralized_optimum("synthetic-lstsq", 8)
    errors = []

    def observe(round_, replicas):
        errors.append(max(relative_error(r.model.state_dict(), optimum) for r in replicas.values()))
        return errors[-1] <= 1e-6

    simulate(tracking_config(rounds=2000), topology, observe)
    assert errors[-1] <= 1e-6, f"still {errors[-1]:.2e} from lstsq after 2000 rounds"
    stacked_data = load_dataset("synthetic-lstsq", 8)
    expected, *_ = np.linalg.lstsq(stacked_data.x_train, stacked_data.y_train, rcond=None)
    np.testing.assert_allclose(optimum.numpy(), expected, rtol=1e-12)


def one_sided_losses(round_: int, sender: str, receiver: str) -> bool:
    # For 40 rounds p1's messages to p2 are lost (p2's to p1 get through), and every 7th round both
    # directions of p4-p5 fail; from round 100 on the network is perfect.
    if round_ >= 100:
        return False
    return (round_ < 40 and (sender, receiver) == ("p1", "p2")) or (
        round_ % 7 == 0 and {sender, receiver} == {"p4", "p5"})


def run_with_losses(topology, config, dropped):
    """Lockstep rounds in which the message sender -> receiver of round r is lost when dropped(r, sender, receiver)."""
    replicas = {pid: build_replica(config, topology, pid) for pid in topology.ids}
    for round_ in range(config.rounds):
        for r in replicas.values():
            r.train(round_)
        sent = {pid: r.algorithm.outgoing(round_) for pid, r in replicas.items()}
        for pid, r in replicas.items():
            r.algorithm.update(round_, {j: sent[j] for j in topology.in_neighbours(pid) if not dropped(round_, j, pid)})
    return replicas


def effective_matrix(topology, round_, dropped) -> np.ndarray:
    """W of one round with gossip's rule: the weight of a lost message goes to the receiver itself."""
    w = topology.weights.copy()
    for i, receiver in enumerate(topology.ids):
        for j, sender in enumerate(topology.ids):
            if i != j and w[i, j] and dropped(round_, sender, receiver):
                w[i, i] += w[i, j]
                w[i, j] = 0.0
    return w


def test_lost_messages_delay_tracking_but_do_not_move_its_fixed_point():
    topology = generate("ring", 8)
    optimum = centralized_optimum("synthetic-lstsq", 8).numpy()
    replicas = run_with_losses(topology, tracking_config(rounds=2500), one_sided_losses)
    error = np.abs(stacked(replicas, topology.ids) - optimum).max() / np.linalg.norm(optimum)
    assert error <= 1e-6
    # The negative control: y mixed directly (textbook DIGing) with the same losses and the same missing
    # rule changes sum_i y_i for good, and the swarm agrees on a wrong point.
    naive = diging(lambda k: effective_matrix(topology, k, one_sided_losses), 8, STEP, 2500)
    def naive_error(x):
        return np.linalg.norm(x[0] - optimum) / np.linalg.norm(optimum)

    assert np.linalg.norm(naive[-1] - naive[-1].mean(axis=0)) <= 1e-8  # agreed...
    assert naive_error(naive[-1]) > 1e-4  # ...on the wrong x
    assert naive_error(naive[-1]) == pytest.approx(naive_error(naive[-501]), rel=1e-3)  # and it stays there


def test_messages_carry_x_as_sent_and_the_running_sum_of_y():
    topology = generate("ring", 4)
    replica = build_replica(tracking_config(), topology, "p0")
    x0 = replica.model.x.detach().clone()
    replica.train(0)
    first = replica.algorithm.outgoing(0)
    assert set(first) == {X_PREFIX + "x", SUM_PREFIX + "x"}
    assert torch.equal(first[X_PREFIX + "x"], x0)  # the x the round started from, not the stepped one
    # Round 0: y(0) = g(x(0)), and the SGD step moved x by -a y(0).
    torch.testing.assert_close(replica.model.x.detach(), x0 - STEP * first[SUM_PREFIX + "x"], rtol=0, atol=1e-15)


def test_a_checkpointed_peer_resumes_exactly():
    topology = generate("ring", 4)
    config = tracking_config(rounds=40)
    whole = simulate(config, topology)

    replicas = lockstep_restored_at(config, topology, 17)
    for pid in topology.ids:
        assert torch.equal(replicas[pid].model.x.detach(), whole[pid]["x"])


def lockstep_restored_at(config: PeerConfig, topology, restore_round: int) -> dict:
    """The replicas after config.rounds lockstep rounds, every peer saved and restored (through bytes, as a
    checkpoint is) before ``restore_round``: a resume that is exact ends where simulate() does."""
    replicas = {pid: build_replica(config, topology, pid) for pid in topology.ids}
    for round_ in range(config.rounds):
        if round_ == restore_round:
            for pid in topology.ids:
                state = saved_and_loaded(replicas[pid])
                replicas[pid] = build_replica(config, topology, pid)
                restore(replicas[pid], state)
        for r in replicas.values():
            r.train(round_)
        sent = {pid: r.sent(round_) for pid, r in replicas.items()}
        for pid, r in replicas.items():
            r.algorithm.update(round_, {j: sent[j] for j in topology.in_neighbours(pid)})
    return replicas


def saved_and_loaded(replica) -> dict:
    buffer = io.BytesIO()
    torch.save({"model": replica.model.state_dict(), "trainer": replica.trainer.state_dict(),
                "algorithm": replica.algorithm.state_dict()}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def restore(replica, state: dict) -> None:
    replica.model.load_state_dict(state["model"])
    replica.trainer.load_state_dict(state["trainer"])
    replica.algorithm.load_state_dict(state["algorithm"])


def test_a_gossip_checkpoint_is_refused_with_the_fix():
    replica = build_replica(tracking_config(), generate("ring", 4), "p0")
    with pytest.raises(ValueError, match="resume with the same --algo"):
        replica.algorithm.load_state_dict({})


def test_gradient_tracking_refuses_weights_that_do_not_keep_the_mean_and_schedules():
    from p2ptrain.topology import load_topology
    from pathlib import Path

    directed = load_topology(Path(__file__).resolve().parent.parent / "topologies" / "exponential16-push.toml")
    with pytest.raises(ConfigError, match="not doubly stochastic.*--algo push-sum"):
        build_replica(tracking_config(), directed, "p0")
    with pytest.raises(ConfigError, match="use a static topology"):
        build_replica(tracking_config(), generate("one-peer-exponential", 4), "p0")
    with pytest.raises(ConfigError, match="--local-steps 1"):
        build_replica(tracking_config(local_steps=0), generate("ring", 4), "p0")


def test_divergence_stops_with_a_message_that_names_the_step():
    with pytest.raises(Diverged, match="step \\(--lr\\) is probably too large for gradient tracking"):
        simulate(tracking_config(lr=20.0, rounds=2000), generate("ring", 8))


@pytest.mark.asyncio
async def test_a_node_missing_a_neighbour_mixes_x_as_gossip_and_keeps_its_older_running_sum(tmp_path):
    from p2ptrain import wire
    from p2ptrain.memory import MemoryNetwork

    from .test_peer import RUN, make_node

    network = MemoryNetwork()
    node = make_node(tmp_path, generate("complete", 3), network, algo="gradient-tracking", lr=0.5)  # W = 1/3
    algorithm, x = node.algorithm, node.model.x

    def message(sender: str, round_: int, x_value: float, y_sum: float) -> list:
        return wire.encode(kind="params", sender=sender, run_id=RUN, round=round_, fingerprint=node.fingerprint,
                           tensors={X_PREFIX + "x": torch.full((2,), x_value, dtype=torch.float64),
                                    SUM_PREFIX + "x": torch.full((2,), y_sum, dtype=torch.float64)},
                           topology=node.topology_digest(round_))

    def one_sgd_step(gradient: float) -> None:  # what the optimizer does, with the hooks around it
        algorithm.begin_local(0)
        x.grad = torch.full((2,), gradient, dtype=torch.float64)
        algorithm.before_step()
        x.data = x.data - 0.5 * x.grad
        algorithm.end_local(0, None)

    def close(tensor, value: float) -> None:
        torch.testing.assert_close(tensor.detach(), torch.full((2,), value, dtype=torch.float64), rtol=0, atol=1e-15)

    one_sgd_step(1.0)  # c = 0: y(0) = g = 1, x: 0 -> -0.5, S = 1
    network.deliver("p0", message("p1", 0, 3.0, 2.0), sender="p1")  # p2's message is lost
    await node.exchange(0)
    assert node.last["missing"] == ["p2"]
    close(x, (2 / 3) * 0.0 + 3.0 / 3 - 0.5)  # p2's weight on p0's own x(0), plus the step
    close(algorithm.correction["x"], (2.0 - 1.0) / 3 + (0.0 - 1.0) / 3)  # p2's sum: still its first, 0

    one_sgd_step(1.0)  # y(1) = g + c = 1, S = 2
    network.deliver("p0", message("p2", 1, 6.0, 5.0), sender="p2")
    network.deliver("p0", message("p1", 1, 3.0, 4.0), sender="p1")
    await node.exchange(1)
    close(x, (0.5 + 3.0 + 6.0) / 3 - 0.5)
    close(algorithm.correction["x"], (4.0 - 2.0) / 3 + (5.0 - 2.0) / 3)  # exact again: p2's newest sum
