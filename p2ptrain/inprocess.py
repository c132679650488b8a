"""Many peers in one process: each peer a task on one event loop, running the same Peer code over inproc or ipc sockets.

For experiments with hundreds of peers on one machine, where a process per
peer would cost a Python interpreter and a torch import each. Peers still
only talk through ZeroMQ; a synchronous run gives the same models as the same
run with one process per peer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import shutil
import signal
import tempfile
from pathlib import Path

import zmq.asyncio

from .config import PeerConfig
from .running import run_peer
from .topology import Topology, relocate

log = logging.getLogger("p2ptrain.inprocess")
SOCKET_KINDS = ("inproc", "ipc")


def local_endpoints(topology: Topology, run_id: str, kind: str = "inproc", directory: Path | None = None) -> Topology:
    """The topology with every peer on an in-process (inproc://) or Unix socket (ipc://) endpoint."""
    if kind == "inproc":
        return relocate(topology, [f"inproc://{run_id}/{pid}" for pid in topology.ids])
    if kind == "ipc":
        directory = directory or Path(tempfile.mkdtemp(prefix="p2ptrain-"))
        return relocate(topology, [f"ipc://{directory}/{pid}.sock" for pid in topology.ids])
    raise ValueError(f"unknown socket kind {kind!r}; use one of {', '.join(SOCKET_KINDS)}")


def remove_socket_directory(topology: Topology) -> None:
    """Remove the directory ``local_endpoints`` made for a topology's ipc:// socket files (inproc has none)."""
    for directory in {Path(spec.bind.removeprefix("ipc://")).parent for spec in topology.peers
                      if spec.bind.startswith("ipc://")}:
        shutil.rmtree(directory, ignore_errors=True)


async def run_in_process(topology: Topology, config: PeerConfig, out: Path) -> dict[str, int]:
    """Run every peer of ``topology`` here; peer ID writes to out/ID. Returns each peer's exit code.

    ``config`` holds the options every peer shares; its topology, peer and out are set per peer.
    SIGINT and SIGTERM stop all peers cleanly, as they stop a single peer process.
    """
    context = zmq.asyncio.Context()
    signals: list[int] = []
    tasks: dict[str, asyncio.Task] = {}
    for peer_id in topology.ids:
        peer_config = dataclasses.replace(config, peer=peer_id, out=str(out / peer_id))
        tasks[peer_id] = asyncio.create_task(run_peer(peer_config, context, topology, signals), name=peer_id)

    def on_signal(signum: int) -> None:
        signals.append(signum)
        for task in tasks.values():
            task.cancel()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await _spare_the_collector_what_the_peers_built()
        results = await asyncio.gather(*tasks.values(), return_exceptions=True)
    finally:
        gc.unfreeze()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        context.term()  # every peer closed its sockets; this waits out their lingers
    codes = {}
    for peer_id, result in zip(tasks, results):
        if isinstance(result, BaseException):
            log.error("peer %s failed: %r", peer_id, result, exc_info=result)
            codes[peer_id] = 1
        else:
            codes[peer_id] = result
    return codes


async def _spare_the_collector_what_the_peers_built() -> None:
    """Exempt what is alive once the peers have started from Python's full garbage collections.

    The libraries loaded (torch above all) and the peers' models, optimizers, data and sockets are
    some 380,000 objects with 256 peers, all living as long as the run. Every full collection (of
    the collector's oldest generation, triggered by the objects the rounds allocate) walked them
    all, with every peer stopped: about 0.2 s each among the rounds of ring256 (performance.md).
    Each peer opens its node before its first await, so once this task runs again every peer has
    started; what is alive then is frozen (gc.freeze: still freed by reference counting, only no
    longer scanned for cycles), after one collection of the start's own garbage. A peer still
    starting would only be left unfrozen: nothing depends on it. ``run_in_process`` unfreezes at
    the end."""
    await asyncio.sleep(0)
    gc.collect()
    gc.freeze()
