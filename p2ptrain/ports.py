"""Free TCP ports on the loopback interface, for local swarms, tests and measurements.

A port found free can still be taken before it is bound; callers that bind it soon after (the
peers of a local swarm, a test) accept that small race, and every peer refuses a taken port with
a clear error rather than sharing it.
"""

from __future__ import annotations

import random
import socket


def listening_port_range() -> tuple[int, int]:
    """Ports to listen on: below the kernel's ephemeral range, which outgoing connections
    (peers dialling each other) draw from and could take from under a peer about to bind."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            low = int(ports.read().split()[0])
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


def port_free(port: int) -> bool:
    """Whether ``port`` on 127.0.0.1 can be bound now (nothing listens on it)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
