"""Shared helpers: free loopback ports and topology files that use them."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2ptrain.ports import free_port_block
from p2ptrain.topology import dump_topology, generate


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
