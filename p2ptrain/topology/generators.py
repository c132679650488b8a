"""Graphs by name: the edges of the standard topologies, ready for ``build_topology``.

Powers and logarithms of two use integer arithmetic: a float log2 of 2**k can
land a hair below k and silently drop a whole level of the graph.
"""

from __future__ import annotations

import math
import re

import numpy as np

from .graph import PeerSpec, Topology, TopologyError, _unreachable, bracketed, build_topology

# Random graphs are redrawn until connected; past this many draws the
# parameters are too sparse to hope, and the error says so.
CONNECT_ATTEMPTS = 1000


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


def _grid(n):
    side = _square_side(n, "grid")
    edges = []
    for r in range(side):
        for c in range(side):
            here = r * side + c
            if c + 1 < side:
                edges.append((f"p{here}", f"p{here + 1}"))
            if r + 1 < side:
                edges.append((f"p{here}", f"p{here + side}"))
    return sorted(edges, key=lambda e: (int(e[0][1:]), int(e[1][1:])))


def _log2(n: int, kind: str) -> int:
    """k with 2**k == n, in integers; refuses anything else."""
    k = n.bit_length() - 1
    if n < 2 or 1 << k != n:
        raise TopologyError(f"a {kind} needs a power of two peers (2, 4, 8, 16, ...), got {n}")
    return k


def _hypercube(n):
    d = _log2(n, "hypercube")
    return [(f"p{i}", f"p{i ^ (1 << b)}") for i in range(n) for b in range(d) if i < i ^ (1 << b)]


def _two_clusters(n):
    """Two complete graphs of n//2 and n - n//2 peers, joined by a single edge: a bottleneck."""
    if n < 4:
        raise TopologyError(f"two clusters need at least 4 peers, got {n}")
    half = n // 2
    return _complete(half) + [(f"p{half + i}", f"p{half + j}") for i in range(n - half)
                              for j in range(i + 1, n - half)] + [("p0", f"p{half}")]


def _connected(draw, n: int, what: str, hint: str):
    for attempt in range(CONNECT_ATTEMPTS):
        edges = draw(attempt)
        adjacency = np.zeros((n, n), dtype=bool)
        for a, b in edges:
            adjacency[a, b] = adjacency[b, a] = True
        if n == 1 or not _unreachable(adjacency, directed=False):
            return [(f"p{a}", f"p{b}") for a, b in sorted(edges)]
    raise TopologyError(f"no connected {what} in {CONNECT_ATTEMPTS} draws; {hint}")


def _erdos_renyi(n, seed, probability=None):
    # Default: twice the connectivity threshold ln(n)/n, so a draw is usually connected.
    p = probability if probability is not None else min(1.0, 2 * math.log(max(n, 2)) / n)

    def draw(attempt):
        rng = np.random.default_rng([seed, attempt])
        return [(i, j) for i in range(n) for j in range(i + 1, n) if rng.random() < p]

    return _connected(draw, n, f"Erdos-Renyi graph with p = {p:g}", "raise --probability")


def _geometric(n, seed, radius=None):
    """Peers at random points of the unit square, linked when closer than the radius."""
    r = radius if radius is not None else min(1.5, math.sqrt(2 * math.log(max(n, 2)) / n))

    def draw(attempt):
        points = np.random.default_rng([seed, attempt]).random((n, 2))
        close = np.linalg.norm(points[:, None] - points[None], axis=2) < r
        return [(i, j) for i in range(n) for j in range(i + 1, n) if close[i, j]]

    return _connected(draw, n, f"random geometric graph with radius {r:g}", "raise --radius")


def _one_peer_exponential(n):
    """Round r: peer i sends to i + 2^(r mod log2 n) only. With weights 1/2 the
    product over log2 n rounds is exactly the average (Ying et al., 2021)."""
    k = _log2(n, "one-peer exponential graph")
    return [{"edges": [(f"p{i}", f"p{(i + (1 << r)) % n}") for i in range(n)]} for r in range(k)]


def _square_side(n: int, kind: str) -> int:
    side = 1
    while side * side < n:
        side += 1
    if side * side != n:
        raise TopologyError(f"a square {kind} needs a square number of peers (9, 16, 25, ...), got {n}")
    return side


# kind -> (edges of n peers, directed, usual mixing). Random kinds take a seed,
# and time-varying ones return a schedule (a list of rounds) instead of edges.
GENERATORS = {
    "ring": (_ring, False, "metropolis"),
    "line": (_line, False, "metropolis"),
    "star": (_star, False, "metropolis"),
    "complete": (_complete, False, "metropolis"),
    "torus": (_torus, False, "metropolis"),
    "grid": (_grid, False, "metropolis"),
    "hypercube": (_hypercube, False, "metropolis"),
    "two-clusters": (_two_clusters, False, "metropolis"),
    "erdos-renyi": (_erdos_renyi, False, "metropolis"),
    "geometric": (_geometric, False, "metropolis"),
    # Regular directed circulant: uniform weights are doubly stochastic there.
    "exponential": (_exponential, True, "uniform"),
    # Each round every peer has one in-neighbour: uniform weights are (I + P)/2.
    "one-peer-exponential": (_one_peer_exponential, True, "uniform"),
}
RANDOM_KINDS = {"erdos-renyi": "probability", "geometric": "radius"}
SCHEDULED_KINDS = {"one-peer-exponential"}


def generate(
    kind: str,
    n: int,
    *,
    host: str = "127.0.0.1",
    base_port: int = 25000,
    name: str | None = None,
    mixing: str | None = None,
    seed: int = 0,
    probability: float | None = None,
    radius: float | None = None,
) -> Topology:
    """A topology of ``n`` peers p0..p{n-1} listening on host:base_port+i.

    ``seed`` draws the random kinds (erdos-renyi with edge ``probability``,
    geometric with ``radius``); the same seed gives the same graph.
    """
    if kind not in GENERATORS:
        raise TopologyError(f"unknown topology kind {kind!r}; choose from {', '.join(GENERATORS)}")
    if n < 1:
        raise TopologyError(f"a topology needs at least one peer, got {n}")
    make, directed, default_mixing = GENERATORS[kind]
    if kind == "erdos-renyi":
        edges = make(n, seed, probability)
    elif kind == "geometric":
        edges = make(n, seed, radius)
    else:
        edges = make(n)
    host = bracketed(host)  # an IPv6 address, as an endpoint writes it
    peers = [PeerSpec(f"p{i}", f"tcp://{host}:{base_port + i}", f"tcp://{host}:{base_port + i}") for i in range(n)]
    scheduled = kind in SCHEDULED_KINDS
    return build_topology(
        name or f"{kind}{n}",
        peers,
        [] if scheduled else edges,
        directed=directed,
        mixing=mixing or default_mixing,
        schedule=edges if scheduled else None,
    )


def generate_named(name: str, **kwargs) -> Topology:
    """generate() from a name KIND+PEERS, such as ring16, one-peer-exponential16 or erdos-renyi32."""
    match = re.fullmatch(r"([a-z-]+?)(\d+)", name)
    if not match or match[1] not in GENERATORS:
        raise TopologyError(f"graph {name!r}: write KIND+PEERS with KIND one of {', '.join(GENERATORS)} "
                            "(e.g. ring16, erdos-renyi32)")
    return generate(match[1], int(match[2]), **kwargs)
