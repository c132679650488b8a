#!/usr/bin/env python3
"""CHOCO step sweep: final accuracy against gamma, per compressor, on one graph.

Runs the lockstep simulation (the same replicas and CHOCO code as the peers,
without sockets; a real synchronous swarm with no lost message ends with the
same models) and prints a markdown table: a row per compressor and gamma,
with the worst and mean test accuracy over the peers after --rounds rounds
and the bytes of one message, averaged over the rounds (a full round every
--choco-refresh-every), beside plain gossip's.

    python scripts/choco_gamma_sweep.py [--graph ring16] [--compressors top-k:0.01,random-k:0.01]
                                        [--gammas 1,0.3,0.1,0.03,0.01] [--rounds 200] [--local-steps 5]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from p2ptrain import wire
from p2ptrain.config import ConfigError, PeerConfig
from p2ptrain.replica import build_replica
from p2ptrain.simulate import simulate
from p2ptrain.topology import TopologyError, generate_named


def message_bytes(config: PeerConfig, topology) -> float:
    """One peer's message, header included, averaged over the run's rounds."""
    algorithm = build_replica(config, topology, topology.ids[0]).algorithm
    layouts = algorithm.message_layouts()
    sizes = []
    for round_ in range(config.rounds):
        fragment = algorithm.fragment_at(round_)
        frames = wire.encode(kind="params", sender=topology.ids[0], run_id=f"{topology.name}-{config.algo}-s0",
                             round=round_, fingerprint="0" * 16, tensors=layouts[fragment or 0], fragment=fragment)
        sizes.append(wire.frame_bytes(frames))
    return float(np.mean(sizes))


def accuracies(config: PeerConfig, topology) -> list[float]:
    final = simulate(config, topology)
    replica = build_replica(config, topology, topology.ids[0])
    figures = []
    for state in final.values():
        replica.model.load_state_dict(state)
        figures.append(replica.evaluate()["test_accuracy"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graph", default="ring16", help="a KIND+PEERS graph (default: %(default)s)")
    parser.add_argument("--compressors", default="top-k:0.01,random-k:0.01",
                        help="comma-separated compressors (default: %(default)s)")
    parser.add_argument("--gammas", default="1,0.3,0.1,0.03,0.01", help="comma-separated steps (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=200, help="rounds (default: %(default)s)")
    parser.add_argument("--local-steps", type=int, default=5, help="SGD steps per round (default: %(default)s)")
    parser.add_argument("--partition", default="iid", help="iid or dirichlet:ALPHA (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="run seed (default: %(default)s)")
    args = parser.parse_args()
    try:
        topology = generate_named(args.graph)
        base = PeerConfig(topology="-", rounds=args.rounds, local_steps=args.local_steps, partition=args.partition,
                          seed=args.seed, eval_every=args.rounds).validate()
        runs = [(c, float(g)) for c in args.compressors.split(",") for g in args.gammas.split(",")]
        for compressor, gamma in runs:
            base.replace(algo="choco", compressor=compressor, choco_gamma=gamma).validate()
    except (TopologyError, ConfigError, ValueError) as error:
        raise SystemExit(f"choco_gamma_sweep: error: {error}") from None

    gossip_bytes = message_bytes(base, topology)
    print(f"CHOCO on {topology.name}, digits, {args.partition}, {args.rounds} rounds of {args.local_steps} local "
          f"steps, seed {args.seed}\n")
    print("| compressor | gamma | worst accuracy | mean accuracy | bytes per message | vs gossip |")
    print("|---|---|---|---|---|---|")
    figures = accuracies(base, topology)
    print(f"| (gossip) | - | {min(figures):.4f} | {np.mean(figures):.4f} | {gossip_bytes:,.0f} | 1 |", flush=True)
    for compressor, gamma in runs:
        config = base.replace(algo="choco", compressor=compressor, choco_gamma=gamma).validate()
        size = message_bytes(config, topology)
        try:
            figures = accuracies(config, topology)
            worst, mean = f"{min(figures):.4f}", f"{np.mean(figures):.4f}"
        except ArithmeticError:  # Diverged: a step too large for the compressor
            worst = mean = "diverged"
        print(f"| {compressor} | {gamma:g} | {worst} | {mean} | {size:,.0f} | {size / gossip_bytes:.4f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
