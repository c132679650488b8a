"""python -m p2ptrain.topology: write topology files, describe them, draw them.

    python -m p2ptrain.topology generate ring --peers 8 -o topologies/ring8.toml
    python -m p2ptrain.topology generate ring --hosts node1,node2 --per-host 4 -o ring8-cluster.toml
    python -m p2ptrain.topology info topologies/ring8.toml
    python -m p2ptrain.topology draw topologies/torus16.toml -o torus16.png
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


from . import GENERATORS, Topology, TopologyError, dump_topology, generate, load_topology
from .placement import from_template, on_hosts, read_hosts_file, split_hosts
from .generators import RANDOM_KINDS

# Disagreement must shrink by this factor for `info`'s predicted rounds.
SHRINK = 1e-6


def predicted_rounds(rho: float, period: int) -> str:
    if rho < 1e-12:
        return f"{period} (the exact average after {'one round' if period == 1 else 'one period'})"
    if rho >= 1:
        return "never (rho >= 1)"
    return str(math.ceil(math.log(SHRINK) / math.log(rho)))


def describe(topology) -> str:
    degrees = topology.adjacency.sum(axis=1)
    lines = [
        f"topology      {topology.name} ({'directed' if topology.directed else 'undirected'}, "
        f"{topology.mixing} weights" + (f", a schedule of {topology.period} rounds)" if topology.period > 1 else ")"),
        f"peers         {topology.size}",
        f"edges         {len(topology.edges())}" + (" over one period" if topology.period > 1 else ""),
        f"in-degree     min {degrees.min()}, max {degrees.max()}",
        f"diameter      {topology.diameter}",
        f"doubly stoch. {'yes' if topology.doubly_stochastic else 'no: gossip and gradient tracking refuse it'}"
        + ("; column stochastic: push-sum's" if not topology.doubly_stochastic and topology.column_stochastic else ""),
    ]
    if topology.period > 1:
        lines.append("rho per round " + ", ".join(f"{r:.6f}" for r in topology.round_rates))
        period_rho = topology.consensus_rate ** topology.period
        lines.append(f"rho of a period {period_rho:.3e}  (||W_(p-1)...W_0 - 11^T/n||_2)")
    rho = topology.consensus_rate
    lines += [
        f"rho           {rho:.6f}  (||W - 11^T/n||_2{', per round over a period' if topology.period > 1 else ''}:"
        " disagreement shrinks by this per round)",
        f"spectral gap  {1 - rho:.6f}",
        f"rounds to shrink disagreement 1e6-fold: {predicted_rounds(rho, topology.period)}",
    ]
    return "\n".join(lines)


def lattice_layout(graph) -> dict | None:
    """Positions on a grid when the graph is a grid or a torus (of any rows x columns), else None.

    A force-directed layout folds a torus into a tangle; found as a lattice, each peer is drawn at its
    row and column, and a torus's wrap-around links show as the long edges across the drawing."""
    import networkx as nx

    n = graph.number_of_nodes()
    degrees = {d for _, d in graph.degree()}
    if n < 4 or n > 1024 or not degrees <= {2, 3, 4}:
        return None
    for rows in range(2, n // 2 + 1):
        if n % rows:
            continue
        for periodic in (True, False):
            lattice = nx.grid_2d_graph(rows, n // rows, periodic=periodic)
            if lattice.number_of_edges() != graph.number_of_edges():
                continue
            match = nx.vf2pp_isomorphism(graph, lattice)
            if match is not None:
                return {node: (col, -row) for node, (row, col) in match.items()}
    return None


def _distance(a, b) -> float:
    return abs(a[0] - b[0]) + abs(a[1] - b[1])


def draw(topology, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    graph = nx.DiGraph() if topology.directed else nx.Graph()
    graph.add_nodes_from(topology.ids)
    graph.add_edges_from(topology.edges())
    lattice = None if topology.directed or topology.period > 1 else lattice_layout(graph)
    if topology.directed or topology.period > 1:
        layout = nx.circular_layout(graph)
    else:
        layout = lattice or nx.kamada_kawai_layout(graph)
    # A torus's wrap-around links would run straight through their row or column: drawn as arcs instead.
    wraps = [(a, b) for a, b in graph.edges() if lattice and _distance(layout[a], layout[b]) > 1]
    fig, ax = plt.subplots(figsize=(6, 6))
    arrows = {"arrows": True, "arrowsize": 8} if topology.directed else {"arrows": False}
    nx.draw_networkx(graph, layout, ax=ax, node_color="#8fbcd4", node_size=350, font_size=7,
                     edge_color="#555555", width=0.8, edgelist=[e for e in graph.edges() if e not in wraps], **arrows)
    if wraps:
        nx.draw_networkx_edges(graph, layout, ax=ax, edgelist=wraps, edge_color="#999999", width=0.8, arrows=True,
                               arrowstyle="-", connectionstyle="arc3,rad=0.25", node_size=350)
    kind = f"schedule of {topology.period} rounds, all shown" if topology.period > 1 else topology.mixing
    ax.set_title(f"{topology.name}: {topology.size} peers, rho = {topology.consensus_rate:.3f} ({kind})", fontsize=9)
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def generate_placed(args) -> Topology:
    """`generate`'s topology: on one host, on --hosts / --hosts-file with --per-host each, or at
    --endpoint-template."""
    hosts = split_hosts(args.hosts) if args.hosts else read_hosts_file(args.hosts_file) if args.hosts_file else None
    peers = args.peers
    if peers is None:
        if hosts is None:
            raise TopologyError("how many peers? pass --peers N, or --hosts / --hosts-file with --per-host K")
        peers = len(hosts) * args.per_host
    if args.per_host != 1 and hosts is None:
        raise TopologyError("--per-host goes with --hosts or --hosts-file")
    topology = generate(args.kind, peers, host=args.host, base_port=args.base_port, name=args.name,
                        mixing=args.mixing, seed=args.seed, probability=args.probability, radius=args.radius)
    if hosts is not None:
        return on_hosts(topology, hosts, args.per_host, args.base_port)
    if args.endpoint_template:
        return from_template(topology, args.endpoint_template)
    return topology


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m p2ptrain.topology", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write a topology file of a standard graph")
    gen.add_argument("kind", choices=list(GENERATORS))
    gen.add_argument("--peers", type=int,
                     help="number of peers (with --hosts or --hosts-file: hosts x --per-host, if left out)")
    where = gen.add_mutually_exclusive_group()
    where.add_argument("--host", default="127.0.0.1", help="host every endpoint listens on (default: %(default)s)")
    where.add_argument("--hosts", metavar="H1,H2,...",
                       help="several hosts: --per-host peers on each, numbered host by host (the launchers' rank "
                            "order), ports from --base-port on every host")
    where.add_argument("--hosts-file", metavar="FILE",
                       help="--hosts from a file, one host per line (scontrol show hostnames > FILE)")
    where.add_argument("--endpoint-template", metavar="TEMPLATE",
                       help="peer i at TEMPLATE with {index} = i, e.g. 'tcp://p2p-{index}.p2p.svc:25000' (a "
                            "Kubernetes StatefulSet); needs --peers")
    gen.add_argument("--per-host", type=int, default=1, metavar="K", help="peers on each host (default: %(default)s)")
    gen.add_argument("--base-port", type=int, default=25000,
                     help="peer i listens on base-port + i; with --hosts, the k-th peer of a host on base-port + k "
                          "(default: %(default)s)")
    gen.add_argument("--mixing", choices=["metropolis", "uniform", "lazy"], help="weights (default: the kind's usual)")
    gen.add_argument("--seed", type=int, default=0, help=f"seed of the random kinds ({', '.join(RANDOM_KINDS)})")
    gen.add_argument("--probability", type=float, help="erdos-renyi: edge probability (default: 2 ln(n) / n)")
    gen.add_argument("--radius", type=float, help="geometric: link distance in the unit square (default: sqrt(2 ln(n) / n))")
    gen.add_argument("--name", help="topology name (default: KIND + peers)")
    gen.add_argument("-o", "--output", help="file to write (default: standard output)")
    info = sub.add_parser("info", help="print degrees, diameter, rho and the spectral gap of a topology file")
    info.add_argument("file")
    drawing = sub.add_parser("draw", help="draw a topology file as a PNG")
    drawing.add_argument("file")
    drawing.add_argument("-o", "--output", required=True, help="PNG file to write")
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            topology = generate_placed(args)
            text = dump_topology(topology, f"{topology.name}: {args.kind} graph of {topology.size} peers.")
            if args.output:
                Path(args.output).write_text(text, encoding="utf-8")
                endpoints = [spec.endpoint for spec in topology.peers]
                print(f"wrote {args.output}: {topology.name}, {topology.size} peers, {len(topology.edges())} edges, "
                      f"rho {topology.consensus_rate:.4f}; endpoints {endpoints[0]} ... {endpoints[-1]}",
                      file=sys.stderr)
            else:
                sys.stdout.write(text)
        elif args.command == "info":
            print(describe(load_topology(args.file)))
        else:
            draw(load_topology(args.file), Path(args.output))
            print(f"wrote {args.output}", file=sys.stderr)
    except TopologyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the files read raise TopologyError: this is -o
        print(f"error: cannot write {error.filename or args.output} ({error.strerror or error}); pass -o a file "
              "in a directory that exists and that you can write to", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
