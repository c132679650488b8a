"""The communication graph of a swarm: who exists, where they listen, who talks to whom, with what weight.

A Topology is built only through ``build_topology``, which checks everything a
file could get wrong and says how to fix it. Once built it is immutable, so
every peer that loads the same file sees the same graph and the same weights.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import weights as mixing_weights

MIXING_KINDS = ("metropolis", "uniform", "lazy", "explicit", "push")
# Matched whole (fullmatch: "$" alone would let a trailing newline through).
ENDPOINT = re.compile(r"(tcp://(?P<host>\[[0-9a-fA-F:]+\]|[^:/\s]+):(?P<port>\d+)|ipc://\S+|inproc://\S+)")
# Hosts that mean every interface of this machine: where to listen, never where to connect.
EVERY_INTERFACE = frozenset({"*", "0.0.0.0", "[::]"})
# A peer's id names its output directory: never "." or "..", so it begins with a letter or a digit.
_PEER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# A CurveZMQ public key as Z85 text: 40 characters of this alphabet (python -m p2ptrain.keys).
_Z85_KEY = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")


class TopologyError(ValueError):
    """A topology that cannot be used; the message names the problem and its fix."""


@dataclass(frozen=True)
class PeerSpec:
    id: str
    endpoint: str  # where neighbours connect
    bind: str  # where this peer listens; the endpoint unless the file says otherwise
    # The peer's CurveZMQ public key (Z85), if the file pins it; otherwise it comes from a keys directory.
    public_key: str | None = None


@dataclass(frozen=True, eq=False)
class RoundGraph:
    """Who talks to whom in one round, and with what weights."""

    # A[i, j] True when peer i receives from peer j (see weights.py for the convention).
    adjacency: np.ndarray
    weights: np.ndarray


@dataclass(frozen=True, eq=False)
class Topology:
    name: str
    peers: tuple[PeerSpec, ...]
    directed: bool
    mixing: str
    # One entry for a static graph; a time-varying one uses rounds[r % period] in round r.
    rounds: tuple[RoundGraph, ...]

    @property
    def size(self) -> int:
        return len(self.peers)

    @property
    def period(self) -> int:
        return len(self.rounds)

    @cached_property
    def adjacency(self) -> np.ndarray:
        """Every link used in any round: whom a peer must be able to reach at all."""
        return np.logical_or.reduce([g.adjacency for g in self.rounds])

    @cached_property
    def diameter(self) -> int:
        """Longest shortest path, in hops, following the direction messages travel (over the union graph)."""
        longest = 0
        for source in range(self.size):
            hops = {source: 0}
            queue = deque([source])
            while queue:
                i = queue.popleft()
                for j in np.flatnonzero(self.adjacency[:, i]):  # j receives from i
                    if int(j) not in hops:
                        hops[int(j)] = hops[i] + 1
                        queue.append(int(j))
            longest = max(longest, max(hops.values()))
        return longest

    @property
    def weights(self) -> np.ndarray:
        """The mixing matrix of a static topology (a time-varying one has ``weights_at``)."""
        if self.period != 1:
            raise TopologyError(f"{self.name} changes every round; ask for weights_at(round)")
        return self.rounds[0].weights

    def weights_at(self, round_: int) -> np.ndarray:
        return self.rounds[round_ % self.period].weights

    @cached_property
    def ids(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.peers)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {pid: i for i, pid in enumerate(self.ids)}

    def index(self, peer_id: str) -> int:
        try:
            return self._index[peer_id]
        except KeyError:
            raise TopologyError(
                f"peer {peer_id!r} is not in topology {self.name!r}; its peers are {', '.join(self.ids)}"
            ) from None

    @classmethod
    def from_networkx(cls, graph, endpoints, *, name: str = "networkx", mixing: str = "metropolis") -> "Topology":
        """A topology of a networkx graph: one peer per node (id ``str(node)``), ``endpoints`` one per node
        (a list in node order, or a dict by node); see topology/from_networkx.py."""
        from .from_networkx import from_networkx

        return from_networkx(graph, endpoints, name=name, mixing=mixing)

    def peer(self, peer_id: str) -> PeerSpec:
        return self.peers[self.index(peer_id)]

    def _adjacency(self, round_: int | None) -> np.ndarray:
        return self.adjacency if round_ is None else self.rounds[round_ % self.period].adjacency

    def in_neighbours(self, peer_id: str, round_: int | None = None) -> tuple[str, ...]:
        """Peers whose parameters ``peer_id`` receives in round ``round_`` (None: in any round)."""
        key = ("in", peer_id, None if round_ is None else round_ % self.period)
        if key not in self._remembered:
            row = self._adjacency(round_)[self.index(peer_id)]
            self._remembered[key] = tuple(self.ids[j] for j in np.flatnonzero(row))
        return self._remembered[key]

    def out_neighbours(self, peer_id: str, round_: int | None = None) -> tuple[str, ...]:
        """Peers that ``peer_id`` sends to in round ``round_`` (None: in any round)."""
        key = ("out", peer_id, None if round_ is None else round_ % self.period)
        if key not in self._remembered:
            column = self._adjacency(round_)[:, self.index(peer_id)]
            self._remembered[key] = tuple(self.ids[i] for i in np.flatnonzero(column))
        return self._remembered[key]

    @cached_property
    def _remembered(self) -> dict[tuple[str, str, int | None], tuple[str, ...] | dict[str, float]]:
        # Neighbours and mixing rows, asked by every peer in every round: a scan of a row of the
        # adjacency or the weights each time would cost each round time in proportion to the size of
        # the swarm. The graph never changes: remembering is safe.
        return {}

    def linked_both_ways(self, peer_id: str) -> tuple[str, ...]:
        """The neighbours ``peer_id`` both sends to and hears from: those that can answer its state request."""
        heard = set(self.in_neighbours(peer_id))
        return tuple(j for j in self.out_neighbours(peer_id) if j in heard)

    def mixing_row(self, peer_id: str, round_: int = 0) -> dict[str, float]:
        """Weights peer_id gives to itself and to each in-neighbour in round ``round_``; they sum to 1."""
        key = ("row", peer_id, round_ % self.period)
        if key not in self._remembered:
            i = self.index(peer_id)
            w = self.weights_at(round_)
            self._remembered[key] = {self.ids[j]: float(w[i, j]) for j in np.flatnonzero(w[i])} | {peer_id: float(w[i, i])}
        return dict(self._remembered[key])  # a copy: the caller may change it

    def edges(self, round_: int | None = None) -> list[tuple[str, str]]:
        """Edges as written in a file: (a, b) once each if undirected, (sender, receiver) if directed."""
        pairs = []
        for i, j in zip(*np.nonzero(self._adjacency(round_))):
            if self.directed:
                pairs.append((self.ids[j], self.ids[i]))
            elif i < j:
                pairs.append((self.ids[i], self.ids[j]))
        return sorted(pairs, key=lambda e: (self.index(e[0]), self.index(e[1])))

    @cached_property
    def round_rates(self) -> tuple[float, ...]:
        """rho = ||W_r - 11^T/n||_2 of each round of the period."""
        return tuple(mixing_weights.consensus_rate(g.weights) for g in self.rounds)

    @cached_property
    def consensus_rate(self) -> float:
        """Per-round contraction of disagreement; for a schedule, the geometric mean over one period,
        ||W_{p-1} ... W_0 - 11^T/n||_2 ** (1/p)."""
        if self.period == 1:
            return self.round_rates[0]
        product = np.eye(self.size)
        for g in self.rounds:
            product = g.weights @ product
        return mixing_weights.consensus_rate(product) ** (1 / self.period)

    @cached_property
    def doubly_stochastic(self) -> bool:
        return all(mixing_weights.is_doubly_stochastic(g.weights) for g in self.rounds)

    @cached_property
    def column_stochastic(self) -> bool:
        """Every peer's outgoing weights (a column of W, itself included) sum to 1: what push-sum needs."""
        return all(mixing_weights.is_column_stochastic(g.weights) for g in self.rounds)

    def sending_weights(self, peer_id: str, round_: int = 0) -> dict[str, float]:
        """Weights ``peer_id``'s own values get from itself and from each out-neighbour (its column of W)."""
        i = self.index(peer_id)
        w = self.weights_at(round_)
        return {self.ids[j]: float(w[j, i]) for j in np.flatnonzero(w[:, i])} | {peer_id: float(w[i, i])}


def relocate(topology: Topology, endpoints: list[str], binds: list[str] | None = None) -> Topology:
    """The same graph and weights with peer i reached at ``endpoints[i]`` and listening on ``binds[i]``
    (by default its endpoint); the addresses are checked as a file's would be."""
    binds = endpoints if binds is None else binds
    if not len(endpoints) == len(binds) == topology.size:
        raise TopologyError(f"{len(endpoints)} endpoints and {len(binds)} binds for {topology.size} peers")
    peers = tuple(PeerSpec(spec.id, endpoint, bind, spec.public_key)
                  for spec, endpoint, bind in zip(topology.peers, endpoints, binds))
    _check_peers(list(peers), TopologyError)
    return Topology(topology.name, peers, topology.directed, topology.mixing, topology.rounds)


def build_topology(
    name: str,
    peers: list[PeerSpec],
    edges: list[tuple[str, str]],
    *,
    directed: bool = False,
    mixing: str = "metropolis",
    explicit_weights: dict[str, dict[str, float]] | None = None,
    schedule: list[dict] | None = None,
    where: str = "",
) -> Topology:
    """Validate and assemble a topology. ``where`` prefixes error messages (a file name).

    A time-varying topology gives ``schedule``: one {"edges": [...], "weights": {...}?}
    per round of its period, instead of ``edges``.
    """
    at = f"{where}: " if where else ""

    def fail(message: str) -> TopologyError:
        return TopologyError(at + message)

    index = _check_peers(peers, fail)
    if mixing not in MIXING_KINDS:
        raise fail(f"unknown mixing {mixing!r}; use one of {', '.join(MIXING_KINDS)}")
    if schedule:
        if edges:
            raise fail("give either edges (a static graph) or [[schedule]] rounds (a time-varying one), not both")
        if explicit_weights is not None:
            raise fail("a top-level [weights] table is given with a schedule; give each round its weights as "
                       "[schedule.weights] under its [[schedule]] entry")
        rounds = tuple(
            _round_graph(entry.get("edges", []), index, directed, mixing, entry.get("weights"),
                         lambda m, r=r: fail(f"[[schedule]] round {r}: {m}"))
            for r, entry in enumerate(schedule))
    else:
        rounds = (_round_graph(edges, index, directed, mixing, explicit_weights, fail),)

    topology = Topology(name=name, peers=tuple(peers), directed=directed, mixing=mixing, rounds=rounds)
    ids = list(index)
    if len(ids) > 1:
        unreachable = _unreachable(topology.adjacency, directed)
        if unreachable:
            kind = "strongly connected" if directed else "connected"
            over = " over one period of the schedule" if schedule else ""
            raise fail(
                f"the graph is not {kind}{over}: {', '.join(ids[i] for i in unreachable)} cannot be reached "
                f"from {ids[0]!r} (or cannot reach it); add edges so every peer hears, directly or "
                "through others, from every other"
            )
    return topology


def _check_peers(peers: list[PeerSpec], fail) -> dict[str, int]:
    if not peers:
        raise fail("no peers; add [[peers]] tables with an id and an endpoint")
    index: dict[str, int] = {}
    seen_endpoints: dict[tuple | str, str] = {}
    seen_keys: dict[str, str] = {}
    for spec in peers:
        if not isinstance(spec.id, str) or not _PEER_ID.fullmatch(spec.id):
            raise fail(
                f"peer id {spec.id!r} is not usable; use 1-64 letters, digits, '_', '.' or '-', beginning "
                "with a letter or a digit"
            )
        if spec.id in index:
            raise fail(f"duplicate peer id {spec.id!r}; give every peer its own id")
        index[spec.id] = len(index)
        check_endpoint(spec.endpoint, spec.id, fail)
        check_endpoint(spec.bind, spec.id, fail, "bind")
        if _host_of(spec.endpoint) in EVERY_INTERFACE:
            raise fail(f"peer {spec.id!r} has endpoint {spec.endpoint!r}: {_host_of(spec.endpoint)} means every "
                       "interface, where this peer may listen (bind), not an address its neighbours can dial (on "
                       "another host they would dial themselves); give its host's name or address as endpoint, "
                       "and bind = \"tcp://0.0.0.0:PORT\" if it should listen on every interface")
        same = _dialled_as(spec.endpoint)
        if same in seen_endpoints:
            raise fail(
                f"peers {seen_endpoints[same]!r} and {spec.id!r} share endpoint {spec.endpoint}; "
                "give each peer its own host:port"
            )
        seen_endpoints[same] = spec.id
        if spec.public_key is not None:
            _check_public_key(spec, seen_keys, fail)
    return index


def _check_public_key(spec: PeerSpec, seen_keys: dict[str, str], fail) -> None:
    if not isinstance(spec.public_key, str) or not _Z85_KEY.fullmatch(spec.public_key):
        raise fail(
            f"peer {spec.id!r} has a public_key that is not a CurveZMQ public key (40 Z85 characters); "
            "copy it from python -m p2ptrain.keys show, and never put a secret key in a topology file"
        )
    if spec.public_key in seen_keys:
        raise fail(
            f"peers {seen_keys[spec.public_key]!r} and {spec.id!r} have the same public_key; "
            "give every peer its own key pair"
        )
    seen_keys[spec.public_key] = spec.id


def _round_graph(edges, index: dict[str, int], directed: bool, mixing: str, explicit_weights, fail) -> RoundGraph:
    n = len(index)
    adjacency = np.zeros((n, n), dtype=bool)
    for edge in edges:
        if not isinstance(edge, (list, tuple)) or len(edge) != 2 or not all(isinstance(end, str) for end in edge):
            raise fail(f"edge {edge!r} must name exactly two peers by their ids, like [\"p0\", \"p1\"]")
        a, b = edge
        for end in (a, b):
            if end not in index:
                raise fail(
                    f"edge [{a!r}, {b!r}] names unknown peer {end!r}; "
                    f"add it to [[peers]] or fix the edge (known peers: {', '.join(index)})"
                )
        if a == b:
            raise fail(f"self-loop [{a!r}, {b!r}]; remove it (a peer always keeps its own weight)")
        # Edge a -> b: b receives from a.
        adjacency[index[b], index[a]] = True
        if not directed:
            adjacency[index[a], index[b]] = True

    if mixing == "explicit":
        if explicit_weights is None:
            raise fail('mixing = "explicit" needs a [weights] table with one row per peer')
        w = _explicit_matrix(explicit_weights, index, adjacency, fail)
    elif explicit_weights is not None:
        raise fail(f'a [weights] table is given but mixing = "{mixing}"; set mixing = "explicit" or remove it')
    elif mixing in ("metropolis", "lazy"):
        if directed:
            raise fail(
                f'{"lazy " if mixing == "lazy" else ""}Metropolis-Hastings weights need an undirected graph; '
                'use mixing = "uniform" or explicit weights for a directed one'
            )
        w = mixing_weights.metropolis_hastings(adjacency)
        if mixing == "lazy":
            w = mixing_weights.lazy(w)
    elif mixing == "push":
        w = mixing_weights.push(adjacency)
    else:
        w = mixing_weights.uniform(adjacency)
    return RoundGraph(adjacency, w)


def check_endpoint(address: str, peer_id: str, fail, field: str = "endpoint") -> None:
    match = ENDPOINT.fullmatch(address) if isinstance(address, str) else None
    if not match:
        raise fail(
            f"peer {peer_id!r} has {field} {address!r}; write it as tcp://HOST:PORT "
            "(or ipc://PATH, inproc://NAME)"
        )
    port = match.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise fail(f"peer {peer_id!r} has port {port} in its {field} {address!r}; use a port from 1 to 65535")


def bracketed(host: str) -> str:
    """An IPv6 address in brackets, as an endpoint writes it; any other host as it is."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _dialled_as(address: str) -> tuple | str:
    """What ``address`` dials, for comparing endpoints: a tcp:// host in lower case (names and IPv6 digits
    are case-insensitive) and its port as a number (021001 is 21001); ipc:// and inproc:// as written."""
    match = ENDPOINT.fullmatch(address)
    return (match["host"].lower(), int(match["port"])) if match["port"] else address


def _host_of(address: str) -> str | None:
    """The host of a tcp:// address (brackets kept for IPv6), None for ipc:// and inproc://."""
    match = ENDPOINT.fullmatch(address)
    return match["host"] if match else None


def _unreachable(adjacency: np.ndarray, directed: bool) -> list[int]:
    def reach(matrix: np.ndarray) -> set[int]:
        seen, queue = {0}, deque([0])
        while queue:
            i = queue.popleft()
            for j in np.flatnonzero(matrix[i]):
                if j not in seen:
                    seen.add(int(j))
                    queue.append(int(j))
        return seen

    n = adjacency.shape[0]
    reached = reach(adjacency) & reach(adjacency.T) if directed else reach(adjacency)
    return [i for i in range(n) if i not in reached]


def _explicit_matrix(rows, index, adjacency, fail) -> np.ndarray:
    n = len(index)
    ids = list(index)
    w = np.zeros((n, n))
    if not isinstance(rows, dict):
        raise fail("[weights] must be a table with one row per peer, like p0 = { p0 = 0.5, p1 = 0.5 }")
    for peer_id in ids:
        if peer_id not in rows:
            raise fail(f"[weights] has no row for {peer_id!r}; give every peer a row")
    for peer_id, row in rows.items():
        if peer_id not in index:
            raise fail(f"[weights] has a row for unknown peer {peer_id!r}; remove it or add the peer")
        if not isinstance(row, dict):
            raise fail(f"[weights].{peer_id} must be a table like {{ {peer_id} = 0.5, p1 = 0.5 }}")
        i = index[peer_id]
        for other, value in row.items():
            if other not in index:
                raise fail(f"[weights].{peer_id} names unknown peer {other!r}")
            j = index[other]
            if j != i and not adjacency[i, j]:
                raise fail(
                    f"[weights].{peer_id} gives weight to {other!r}, but {peer_id!r} does not receive "
                    f"from {other!r}; add the edge or drop the weight"
                )
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise fail(f"[weights].{peer_id}.{other} = {value!r} must be a finite number")
            if value < 0:
                raise fail(f"[weights].{peer_id}.{other} = {value} is negative; weights must be >= 0")
            w[i, j] = float(value)
        total = w[i].sum()
        if abs(total - 1.0) > mixing_weights.ROW_SUM_TOLERANCE:
            raise fail(
                f"[weights].{peer_id} sums to {total:.12g}, not 1; rescale the row "
                f"(the weight {peer_id!r} keeps for itself counts too)"
            )
    return w
