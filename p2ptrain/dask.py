"""A swarm on a dask.distributed cluster: one peer per worker, its endpoint on the worker's host.

    from p2ptrain.dask import run_swarm

    result = run_swarm("ring", peers=4, rounds=200)               # no client: a LocalCluster of 4 workers
    result = run_swarm("ring", client=Client("tcp://scheduler:8786"), rounds=200)   # every worker a peer
    print(result.accuracies, result.consensus_distance)

Dask only places the peers, starts them and brings their results back; the
peers talk to each other over ZeroMQ as everywhere else, never through
Dask. Each peer is one long task pinned to its worker (``workers=[address]``),
listening on that worker's host at ``base_port`` + k for the k-th peer on the
host. Unless told otherwise each worker first makes its peer's CurveZMQ key
pair where it runs, the public keys are pinned into the topology, and secret
keys never leave their worker. Needs the ``dask`` extra: pip install "p2ptrain[dask]".
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .config import PeerConfig
from .keys import generate_own, pin
from .peer import log_handler
from .replica import check_run, resolve_config, resolve_task
from .results import consensus_distance, load_model
from .rundir import PeerDir
from .running import USER_ERRORS, run_peer
from .topology import Topology, TopologyError, generate, relocate

try:
    from distributed import Client, Event, LocalCluster, wait
except ImportError as error:  # the optional extra
    raise ImportError('p2ptrain.dask needs dask.distributed: pip install "dask[distributed]" (or the extra: '
                      'pip install -e ".[dask]")') from error


# How often a peer looks whether the run was stopped, and how long the peers then have to write their results.
STOP_POLL_SECONDS = 0.5
STOP_GRACE_SECONDS = 60.0


@dataclass
class PeerOutcome:
    worker: str  # the Dask worker's address
    exit_code: int  # as a peer process's: 0 when every round ran
    result: dict  # the peer's result.json ({} if it wrote none)
    error: str = ""  # why it could not run, if it could not


@dataclass
class SwarmResult:
    """What came back from the workers: each peer's outcome and final model."""

    topology: Topology  # as the peers got it: the workers' endpoints (and pinned public keys)
    config: PeerConfig  # what every peer ran with, its own id and --out apart
    out: str  # where on its worker each peer wrote: OUT/PEER
    peers: dict[str, PeerOutcome]
    models: dict[str, dict[str, torch.Tensor]] = field(repr=False)

    @property
    def ok(self) -> bool:
        return all(outcome.exit_code == 0 for outcome in self.peers.values())

    @property
    def accuracies(self) -> dict[str, float]:
        return {peer_id: outcome.result.get("test_accuracy", float("nan")) for peer_id, outcome in self.peers.items()}

    @property
    def consensus_distance(self) -> float:
        """Mean over peers of ||x_i - x_mean|| / ||x_mean|| of the final models."""
        return consensus_distance(list(self.models.values()))


def run_swarm(topology: str | Topology = "ring", *, client: Client | None = None, peers: int | None = None,
              out: str = "", base_port: int = 25000, keys: str = "", insecure: bool = False,
              timeout: float | None = None, **options) -> SwarmResult:
    """Train a swarm on the workers of ``client`` (by default a LocalCluster of one process per peer).

    ``topology``: a graph kind (ring, torus, ...; with ``peers`` peers, by default one per worker) or a
    Topology (its graph and ids; its endpoints are replaced by the workers'). ``out``: each peer writes to
    OUT/PEER on its worker (default runs/TOPOLOGY-ALGO-TIME). ``keys``: a directory present on every
    worker with the swarm's CurveZMQ keys; by default each worker makes its own; ``insecure=True`` runs
    without. ``timeout``: seconds to wait for every peer before cancelling them. Other keyword arguments
    are the peer options by their Python names (rounds, algo, local_steps, lr, dataset, seed, ...).
    """
    config = resolve_config({"log_level": "INFO", **options})  # defaults < the task's < these; refused here
    own_cluster = client is None
    if own_cluster:
        count = peers or (topology.size if isinstance(topology, Topology) else 4)
        cluster = LocalCluster(n_workers=count, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        return _run(client, topology, peers, config, out, base_port, keys, insecure, timeout)
    finally:
        if own_cluster:
            client.close()
            cluster.close()


def _run(client: Client, topology: str | Topology, peers: int | None, config: PeerConfig, out: str,
         base_port: int, keys: str, insecure: bool, timeout: float | None) -> SwarmResult:
    workers = _workers(client)
    if isinstance(topology, str):
        topology = generate(topology, peers or len(workers))
    if topology.size > len(workers):
        raise TopologyError(f"{topology.name} has {topology.size} peers but the cluster has {len(workers)} "
                            "workers; one peer runs on each worker: add workers, or use fewer peers")
    placed = dict(zip(topology.ids, workers))  # workers sorted by host: peers fill one host after another
    topology = relocate(topology, _endpoints(placed, base_port))
    check_run(config, topology, resolve_task(config))
    config = config.replace(
        out=out or f"runs/{topology.name}-{config.algo}-{time.strftime('%Y%m%d-%H%M%S')}",
        run_id=config.run_id or f"{topology.name}-{config.algo}-dask-{time.strftime('%Y%m%d-%H%M%S')}",
        insecure=insecure, keys=keys)
    own_keys: dict[str, tuple[str, str]] = {}  # peer -> (its keys directory on its worker, its public key)
    if not insecure and not keys:
        # Each worker makes its own peer's key pair; only the public keys come back, pinned into the topology.
        made = {peer_id: client.submit(_make_keys, peer_id, workers=[address], allow_other_workers=False, pure=False)
                for peer_id, address in placed.items()}
        own_keys = {peer_id: future.result(timeout=timeout) for peer_id, future in made.items()}
        topology = pin(topology, {peer_id: public for peer_id, (_, public) in own_keys.items()})
    # Cancelling a Dask task does not stop the thread running it: a peer watches this event instead, and
    # stops as a peer process does on SIGTERM (its model and result written, status "interrupted").
    stop = Event(f"p2ptrain-stop-{config.run_id}", client=client)
    futures = {
        peer_id: client.submit(_run_peer_here, _peer_config(config, peer_id, own_keys), topology, bool(own_keys),
                               stop.name, workers=[address], allow_other_workers=False, pure=False,
                               key=f"p2ptrain-{config.run_id}-{peer_id}")
        for peer_id, address in placed.items()}
    try:
        wait(list(futures.values()), timeout=timeout)
    except TimeoutError:
        stop.set()
        running = [future for future in futures.values() if not future.done()]
        try:
            wait(running, timeout=STOP_GRACE_SECONDS)
        except TimeoutError:
            client.cancel(running)
        raise TimeoutError(f"{len(running)} of {len(futures)} peers had not finished after {timeout}s; stopped "
                           "them (raise timeout=, or look at OUT/PEER/peer.log on their workers)") from None
    outcomes, models = {}, {}
    for peer_id, future in futures.items():
        outcome, model = future.result()
        outcomes[peer_id] = replace(outcome, worker=placed[peer_id])
        if model is not None:
            models[peer_id] = model
    return SwarmResult(topology, config, config.out, outcomes, models)


def _workers(client: Client) -> list[str]:
    """The workers' addresses (tcp://HOST:PORT), grouped by host."""
    addresses = list(client.ncores())
    if not addresses:
        raise TopologyError("the Dask cluster has no workers yet; start some, or wait for them "
                            "(client.wait_for_workers(n))")
    return sorted(addresses, key=lambda address: (_host(address), address))


def _host(address: str) -> str:
    return address.split("://", 1)[-1].rsplit(":", 1)[0]


def _endpoints(placed: dict[str, str], base_port: int) -> list[str]:
    """tcp://HOST:PORT of each peer: its worker's host, base_port + k for the k-th peer on that host."""
    on_host: Counter = Counter()
    endpoints = []
    for address in placed.values():
        host = _host(address)
        endpoints.append(f"tcp://{host}:{base_port + on_host[host]}")
        on_host[host] += 1
    return endpoints


def _peer_config(config: PeerConfig, peer_id: str, own_keys: dict[str, tuple[str, str]]) -> PeerConfig:
    keys = own_keys[peer_id][0] if peer_id in own_keys else config.keys
    return config.replace(peer=peer_id, out=str(Path(config.out) / peer_id), keys=keys)


def _make_keys(peer_id: str) -> tuple[str, str]:
    """On the worker: a private directory with a fresh key pair for ``peer_id``; (directory, public key)."""
    directory = Path(tempfile.mkdtemp(prefix="p2ptrain-keys-")) / "keys"
    return str(directory), generate_own(directory, peer_id)


def _run_peer_here(config: PeerConfig, topology: Topology, own_keys: bool,
                   stop_event: str) -> tuple[PeerOutcome, dict | None]:
    """On the worker: run the peer to its end, or until the Dask event ``stop_event`` is set; its outcome and
    final model. Its log goes to OUT/peer.log; with ``own_keys`` (made by _make_keys for this run only)
    its keys are deleted once it has ended."""
    files = PeerDir(Path(config.out))
    files.path.mkdir(parents=True, exist_ok=True)
    handler = log_handler(files.log)
    logger = logging.getLogger("p2ptrain")
    logger.addHandler(handler)
    logger.setLevel(config.log_level)
    try:
        code, error = asyncio.run(_run_until_stopped(config, topology, Event(stop_event))), ""
    except (*USER_ERRORS, OSError) as refused:  # as a peer process would refuse: exit code 2, the reason
        code, error = 2, str(refused)
    finally:
        logger.removeHandler(handler)
        handler.close()
        if own_keys:
            shutil.rmtree(Path(config.keys).parent, ignore_errors=True)
    result = _read_json(files.result)
    return PeerOutcome(worker="", exit_code=code, result=result, error=error), load_model(files)


async def _run_until_stopped(config: PeerConfig, topology: Topology, stop: Event) -> int:
    """run_peer, stopped as by SIGTERM once ``stop`` is set (the worker's thread owns no signals)."""
    stopped: list[int] = []  # run_peer's record of the signals that stopped it
    peer = asyncio.ensure_future(run_peer(config, topology=topology, signals=stopped))
    while not peer.done():
        # Dask's Event.wait blocks: in a thread, for a short while at a time, so the loop runs the peer.
        if await asyncio.to_thread(stop.wait, STOP_POLL_SECONDS) and not peer.done():
            stopped.append(signal.SIGTERM)
            peer.cancel()
            break
    return await peer


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
