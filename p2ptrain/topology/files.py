"""Topology files: TOML in, TOML out (see topologies/README.md for the format)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from .graph import PeerSpec, Topology, TopologyError, build_topology

_TOP_KEYS = {"name", "directed", "mixing", "edges", "peers", "weights", "schedule", "description"}
_ROUND_KEYS = {"edges", "weights"}
_PEER_KEYS = {"id", "endpoint", "bind", "public_key"}


def load_topology(path: str | Path) -> Topology:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TopologyError(
            f"topology file {path} does not exist; pass a file from topologies/ or write one "
            "(format: topologies/README.md)"
        ) from None
    except IsADirectoryError:
        raise TopologyError(f"{path} is a directory; pass a topology file (a .toml file, as in topologies/)") from None
    except UnicodeDecodeError as error:
        raise TopologyError(f"topology file {path} is not UTF-8 text ({error.reason} at byte {error.start}); "
                            "pass a TOML topology file (format: topologies/README.md)") from None
    except OSError as error:
        raise TopologyError(f"cannot read topology file {path}: {error.strerror or error}") from None
    return parse_topology(text, where=str(path), default_name=path.stem)


def parse_topology(text: str, *, where: str = "<topology>", default_name: str = "topology") -> Topology:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise TopologyError(f"{where}: not valid TOML ({error})") from None

    def fail(message: str) -> TopologyError:
        return TopologyError(f"{where}: {message}")

    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise fail(f"unknown key(s) {', '.join(sorted(unknown))}; known keys: {', '.join(sorted(_TOP_KEYS))}")
    peers_doc = doc.get("peers")
    if not isinstance(peers_doc, list) or not peers_doc:
        raise fail('no peers; add [[peers]] tables, each with id = "..." and endpoint = "tcp://host:port"')
    peers = []
    for n, entry in enumerate(peers_doc):
        if not isinstance(entry, dict):
            raise fail(f"peers[{n}] must be a table with id and endpoint")
        extra = set(entry) - _PEER_KEYS
        if extra:
            raise fail(f"peers[{n}] has unknown key(s) {', '.join(sorted(extra))}; known: id, endpoint, bind, public_key")
        for key in ("id", "endpoint"):
            if not isinstance(entry.get(key), str):
                raise fail(f'peers[{n}] needs {key} = "..." (a string)')
        bind = entry.get("bind", entry["endpoint"])
        if not isinstance(bind, str):
            raise fail(f"peers[{n}].bind must be a string like tcp://0.0.0.0:25000")
        public_key = entry.get("public_key")
        if public_key is not None and not isinstance(public_key, str):
            raise fail(f'peers[{n}].public_key must be a string: the peer\'s Z85 CurveZMQ public key')
        peers.append(PeerSpec(id=entry["id"], endpoint=entry["endpoint"], bind=bind, public_key=public_key))

    edges = _edge_list(doc.get("edges", []), fail)
    schedule = doc.get("schedule")
    if schedule is not None:
        if not isinstance(schedule, list) or not all(isinstance(entry, dict) for entry in schedule):
            raise fail("schedule must be [[schedule]] tables, one per round, each with edges = [...]")
        for r, entry in enumerate(schedule):
            extra = set(entry) - _ROUND_KEYS
            if extra:
                raise fail(f"[[schedule]] round {r} has unknown key(s) {', '.join(sorted(extra))}; known: edges, weights")
            entry["edges"] = _edge_list(entry.get("edges", []), fail)
    directed = doc.get("directed", False)
    if not isinstance(directed, bool):
        raise fail("directed must be true or false")
    mixing = doc.get("mixing", "metropolis")
    if not isinstance(mixing, str):
        raise fail('mixing must be "metropolis", "uniform", "lazy", "explicit" or "push"')
    name = doc.get("name", default_name)
    if not isinstance(name, str):
        raise fail("name must be a string")
    return build_topology(
        name,
        peers,
        edges,
        directed=directed,
        mixing=mixing,
        explicit_weights=doc.get("weights"),
        schedule=schedule,
        where=where,
    )


def _edge_list(edges, fail) -> list[tuple]:
    if not isinstance(edges, list) or not all(isinstance(e, list) for e in edges):
        raise fail('edges must be a list of pairs, like edges = [["p0", "p1"], ["p1", "p2"]]')
    return [tuple(e) for e in edges]


def dump_topology(topology: Topology, description: str = "") -> str:
    """The TOML text of a topology; ``parse_topology`` of it gives the same graph and weights."""

    def q(value: str) -> str:
        # A JSON string is a TOML basic string, but for two things: TOML has no surrogate pairs (so non-ASCII
        # characters are written as themselves) and wants DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")

    lines = []
    if description:
        lines += [f"# {line}" for line in description.splitlines()] + [""]
    lines += [
        f"name = {q(topology.name)}",
        f"directed = {'true' if topology.directed else 'false'}",
        f"mixing = {q(topology.mixing)}",
    ]
    if topology.period == 1:
        lines += _edge_lines(topology.edges(), q)
    lines.append("")
    for spec in topology.peers:
        lines += ["[[peers]]", f"id = {q(spec.id)}", f"endpoint = {q(spec.endpoint)}"]
        if spec.bind != spec.endpoint:
            lines.append(f"bind = {q(spec.bind)}")
        if spec.public_key is not None:
            lines.append(f"public_key = {q(spec.public_key)}")
        lines.append("")
    for r in range(topology.period):
        prefix = ""
        if topology.period > 1:
            lines += ["[[schedule]]", *_edge_lines(topology.edges(r), q)]
            prefix = "schedule."
        if topology.mixing == "explicit":
            lines.append(f"[{prefix}weights]")
            for peer_id in topology.ids:
                row = ", ".join(f"{q(j)} = {w!r}" for j, w in topology.mixing_row(peer_id, r).items())
                lines.append(f"{q(peer_id)} = {{ {row} }}")
        lines.append("")
    return "\n".join(lines)


def _edge_lines(edges, q) -> list[str]:
    return ["edges = [", *[f"  [{q(a)}, {q(b)}]," for a, b in edges], "]"]
