"""A topology from a networkx graph, for users who build or analyse their graphs with networkx.

networkx is imported only here, and only when a graph is converted."""

from __future__ import annotations

from typing import Any

from .graph import PeerSpec, Topology, TopologyError, build_topology


def from_networkx(graph: Any, endpoints: list[str] | dict[Any, str], *, name: str = "networkx",
                  mixing: str = "metropolis") -> Topology:
    """The topology of ``graph``: one peer per node (its id is ``str(node)``), in the graph's node order,
    which is the rank order; an edge per edge (directed if the graph is). ``endpoints``: one per node, as
    a list in node order or a dict by node."""
    try:
        import networkx as nx
    except ImportError:
        raise TopologyError("Topology.from_networkx needs networkx: pip install networkx") from None
    if not isinstance(graph, nx.Graph):
        raise TopologyError(f"from_networkx takes a networkx graph, not {type(graph).__name__}")
    if graph.is_multigraph():
        raise TopologyError("a multigraph has parallel edges, which mixing weights cannot tell apart; "
                            "convert it with networkx.Graph(graph) (or DiGraph) first")
    nodes = list(graph.nodes)
    if isinstance(endpoints, dict):
        missing = [node for node in nodes if node not in endpoints]
        if missing:
            raise TopologyError(f"no endpoint for node(s) {', '.join(map(str, missing[:5]))}; give every node one")
        endpoints = [endpoints[node] for node in nodes]
    if len(endpoints) != len(nodes):
        raise TopologyError(f"{len(endpoints)} endpoints for a graph of {len(nodes)} nodes; give one per node, "
                            "in the order of graph.nodes")
    ids = {node: str(node) for node in nodes}
    peers = [PeerSpec(ids[node], endpoint, endpoint) for node, endpoint in zip(nodes, endpoints)]
    edges = [(ids[a], ids[b]) for a, b in graph.edges()]
    return build_topology(name, peers, edges, directed=graph.is_directed(), mixing=mixing)
