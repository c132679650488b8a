"""The Python API: your own training script as one peer of a swarm.

    peer = p2ptrain.Peer("topologies/ring4.toml", model, optimizer, local_steps=4)
    for x, y in loader:                      # your loop, your model, your DataLoader
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()                     # every 4th step also exchanges with the neighbours
    peer.close()

``Peer`` hooks the optimizer's step (``register_step_pre_hook`` and
``register_step_post_hook``), so the optimizer stays the user's own object:
any ``torch.optim`` optimizer, learning-rate schedulers and all. Every
``local_steps`` steps the peer sends its tensors (parameters and
floating-point buffers), gathers the neighbours' of the same round and mixes,
exactly as a command-line peer does after its local steps: both run
``node.Node.exchange``. With ADMM the pre-hook adds the gradient of the
augmented term to the user's gradients (the inexact local solve on the
user's loss). The exchange runs on an event loop of the Peer's own, so a
training script needs no asyncio.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import torch
import zmq.asyncio

from .algorithms.base import Algorithm
from .config import UNBOUNDED_ROUNDS, ConfigError, PeerConfig, after_launcher_restart, resolve_peer_id
from .node import Node
from .peer import configure_logging
from .replica import Replica, agreement, build_algorithm, check_run
from .running import open_node
from .topology import Topology, load_topology


class Peer:
    """One peer of a swarm, run from the user's own training loop.

    ``topology``: a topology file or a Topology. ``model``: the user's module, already on its device.
    ``optimizer``: hooked at once if given (or later with ``attach``). ``peer``: this peer's id; by
    default the rank a launcher gives the process ($RANK of torchrun, $OMPI_COMM_WORLD_RANK, $PMI_RANK,
    $SLURM_PROCID, $JOB_COMPLETION_INDEX; config.LAUNCHER_RANKS), whose world size must be the topology's
    peer count; a process a launcher restarted resumes from its checkpoint. ``local_steps``: optimizer steps between
    exchanges. Other options are those of the command line, by their Python names (algo, mode,
    aggregator, robust_b, admm_penalty, recv_timeout, startup_timeout, keys, out, run_id,
    checkpoint_every, resume, join, seed, ...); ``rounds`` is how many exchanges to make (by default
    as many as the loop asks for).
    """

    def __init__(self, topology: str | Path | Topology, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer | None = None, *, peer: str = "", local_steps: int = 1,
                 rounds: int | None = None, log_level: str | None = None, **options):
        if log_level is not None:
            configure_logging(log_level)
        if isinstance(topology, (str, Path)):
            topology = load_topology(topology)
        if topology.size > 1 and any(spec.endpoint.startswith("inproc://") for spec in topology.peers):
            raise ConfigError(f"{topology.name} has inproc:// endpoints, which join only the sockets of one ZeroMQ "
                              "context, and each Peer has its own: no two Peers would ever hear each other. Give "
                              "them ipc:// or tcp:// endpoints, or run every peer in one process with "
                              "p2ptrain.inprocess.run_in_process")
        device = _device_of(model)
        options, restarted = after_launcher_restart(options)
        if restarted:
            logging.getLogger("p2ptrain.peer").info(restarted)
        config = PeerConfig.from_dict(
            {"topology": topology.name, "peer": peer, "local_steps": local_steps,
             "rounds": UNBOUNDED_ROUNDS if rounds is None else rounds, "device": str(device),
             "eval_every": UNBOUNDED_ROUNDS, "log_every": 10, **options}).validate()
        if config.local_steps < 1:
            raise ConfigError("local_steps: exchange after at least 1 optimizer step")
        check_run(config, topology, task=_NoTask())
        resolve_peer_id(config.peer, topology.ids)  # a rank or world size that does not fit, before any socket
        self.model = model
        self.local_steps = config.local_steps
        self._loop = asyncio.new_event_loop()
        self._context = zmq.asyncio.Context()
        self._hooks: list = []
        self._steps_in_round = 0
        self.closed = False
        try:
            self.node: Node = self._loop.run_until_complete(self._open(config, topology, model, device))
            if config.join:
                self._loop.run_until_complete(self.node.join())
        except BaseException:
            self._release()
            raise
        self.round = self.node.start_round
        if optimizer is not None:
            self.attach(optimizer)

    async def _open(self, config: PeerConfig, topology: Topology, model: torch.nn.Module,
                    device: torch.device) -> Node:
        # Sockets are made on the loop that will await them.
        peer_id = resolve_peer_id(config.peer, topology.ids)
        algorithm = build_algorithm(config, topology, peer_id, model, config.admm_penalty)
        replica = Replica(peer_id, None, model, None, algorithm, device, config.lr_at, config.local_steps,
                          agreement(config, None))
        return open_node(config, self._context, topology, replica, alone_on_loop=True)  # the loop is ours

    @property
    def id(self) -> str:
        return self.node.id

    @property
    def index(self) -> int:
        """This peer's position in the topology (0 .. count - 1): which shard of the data is its own."""
        return self.node.topology.index(self.node.id)

    @property
    def count(self) -> int:
        """The number of peers in the topology."""
        return self.node.topology.size

    @property
    def done(self) -> bool:
        """True once ``rounds`` exchanges were made (when it was given)."""
        return self.round >= self.node.config.rounds

    def attach(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Exchange every ``local_steps`` steps of ``optimizer``; returns it, unchanged in type."""
        self._hooks += [optimizer.register_step_pre_hook(self._before_step),
                        optimizer.register_step_post_hook(self._after_step)]
        return optimizer

    def _before_step(self, optimizer, args, kwargs) -> None:
        algorithm = self.node.algorithm
        if self._steps_in_round == 0:
            algorithm.begin_local(self.round)
            if algorithm.restarts_optimizer:
                optimizer.state.clear()
        algorithm.before_step()

    def _after_step(self, optimizer, args, kwargs) -> None:
        self._steps_in_round += 1
        if self._steps_in_round < self.local_steps or self.done:
            return
        self._steps_in_round = 0
        self.node.algorithm.end_local(self.round, None)
        self._exchange(None, optimizer.param_groups[0]["lr"])

    def exchange(self, loss: float | None = None, lr: float | None = None) -> None:
        """One round now, for a loop without an attached optimizer: what the model became since the last
        exchange is this round's local work; then send, gather the neighbours' tensors (up to the
        deadline), mix. ``loss`` and ``lr`` are only recorded in the metrics."""
        self._check_open()
        if self._hooks:
            raise RuntimeError("an optimizer is attached: its steps exchange every local_steps steps by themselves; "
                               "call exchange() only without one")
        algorithm = self.node.algorithm
        if algorithm.takes_steps and type(algorithm).before_step is not Algorithm.before_step:
            raise ConfigError(f"{algorithm.name} adds its own terms to the gradients before every optimizer step: "
                              "hand the Peer your optimizer (Peer(..., optimizer) or peer.attach(optimizer)) "
                              "instead of calling exchange()")
        algorithm.begin_local(self.round)  # push-sum's and exact ADMM's round needs both, gossip's neither
        algorithm.end_local(self.round, loss)
        self._exchange(loss, lr)

    def _exchange(self, loss: float | None, lr: float | None) -> None:
        self._loop.run_until_complete(self.node.exchange(self.round, loss, lr))
        self.node.rounds_completed = self.round + 1
        # The next round; in async mode a peer left too far behind its neighbours jumps to their round.
        self.round = self.node.gatherer.next_round(self.round)

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this Peer is closed; make a new one to train again")

    def close(self, status: str = "completed") -> None:
        """Write the final model and result to the run directory and leave the swarm. If they cannot be written
        (a full or unwritable disk) the OSError naming the file is raised, once the sockets are released."""
        if self.closed:
            return
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        try:
            self.node.finish(status)
            self.node.log.info("left the swarm after %d rounds (%s)", self.round, status)
        finally:
            self._release()
        if self.node.write_error is not None:
            raise self.node.write_error

    def _release(self) -> None:
        self.closed = True
        node = getattr(self, "node", None)
        if node is not None and not node.transport.closed:
            node.transport.close()
        self._context.term()  # returns once queued messages are delivered or the linger ends
        self._loop.close()

    def __enter__(self) -> "Peer":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.close("interrupted" if issubclass(kind, KeyboardInterrupt) else "failed")


class _NoTask:
    """Stands for the task in the checks shared with the command line: under the API the user's own loop
    trains, so there is no task, and ADMM's local solve is the inexact one."""

    name = "your training loop"


def _device_of(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    raise ConfigError("the model has no parameters: there is nothing to train or exchange")

