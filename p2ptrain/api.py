"""The Python API: your own training script as one peer of a swarm.

    peer = p2ptrain.Peer("topologies/ring4.toml", model, optimizer, local_steps=4, keys="keys/ring4")
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
import signal
import threading
import weakref
from pathlib import Path

import torch
import zmq.asyncio

from .algorithms.base import Algorithm, Diverged
from .config import UNBOUNDED_ROUNDS, ConfigError, PeerConfig, after_launcher_restart, resolve_peer_id
from .node import Node
from .peer import log_handler
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
        _check_api_call(model, optimizer, options)
        if log_level is not None:
            _log_to_stderr(log_level)
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
        self._attached: list[torch.optim.Optimizer] = []
        self._steps_in_round = 0
        self.closed = False
        # A Peer dropped without close() still releases its sockets (a context whose sockets stay open
        # would block the collector that frees it, for good); this runs before any of its parts is freed.
        self._opened: list[Node] = []
        self._signals = _StopOnSigterm()
        self._release_once = weakref.finalize(self, _release_resources, self._opened, self._context, self._loop,
                                              self._signals)
        try:
            self.node: Node = self._loop.run_until_complete(
                self._open(config, topology, model, device, set_threads="threads" in options))
            self._opened.append(self.node)
            if config.join:
                self._loop.run_until_complete(self.node.join())
            self.round = self.node.start_round
            if optimizer is not None:
                self.attach(optimizer)
        except BaseException:
            self._release()
            raise
        self._signals.install()

    async def _open(self, config: PeerConfig, topology: Topology, model: torch.nn.Module,
                    device: torch.device, set_threads: bool) -> Node:
        # Sockets are made on the loop that will await them.
        peer_id = resolve_peer_id(config.peer, topology.ids)
        algorithm = build_algorithm(config, topology, peer_id, model, config.admm_penalty)
        replica = Replica(peer_id, None, model, None, algorithm, device, config.lr_at, config.local_steps,
                          agreement(config, None))
        # The loop is ours; torch's threads are the script's own unless threads= is given.
        return open_node(config, self._context, topology, replica, alone_on_loop=True, set_threads=set_threads)

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
        self._check_open()
        _check_optimizer(optimizer)
        if any(optimizer is attached for attached in self._attached):
            raise RuntimeError("this optimizer is already attached to this Peer: attached twice, each of its steps "
                               "would count twice")
        self._hooks += [optimizer.register_step_pre_hook(self._before_step),
                        optimizer.register_step_post_hook(self._after_step)]
        self._attached.append(optimizer)
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
        self.node.replica.follow_reassigned_buffers()
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
        loss, lr = _number("loss", loss), _number("lr", lr)
        if self.done:
            raise RuntimeError(f"this Peer has made its {self.node.config.rounds} rounds (peer.done): its neighbours "
                               "have stopped exchanging; end the loop when peer.done is True, or give more rounds")
        algorithm = self.node.algorithm
        if algorithm.takes_steps and type(algorithm).before_step is not Algorithm.before_step:
            raise ConfigError(f"{algorithm.name} adds its own terms to the gradients before every optimizer step: "
                              "hand the Peer your optimizer (Peer(..., optimizer) or peer.attach(optimizer)) "
                              "instead of calling exchange()")
        algorithm.begin_local(self.round)  # push-sum's and exact ADMM's round needs both, gossip's neither
        self.node.replica.follow_reassigned_buffers()
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
        self._hooks, self._attached = [], []
        try:
            self.node.finish(status)
            self.node.log.info("left the swarm after %d rounds (%s)", self.round, status)
        finally:
            self._release()
        if self.node.write_error is not None:
            raise self.node.write_error

    def _release(self) -> None:
        self.closed = True
        self._release_once()

    def __enter__(self) -> "Peer":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        elif issubclass(kind, Diverged):
            self.close("diverged")
        elif issubclass(kind, KeyboardInterrupt) or (issubclass(kind, SystemExit) and error.code == _SIGTERM_EXIT):
            self.close("interrupted")
        else:
            self.close("failed")


# SIGTERM (a launcher stopping its processes: torchrun when another rank failed) ends an API peer's
# process with this code, as it ends a command-line peer's.
_SIGTERM_EXIT = 128 + signal.SIGTERM


class _StopOnSigterm:
    """While a Peer is open, SIGTERM raises SystemExit(143) in the training script, as Ctrl-C raises
    KeyboardInterrupt: a ``with Peer(...)`` block (or a ``finally`` that closes the Peer) then writes the
    model and result before the process ends. Only where nothing else handles SIGTERM (the default
    handler) and in the main thread (the only one that may set handlers). Every open Peer holds it; the
    default comes back when the last one is closed or freed."""

    holders = 0  # the Peers of this process holding the handler

    def __init__(self):
        self.holding = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        ours = signal.getsignal(signal.SIGTERM) is _raise_sigterm_exit
        if not ours and (_StopOnSigterm.holders or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
            return  # the script's own handler (set before, or since the other Peers were opened)
        if not ours:
            signal.signal(signal.SIGTERM, _raise_sigterm_exit)
        _StopOnSigterm.holders += 1
        self.holding = True

    def restore(self) -> None:
        if not self.holding:
            return
        self.holding = False
        _StopOnSigterm.holders -= 1
        if not _StopOnSigterm.holders and signal.getsignal(signal.SIGTERM) is _raise_sigterm_exit:
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            except ValueError:  # freed by the collector in another thread: only the main thread may set it
                pass


def _raise_sigterm_exit(signum: int, frame) -> None:
    raise SystemExit(_SIGTERM_EXIT)


def _release_resources(opened: list[Node], context: zmq.asyncio.Context, loop: asyncio.AbstractEventLoop,
                       signals: _StopOnSigterm) -> None:
    """Close the node's sockets, then the context (it returns once queued messages are delivered or the
    linger ends) and the loop, and give SIGTERM back. Once, by close() or when a Peer never closed is freed."""
    signals.restore()
    for node in opened:
        if not node.transport.closed:
            node.transport.close()
    context.term()
    loop.close()


# The command line's options that the training script decides under the API (its optimizer, its data):
# given to a Peer they would do nothing, so they are refused.
_SCRIPT_DECIDES = {
    "lr": "your optimizer's learning rate", "momentum": "your optimizer's momentum",
    "weight_decay": "your optimizer's weight decay", "lr_schedule": "your own scheduler",
    "batch_size": "your DataLoader", "task": "your training loop", "dataset": "your DataLoader",
    "model": "the model you pass", "hidden": "the model you pass", "partition": "your DataLoader",
    "task_args": "your training loop", "eval_every": "your training loop",
}


def _check_api_call(model, optimizer, options: dict) -> None:
    """Refuse what would otherwise fail later, or do nothing, before anything is opened."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not a {type(model).__name__}")
    if optimizer is not None:
        _check_optimizer(optimizer)
    ignored = sorted(set(options) & set(_SCRIPT_DECIDES))
    if ignored:
        raise ConfigError(f"{', '.join(ignored)}: under the Python API {_SCRIPT_DECIDES[ignored[0]]} decides "
                          f"{'this' if len(ignored) == 1 else 'these'}, and a Peer would ignore "
                          f"{'it' if len(ignored) == 1 else 'them'}; drop {'it' if len(ignored) == 1 else 'them'} "
                          "from the Peer's arguments")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError("a Peer runs its exchanges on an event loop of its own, and this code already runs in one "
                       "(an async function, a notebook): make and use the Peer outside it, e.g. in a plain "
                       "script, or from a thread (threading.Thread) of its own")


def _check_optimizer(optimizer) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer):
        hint = (" (a learning-rate scheduler: pass its optimizer)"
                if isinstance(optimizer, torch.optim.lr_scheduler.LRScheduler) else "")
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, not a {type(optimizer).__name__}{hint}")


def _number(name: str, value) -> float | None:
    """A figure for the metrics line: a Python or a one-element tensor's number, refused before the round."""
    if value is None:
        return None
    try:
        number = float(value)  # a one-element tensor too (loss.item() without the call)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a number (or a one-element tensor), not {type(value).__name__}") from None
    return number


def _log_to_stderr(level: str) -> None:
    """p2ptrain's log lines at ``level`` to standard error, through a handler of its own on the "p2ptrain"
    logger; the script's own logging (the root logger's handlers and level) is left as it is."""
    logger = logging.getLogger("p2ptrain")
    logger.setLevel(level)
    if not any(getattr(handler, "p2ptrain_stderr", False) for handler in logger.handlers):
        handler = log_handler()
        handler.p2ptrain_stderr = True
        logger.addHandler(handler)
        logger.propagate = False  # shown once, not again by a handler of the root logger


class _NoTask:
    """Stands for the task in the checks shared with the command line: under the API the user's own loop
    trains, so there is no task, and ADMM's local solve is the inexact one."""

    name = "your training loop"


def _device_of(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    raise ConfigError("the model has no parameters: there is nothing to train or exchange")

