"""Shared helpers: free loopback ports and topology files that use them."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from p2ptrain.topology import dump_topology, generate


def listening_port_range() -> tuple[int, int]:
    """Ports to listen on: below the kernel's ephemeral range, which outgoing connections
    (peers dialling each other) draw from and could take from under a peer about to bind."""
    try:
        low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return 10000, max(low, 12000)


def free_port_block(count: int) -> int:
    """A base port B such that B..B+count-1 are free on 127.0.0.1 right now."""
    rng = random.Random()
    first, last = listening_port_range()
    for _ in range(200):
        base = rng.randrange(first, last - count)
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


@pytest.fixture
def context():
    """A ZeroMQ context of the test's own, destroyed after it (tests that build transports by hand)."""
    import zmq.asyncio

    ctx = zmq.asyncio.Context()
    yield ctx
    ctx.destroy(linger=0)
