#!/usr/bin/env python3
"""Pure gossip averaging by real peers over TCP loopback, against the spectral prediction.

For each graph: rho = ||W - 11^T/n||_2 from the topology, and the per-round
contraction of the peers' disagreement measured over their sockets (late
rounds, see p2ptrain/averaging.py). Then the one-peer exponential graph:
the relative error of every peer to the exact average after log2 n rounds.

    python scripts/measure_mixing.py [--graphs ring16,torus16,exponential16,hypercube16,erdos-renyi32]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from p2ptrain.averaging import averaging_config, initial_parameters, measured_rate, run_averaging
from p2ptrain.ports import free_port_block
from p2ptrain.topology import TopologyError, generate, generate_named


def graph(name: str):
    try:
        size = generate_named(name).size  # validates the name before looking for ports
        return generate_named(name, base_port=free_port_block(size))
    except TopologyError as error:
        raise SystemExit(str(error)) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs", default="ring16,torus16,exponential16,hypercube16,erdos-renyi32")
    parser.add_argument("--one-peer", default="8,16,32", help="sizes of the one-peer exponential graph")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="p2ptrain-mixing-") as work:
        measure(args, Path(work))


def measure(args: argparse.Namespace, work: Path) -> None:
    """Print both tables; the swarms' run directories go under ``work``."""
    print("| graph | rho (predicted) | measured per-round contraction | rounds measured | measured / rho |")
    print("|---|---|---|---|---|")
    for name in args.graphs.split(","):
        topology = graph(name)
        rate, early, late = measured_rate(topology, work / name)
        rho = topology.consensus_rate
        print(f"| {name} | {rho:.4f} | {rate:.4f} | {early}..{late} | {rate / rho:.3f} |", flush=True)
    print("\n| one-peer exponential | rounds | max relative error to the exact average |")
    print("|---|---|---|")
    for n in (int(v) for v in args.one_peer.split(",")):
        topology = generate("one-peer-exponential", n, base_port=free_port_block(n))
        rounds = n.bit_length() - 1
        mean = initial_parameters(topology, averaging_config(rounds)).mean(axis=0)
        final = run_averaging(topology, rounds, work / f"one-peer{n}")
        error = max(np.linalg.norm(row - mean) / np.linalg.norm(mean) for row in final)
        print(f"| {n} peers | {rounds} | {error:.2e} |", flush=True)


if __name__ == "__main__":
    main()
