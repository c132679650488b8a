#!/usr/bin/env python3
"""ADMM penalty sweep: iterations to reach a relative error against c, per graph and problem.

Runs the lockstep simulation (the same replicas and ADMM code as the peers,
without sockets; a real swarm with no lost message computes the same iterates)
and prints a markdown table: rows are penalties, columns are graphs, cells
are the iterations until every peer is within --target of the centralized
optimum ("-" if not within --max-rounds).

    python scripts/admm_sweep.py [--dataset synthetic-lstsq] [--penalties 1,3,10,...] [--graphs ring8,complete8]
"""

from __future__ import annotations

import argparse
import sys

from p2ptrain.config import PeerConfig
from p2ptrain.problems import centralized_optimum, has_reference
from p2ptrain.results import relative_error
from p2ptrain.simulate import simulate
from p2ptrain.topology import TopologyError, generate_named

DEFAULT_PENALTIES = {"synthetic-lstsq": "1,3,10,30,100,300,1000", "breast-cancer": "0.1,0.3,1,3,10,30"}


def iterations_to(config: PeerConfig, topology, target: float) -> int | None:
    optimum = centralized_optimum(config.dataset, topology.size)
    reached: list[int] = []

    def observe(round_: int, replicas) -> bool:
        if max(relative_error(r.model.state_dict(), optimum) for r in replicas.values()) <= target:
            reached.append(round_ + 1)
            return True
        return False

    simulate(config, topology, observe)
    return reached[0] if reached else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic-lstsq", help="a convex dataset (default: %(default)s)")
    parser.add_argument("--penalties", help="comma-separated values of c (default: a range suited to the dataset)")
    parser.add_argument("--graphs", default="ring8,complete8", help="comma-separated graphs (default: %(default)s)")
    parser.add_argument("--target", type=float, default=1e-6, help="relative error to reach (default: %(default)s)")
    parser.add_argument("--max-rounds", type=int, default=3000, help="give up after this many (default: %(default)s)")
    args = parser.parse_args()
    if not has_reference(args.dataset):
        raise SystemExit(f"{args.dataset} has no centralized optimum to measure against; "
                         "use synthetic-lstsq or breast-cancer")
    penalties = [float(c) for c in (args.penalties or DEFAULT_PENALTIES[args.dataset]).split(",")]
    try:
        graphs = [generate_named(name) for name in args.graphs.split(",")]
    except TopologyError as error:
        raise SystemExit(str(error)) from None

    print(f"ADMM on {args.dataset}: iterations until every peer is within {args.target:g} "
          f"(relative) of the centralized optimum\n")
    print("| c | " + " | ".join(g.name for g in graphs) + " |")
    print("|---|" + "---|" * len(graphs))
    for c in penalties:
        cells = []
        for topology in graphs:
            config = PeerConfig(topology="-", algo="admm", dataset=args.dataset, admm_penalty=c,
                                rounds=args.max_rounds).validate()
            reached = iterations_to(config, topology, args.target)
            cells.append("-" if reached is None else str(reached))
        print(f"| {c:g} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
