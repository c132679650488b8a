#!/usr/bin/env python3
"""The figures of docs/algorithms.md for gradient tracking and push-sum, printed as markdown tables.

1. synthetic-lstsq (heterogeneous blocks, one per peer) on ring8 with a constant step: rounds until
   every peer is within --target of numpy's lstsq of the stacked data, for gradient tracking,
   constant-step gossip (and where it settles) and ADMM.
2. Pure averaging on topologies/exponential16-push.toml (column stochastic, not doubly stochastic):
   push-sum's largest distance of any z_i to the true initial mean, against plain mixing x <- W x
   with the same weights and with rows rescaled to sum to 1.
3. Push-sum SGD on digits over the same graph: test accuracy of every peer.
4. Lost messages: for 40 rounds p1's messages to p2 are lost, and every 7th of the first 100 rounds
   p4's and p5's to each other; then none. Where each method ends, against the textbook form
   (y mixed directly; push-sum messages carrying only the round's share) under the same losses.

Everything runs in the lockstep simulation (the same replicas and algorithm code as the peers; a real
synchronous swarm with no lost message computes the same iterates, tests/test_swarm.py).

    python scripts/exact_methods.py [--steps 0.005,0.01] [--max-rounds 3000] [--digits-rounds 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from p2ptrain.algorithms import PushSum
from p2ptrain.config import PeerConfig
from p2ptrain.data import load_dataset
from p2ptrain.problems import centralized_optimum
from p2ptrain.replica import admm_penalty, build_replica, push_share, resolve_config, resolve_task
from p2ptrain.results import relative_error
from p2ptrain.simulate import simulate
from p2ptrain.topology import generate, load_topology

DIRECTED = Path(__file__).resolve().parent.parent / "topologies" / "exponential16-push.toml"


def errors_per_round(config: PeerConfig, topology, target: float) -> list[float]:
    """The largest relative error of any peer to x* after each round, stopping once below ``target``."""
    optimum = centralized_optimum(config.dataset, topology.size)
    errors: list[float] = []

    def observe(round_: int, replicas) -> bool:
        errors.append(max(relative_error(r.model.state_dict(), optimum) for r in replicas.values()))
        return errors[-1] <= target or not np.isfinite(errors[-1])

    simulate(config, topology, observe)
    return errors


def lstsq_table(steps: list[float], max_rounds: int, target: float) -> None:
    ring = generate("ring", 8)
    print(f"### synthetic-lstsq on ring8: rounds until every peer is within {target:g} of lstsq\n")
    print("| method | step (constant) | rounds to target | largest error at the end | at 1/2 the rounds |")
    print("|---|---|---|---|---|")
    for algo in ("gradient-tracking", "gossip"):
        for step in steps:
            # Plain SGD on full-batch gradients (40 rows per peer), one step per round.
            config = PeerConfig(topology="-", algo=algo, dataset="synthetic-lstsq", lr=step, lr_schedule="constant",
                                momentum=0.0, batch_size=40, local_steps=1, rounds=max_rounds).validate()
            errors = errors_per_round(config, ring, target)
            reached = len(errors) if errors[-1] <= target else "-"
            print(f"| {algo} | {step:g} | {reached} | {errors[-1]:.2e} | {errors[len(errors) // 2 - 1]:.2e} |")
    config = resolve_config({"topology": "-", "algo": "admm", "dataset": "synthetic-lstsq", "rounds": max_rounds})
    errors = errors_per_round(config, ring, target)
    reached = len(errors) if errors[-1] <= target else "-"
    print(f"| admm (exact local solves, c = {admm_penalty(config, resolve_task(config)):g}) | - | {reached} | "
          f"{errors[-1]:.2e} | {errors[len(errors) // 2 - 1]:.2e} |\n")


def averaging_table(rounds: int) -> None:
    topology = load_topology(DIRECTED)
    values = np.random.default_rng(0).normal(size=(topology.size, 10))
    mean = values.mean(axis=0)
    peers = {pid: PushSum(topology.in_neighbours(pid), len(topology.out_neighbours(pid)), push_share(topology, pid),
                          {"v": torch.nn.Parameter(torch.tensor(values[i]))}) for i, pid in enumerate(topology.ids)}
    reached = None
    for round_ in range(rounds):
        for peer in peers.values():
            peer.begin_local(round_)
            peer.end_local(round_, None)
        sent = {pid: peer.outgoing(round_) for pid, peer in peers.items()}
        for pid, peer in peers.items():
            peer.update(round_, {j: sent[j] for j in topology.in_neighbours(pid)})
        gap = max(float(np.abs(peer.parameters["v"].detach().numpy() - mean).max()) for peer in peers.values())
        if reached is None and gap <= 1e-10:
            reached = round_ + 1
    w = topology.weights
    plain, rescaled = values.copy(), values.copy()
    for _ in range(rounds):
        plain, rescaled = w @ plain, (w / w.sum(axis=1, keepdims=True)) @ rescaled
    print(f"### Averaging on {topology.name} (16 peers x 10 values, N(0, 1)), {rounds} rounds\n")
    print("| method | largest distance of a peer to the true mean | rounds to 1e-10 |")
    print("|---|---|---|")
    print(f"| push-sum, z = x / p | {gap:.1e} | {reached or '-'} |")
    print(f"| plain mixing x <- W x, same W | {np.abs(plain - mean).max():.3f} | - |")
    print(f"| rows of W rescaled to sum to 1 (agree: spread {np.ptp(rescaled, axis=0).max():.0e}) | "
          f"{np.abs(rescaled - mean).max():.3f} | - |\n")


def digits_table(rounds: int) -> None:
    topology = load_topology(DIRECTED)
    config = resolve_config({"topology": "-", "algo": "push-sum", "dataset": "digits", "rounds": rounds})
    accuracy: dict[str, float] = {}

    def observe(round_: int, replicas) -> None:
        if round_ == rounds - 1:
            accuracy.update({pid: r.evaluate()["test_accuracy"] for pid, r in replicas.items()})

    simulate(config, topology, observe)
    values = sorted(accuracy.values())
    print(f"### Push-sum SGD on digits over {topology.name}, {rounds} rounds (lr {config.lr:g}, "
          f"momentum {config.momentum:g}, {config.local_steps} local step per round, iid shards)\n")
    print("| peers | lowest test accuracy | median | highest |")
    print("|---|---|---|---|")
    print(f"| {len(values)} | {values[0]:.4f} | {np.median(values):.4f} | {values[-1]:.4f} |\n")


def one_sided_losses(round_: int, sender: str, receiver: str) -> bool:
    if round_ >= 100:
        return False
    return (round_ < 40 and (sender, receiver) == ("p1", "p2")) or (
        round_ % 7 == 0 and {sender, receiver} == {"p4", "p5"})


def delivered(topology, round_: int) -> np.ndarray:
    """D[i, j] True unless the message j -> i of this round is lost (the diagonal is always True)."""
    ids = topology.ids
    return np.array([[i == j or not one_sided_losses(round_, ids[j], ids[i]) for j in range(len(ids))]
                     for i in range(len(ids))])


def lockstep_with_losses(config: PeerConfig, topology, rounds: int) -> dict:
    replicas = {pid: build_replica(config, topology, pid) for pid in topology.ids}
    for round_ in range(rounds):
        for replica in replicas.values():
            replica.train(round_)
        sent = {pid: r.sent(round_) for pid, r in replicas.items()}
        for pid, replica in replicas.items():
            replica.algorithm.update(round_, {j: sent[j] for j in topology.in_neighbours(pid)
                                              if not one_sided_losses(round_, j, pid)})
    return replicas


def losses_table(rounds: int) -> None:
    ring = generate("ring", 8)
    config = PeerConfig(topology="-", algo="gradient-tracking", dataset="synthetic-lstsq", lr=0.01,
                        lr_schedule="constant", momentum=0.0, batch_size=40, local_steps=1, rounds=rounds).validate()
    optimum = centralized_optimum("synthetic-lstsq", 8)
    replicas = lockstep_with_losses(config, ring, rounds)
    tracked = max(relative_error(r.model.state_dict(), optimum) for r in replicas.values())
    # Textbook DIGing with gossip's missing rule (a lost message's weight to the receiver).
    data = load_dataset("synthetic-lstsq", 8)
    blocks = [(data.x_train[rows], data.y_train[rows]) for rows in data.blocks]

    def grad(x):
        return np.stack([a.T @ (a @ x[i] - b) / len(b) for i, (a, b) in enumerate(blocks)])

    x = np.zeros((8, data.n_features))
    y = grad(x)
    for round_ in range(rounds):
        w = ring.weights * delivered(ring, round_)
        w[np.diag_indices(8)] += 1 - w.sum(axis=1)
        new_x = w @ x - 0.01 * y
        y, x = w @ y + grad(new_x) - grad(x), new_x
    naive = float(np.max(np.linalg.norm(x - optimum.numpy(), axis=1)) / np.linalg.norm(optimum.numpy()))

    directed = load_topology(DIRECTED)
    values = np.random.default_rng(2).normal(size=(directed.size, 3))
    mean = values.mean(axis=0)
    peers = {pid: PushSum(directed.in_neighbours(pid), len(directed.out_neighbours(pid)), push_share(directed, pid),
                          {"v": torch.nn.Parameter(torch.tensor(values[i]))}) for i, pid in enumerate(directed.ids)}
    for round_ in range(rounds):
        for peer in peers.values():
            peer.end_local(round_, None)
        sent = {pid: peer.outgoing(round_) for pid, peer in peers.items()}
        for pid, peer in peers.items():
            peer.update(round_, {j: sent[j] for j in directed.in_neighbours(pid) if not one_sided_losses(round_, j, pid)})
    pushed = max(float(np.abs(peer.parameters["v"].detach().numpy() - mean).max()) for peer in peers.values())
    xs, ps = values.copy(), np.ones(directed.size)
    for round_ in range(rounds):
        w = directed.weights * delivered(directed, round_)
        xs, ps = w @ xs, w @ ps
    per_round = float(np.abs(xs / ps[:, None] - mean).max())
    print(f"### Lost messages, then none: where each method is after {rounds} rounds\n")
    print("| method | running sums (as built) | textbook form, same losses |")
    print("|---|---|---|")
    print(f"| gradient tracking, synthetic-lstsq on ring8: largest error to x* | {tracked:.1e} | {naive:.1e} |")
    print(f"| push-sum averaging on exponential16-push: largest distance to the mean | {pushed:.1e} | {per_round:.1e} |\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="0.005,0.01", help="constant steps for tracking and gossip "
                        "(default: %(default)s; above about 0.015 tracking diverges on this problem)")
    parser.add_argument("--max-rounds", type=int, default=3000, help="give up after this many (default: %(default)s)")
    parser.add_argument("--target", type=float, default=1e-6, help="relative error to reach (default: %(default)s)")
    parser.add_argument("--averaging-rounds", type=int, default=300, help="(default: %(default)s)")
    parser.add_argument("--digits-rounds", type=int, default=200, help="(default: %(default)s)")
    parser.add_argument("--loss-rounds", type=int, default=2500, help="(default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lstsq_table([float(s) for s in args.steps.split(",")], args.max_rounds, args.target)
    averaging_table(args.averaging_rounds)
    digits_table(args.digits_rounds)
    losses_table(args.loss_rounds)


if __name__ == "__main__":
    main()
