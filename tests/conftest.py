"""Shared helpers: free loopback ports and topology files that use them."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from p2ptrain.topology import dump_topology, generate


def free_port_block(count: int) -> int:
    """A base port B such that B..B+count-1 are free on 127.0.0.1 right now."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(30000, 60000 - count)
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
                sockets.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no block of free ports found on 127.0.0.1")


@pytest.fixture
def topology_file(tmp_path: Path):
    """Write a generated topology on free loopback ports; returns its path."""

    def make(kind: str, peers: int, **kwargs) -> Path:
        topology = generate(kind, peers, base_port=free_port_block(peers), **kwargs)
        path = tmp_path / f"{topology.name}.toml"
        path.write_text(dump_topology(topology))
        return path

    return make
