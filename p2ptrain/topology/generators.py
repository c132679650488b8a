"""Graphs by name: the edges of the standard topologies, ready for ``build_topology``.

Powers and logarithms of two use integer arithmetic: a float log2 of 2**k can
land a hair below k and silently drop a whole level of the graph.
"""

from __future__ import annotations

from .graph import PeerSpec, Topology, TopologyError, build_topology


def _ring(n):
    return [(f"p{i}", f"p{(i + 1) % n}") for i in range(n)] if n > 2 else _line(n)


def _line(n):
    return [(f"p{i}", f"p{i + 1}") for i in range(n - 1)]


def _star(n):
    return [("p0", f"p{i}") for i in range(1, n)]


def _complete(n):
    return [(f"p{i}", f"p{j}") for i in range(n) for j in range(i + 1, n)]


def _torus(n):
    side = _square_side(n, "torus")
    if side < 3:
        raise TopologyError("a torus needs at least 3x3 peers so that wrap-around edges are distinct")
    edges = set()
    for r in range(side):
        for c in range(side):
            here = r * side + c
            for other in (r * side + (c + 1) % side, ((r + 1) % side) * side + c):
                edges.add((f"p{min(here, other)}", f"p{max(here, other)}"))
    return sorted(edges, key=lambda e: (int(e[0][1:]), int(e[1][1:])))


def _exponential(n):
    """Static exponential graph: peer i sends to i + 2^k (mod n) for every 2^k < n. Directed."""
    edges = []
    for i in range(n):
        hop = 1
        while hop < n:
            edges.append((f"p{i}", f"p{(i + hop) % n}"))
            hop *= 2
    return sorted(set(edges), key=lambda e: (int(e[0][1:]), int(e[1][1:])))


def _square_side(n: int, kind: str) -> int:
    side = 1
    while side * side < n:
        side += 1
    if side * side != n:
        raise TopologyError(f"a square {kind} needs a square number of peers (9, 16, 25, ...), got {n}")
    return side


GENERATORS = {
    "ring": (_ring, False, "metropolis"),
    "line": (_line, False, "metropolis"),
    "star": (_star, False, "metropolis"),
    "complete": (_complete, False, "metropolis"),
    "torus": (_torus, False, "metropolis"),
    # Regular directed circulant: uniform weights are doubly stochastic there.
    "exponential": (_exponential, True, "uniform"),
}


def generate(
    kind: str,
    n: int,
    *,
    host: str = "127.0.0.1",
    base_port: int = 25000,
    name: str | None = None,
    mixing: str | None = None,
) -> Topology:
    """A topology of ``n`` peers p0..p{n-1} listening on host:base_port+i."""
    if kind not in GENERATORS:
        raise TopologyError(f"unknown topology kind {kind!r}; choose from {', '.join(GENERATORS)}")
    if n < 1:
        raise TopologyError(f"a topology needs at least one peer, got {n}")
    make_edges, directed, default_mixing = GENERATORS[kind]
    peers = [PeerSpec(f"p{i}", f"tcp://{host}:{base_port + i}", f"tcp://{host}:{base_port + i}") for i in range(n)]
    return build_topology(
        name or f"{kind}{n}",
        peers,
        make_edges(n),
        directed=directed,
        mixing=mixing or default_mixing,
    )
