"""python -m p2ptrain.topology: write topology files and describe them.

    python -m p2ptrain.topology generate ring --peers 8 -o topologies/ring8.toml
    python -m p2ptrain.topology info topologies/ring8.toml
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from . import GENERATORS, TopologyError, dump_topology, generate, load_topology


def describe(topology) -> str:
    degrees = topology.adjacency.sum(axis=1)
    rho = topology.consensus_rate
    lines = [
        f"topology      {topology.name} ({'directed' if topology.directed else 'undirected'}, {topology.mixing} weights)",
        f"peers         {topology.size}",
        f"edges         {len(topology.edges())}",
        f"in-degree     min {degrees.min()}, max {degrees.max()}",
        f"doubly stoch. {'yes' if topology.doubly_stochastic else 'no: gossip will not keep the mean'}",
        f"rho           {rho:.6f}  (||W - 11^T/n||_2, disagreement shrinks by this per round)",
        f"spectral gap  {1 - rho:.6f}",
    ]
    if 0 < rho < 1:
        lines.append(f"rounds to shrink disagreement 1e6-fold: {math.ceil(math.log(1e-6) / math.log(rho))}")
    elif rho == 0 or np.isclose(rho, 0):
        lines.append("rounds to shrink disagreement 1e6-fold: 1 (exact average in one round)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2ptrain.topology", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write a topology file of a standard graph")
    gen.add_argument("kind", choices=sorted(GENERATORS))
    gen.add_argument("--peers", type=int, required=True, help="number of peers")
    gen.add_argument("--host", default="127.0.0.1", help="host every endpoint listens on (default: %(default)s)")
    gen.add_argument("--base-port", type=int, default=25000, help="peer i listens on base-port + i (default: %(default)s)")
    gen.add_argument("--mixing", choices=["metropolis", "uniform"], help="weights (default: the kind's usual)")
    gen.add_argument("--name", help="topology name (default: KIND + peers)")
    gen.add_argument("-o", "--output", help="file to write (default: standard output)")
    info = sub.add_parser("info", help="print degrees, rho and the spectral gap of a topology file")
    info.add_argument("file")
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            topology = generate(args.kind, args.peers, host=args.host, base_port=args.base_port,
                                name=args.name, mixing=args.mixing)
            text = dump_topology(topology, f"{topology.name}: {args.kind} graph of {args.peers} peers.")
            if args.output:
                Path(args.output).write_text(text, encoding="utf-8")
            else:
                sys.stdout.write(text)
        else:
            print(describe(load_topology(args.file)))
    except TopologyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
