"""A Node over ZeroMQ: ``open_node`` builds one (its replica, its bound transport, its run directory) and
``run_peer`` runs it to its end, with the signals that stop it and the exit code the command line returns.

The command-line peer (peer.py), peers in one process (inprocess.py) and Dask tasks (dask.py) run peers
through ``run_peer``; the Python API (api.py) opens a Node with ``open_node`` and drives it from a user's
own optimizer.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import zmq
import zmq.asyncio

from . import wire
from .algorithms import Diverged
from .config import ConfigError, PeerConfig, resolve_peer_id
from .keys import KeyFileError, check_keys_or_insecure, load_security, reachable_by_others
from .node import Node
from .replica import Replica, build_replica
from .rundir import EXIT_WRITE_FAILED
from .topology import Topology, TopologyError, load_topology
from .transport import MessageLimits, TransportError, ZmqTransport

# What a peer refuses to start with: the command line reports these in one line, with exit code 2.
USER_ERRORS = (ConfigError, TopologyError, TransportError, KeyFileError)


def open_node(config: PeerConfig, context: zmq.asyncio.Context, topology: Topology | None = None,
              replica: Replica | None = None, alone_on_loop: bool = False, set_threads: bool = True) -> Node:
    """A started Node: the peer id resolved, its replica built (unless given), its port bound, its run
    directory prepared. Files are touched only once the port is ours: a peer that cannot start
    leaves a run as it was. ``alone_on_loop``: nothing else runs on the caller's event loop, so the
    node may wait for messages in ZeroMQ's poll (transport.ZmqTransport.receive). ``set_threads``: set
    torch's threads to --threads (False: a training script's process, whose threads are its own)."""
    topology = topology or load_topology(config.topology)
    config = config.for_peer(topology.name, resolve_peer_id(config.peer, topology.ids))
    security = _security(config, topology, config.peer)  # refused before the data and model are built
    if set_threads:
        torch.set_num_threads(config.threads)
    replica = replica or build_replica(config, topology, config.peer)
    layouts = [wire.specs_of(tensors) for tensors in (*replica.algorithm.message_layouts(),
                                                      replica.algorithm.state_tensors())]
    largest = max(spec.nbytes for specs in layouts for spec in specs)
    transport = ZmqTransport(
        context,
        topology.peer(config.peer).bind,
        {j: topology.peer(j).endpoint for j in topology.out_neighbours(config.peer)},
        linger_seconds=min(config.recv_timeout, 5.0),
        # ZeroMQ drops (and disconnects) any frame more than an eighth over the largest a message of
        # this run holds (a header or its largest tensor) before it is read into memory; a frame
        # less far over is read and rejected with its reason logged (the decoder checks exact sizes).
        max_message_bytes=max(wire.MAX_HEADER_BYTES, largest) * 9 // 8,
        security=security,
        alone_on_loop=alone_on_loop,
        # Read frame by frame: a message of more frames or bytes than this run's largest (its tensors
        # in the smallest chunks a sender may use) is discarded as it is read, however many frames it
        # has (security.md).
        limits=MessageLimits(frames=1 + max(sum(wire.frames_per_tensor(s.nbytes, wire.MIN_CHUNK_BYTES) for s in specs)
                                            for specs in layouts),
                             total_bytes=wire.MAX_HEADER_BYTES + max(sum(s.nbytes for s in specs) for specs in layouts)),
    )
    try:
        node = Node(config, topology, replica, transport)
        node.start()
    except BaseException:
        transport.close()  # an open socket would keep the context from terminating
        raise
    return node


def _security(config: PeerConfig, topology: Topology, peer_id: str):
    """CurveZMQ keys from --keys, or None. A topology that pins public keys is never run without them."""
    if config.keys:
        return load_security(topology, peer_id, config.keys)
    if any(spec.public_key for spec in topology.peers):
        raise ConfigError(f"{topology.name} pins the peers' public keys, so its swarm is secured: "
                          "pass --keys DIR with this peer's secret key")
    check_keys_or_insecure(config, topology, peer_id)
    bind = topology.peer(peer_id).bind
    if reachable_by_others(bind):
        logging.LoggerAdapter(logging.getLogger("p2ptrain.peer"), {"peer": peer_id}).warning(
            "no --keys: connections are neither encrypted nor authenticated; anyone who can reach %s can send this "
            "peer messages (docs/security.md)", bind)
    return None


async def run_peer(config: PeerConfig, context: zmq.asyncio.Context | None = None,
                   topology: Topology | None = None, signals: list[int] | None = None) -> int:
    """Run one peer to the end; returns the process exit code (0 only when every round ran).

    Alone, it stops cleanly on SIGINT and SIGTERM. Run beside other peers in one
    process, the caller owns the signals: it passes a list it appends the signal
    to before cancelling the peers' tasks, and the shared ZeroMQ context.
    """
    own_context = context is None
    context = context or zmq.asyncio.Context()
    peer = None
    try:
        with _stopped_by_signals(signals) as caught:
            try:
                # Its own context means its own loop: peers in one process share both.
                peer = open_node(config, context, topology, alone_on_loop=own_context)
                return await _run_to_the_end(peer)
            except asyncio.CancelledError:
                if not caught:
                    raise
                asyncio.current_task().uncancel()
                if peer is not None:
                    peer.log.warning("stopped by %s after %d rounds", signal.Signals(caught[0]).name,
                                     peer.rounds_completed)
                    peer.finish("interrupted")
                return 128 + caught[0]
            except Exception:
                if peer is not None:
                    peer.finish("failed")
                raise
    finally:
        if peer is not None and not peer.transport.closed:
            peer.transport.close()
        if own_context:
            context.term()  # returns once queued messages are delivered or the linger ends


async def _run_to_the_end(peer: Node) -> int:
    try:
        await peer.run()
    except Diverged as error:
        peer.log.error("stopping: %s", error)
        peer.finish("diverged")
        return 3
    peer.finish("completed")
    if peer.write_error is not None:
        return EXIT_WRITE_FAILED
    peer.log.info("finished %d rounds in %.1fs", peer.rounds_completed, peer.clock() - peer.started)
    return 0


@contextmanager
def _stopped_by_signals(signals: list[int] | None) -> Iterator[list[int]]:
    """The list of signals that stopped the peer. Without one given, SIGINT and SIGTERM are this
    peer's own: each is recorded and cancels the running task."""
    if signals is not None:
        yield signals
        return
    caught: list[int] = []
    task, loop = asyncio.current_task(), asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        caught.append(signum)
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield caught
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
