"""python -m p2ptrain.peer: one peer of a swarm, and ``Node``, the exchange engine every peer runs.

Each round: local optimizer steps on this peer's shard, send the parameters to
the out-neighbours, gather the in-neighbours' parameters of the same round
until the deadline, mix with the topology's weights (adapt-then-combine
D-PSGD), and write one line of metrics. No peer is special; there is no
coordinator.

``Node`` is handed its replica and its transport; it owns the exchange
(``exchange``), joining, metrics and checkpoints. The command-line peer
drives it with a task's local steps (``run``); the Python API (api.py) drives
it from the hooks on a user's own optimizer.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import zmq
import zmq.asyncio

from . import __version__, wire
from .algorithms import Diverged
from .config import UNBOUNDED_ROUNDS, ConfigError, PeerConfig, build_parser, given_options, resolve_peer_id
from .inbox import Inbox, Newest
from .membership import Membership
from .replica import Replica, build_replica, resolve_config
from .staging import Staging
from .training import to_device
from .results import flat_parameters, relative_error
from .storage import (
    JsonLines,
    atomic_write_bytes,
    read_json_lines,
    atomic_torch_save,
    atomic_write_json,
    remove_partial_writes,
    rewrite_json_lines,
)
from .topology import Topology, TopologyError, load_topology
from .keys import KeyFileError, load_security
from .transport import Transport, TransportError, authenticated_sender

CHECKPOINT = "checkpoint.pt"
OUTPUT_FILES = ("metrics.jsonl", "result.json", "model.pt", "algorithm.pt", "config.json", "trace.f32", "sample.txt",
                CHECKPOINT)
# Rejections logged one by one before switching to one line per thousand: a
# flood of garbage must not flood the log too.
REJECTIONS_LOGGED = 100
# Messages read per round beyond those waited for. Reading what has arrived keeps a peer aware of
# its neighbours' rounds; reading *everything* would let a flood of garbage stretch one round past
# the neighbours' deadlines (they would then drop this peer from their mix).
DRAIN_LIMIT = 256
# Seconds between a joining peer's state requests while no answer has come.
STATE_REQUEST_INTERVAL = 0.5


def message_contract(run_id: str, fingerprint: str, senders: frozenset[str], algorithm, period: int,
                     state_specs: tuple[wire.TensorSpec, ...]) -> wire.Contract:
    """What this peer accepts: its algorithm's params messages (one layout per fragment) and state answers
    (``state_specs``: the whole model in its own precision)."""
    layouts = tuple(wire.specs_of(tensors) for tensors in algorithm.message_layouts())
    if len(layouts) == 1:
        return wire.Contract(run_id, fingerprint, senders, layouts[0], state_specs=state_specs)
    return wire.Contract(run_id, fingerprint, senders, state_specs, fragments=layouts, period=period,
                         state_specs=state_specs)


class Node:
    """One peer's exchange with its neighbours, given its replica and its transport.

    The constructor does no I/O; ``start`` prepares the run directory (and restores a checkpoint
    with --resume), ``finish`` writes the final model and result and closes the transport."""

    def __init__(self, config: PeerConfig, topology: Topology, replica: Replica, transport: Transport,
                 clock=time.monotonic):
        self.config = config
        self.clock = clock
        self.topology = topology
        self.id = replica.peer_id
        self.log = logging.LoggerAdapter(logging.getLogger("p2ptrain.peer"), {"peer": self.id})
        self.out = Path(config.out or Path("runs") / config.run_id / self.id)
        self.replica = replica
        self.model, self.algorithm = replica.model, replica.algorithm
        self.transport = transport
        self.staging = Staging(replica.device, always=config.staging == "always")
        self.reference = _load_reference(config.reference, self.model) if config.reference else None

        # The fingerprint covers the whole model in its own precision; the agreement says how it travels.
        state_specs = wire.specs_of(self.algorithm.state_tensors())
        self.fingerprint = wire.fingerprint(state_specs, replica.agreement)
        self.in_neighbours = self.topology.in_neighbours(self.id)
        self.out_neighbours = self.topology.out_neighbours(self.id)
        self.contract = message_contract(config.run_id, self.fingerprint, frozenset(self.in_neighbours),
                                         self.algorithm, topology.period, state_specs)
        self.inbox = Inbox(rounds=config.rounds)
        self.newest = Newest(config.max_staleness)  # async mode files messages here instead
        absent = config.absent_peers()
        if absent - set(self.topology.ids):
            raise ConfigError(f"--absent {config.absent}: {', '.join(sorted(absent - set(self.topology.ids)))} "
                              f"not in the topology (peers: {', '.join(self.topology.ids)})")
        # Peers known not to be running yet are suspected from the start, so round 0 does not wait for them.
        self.membership = Membership(frozenset(self.in_neighbours), suspected=set(absent & set(self.in_neighbours)))
        self._answered: dict[str, int] = {}  # state requests answered: asker -> round
        self.round_now = 0
        self.start_round = 0
        self.joined = False
        self.rejected: Counter[str] = Counter()
        # Rejections by who sent them: the authenticated peer id, or "unauthenticated" without keys.
        self.rejected_from: Counter[str] = Counter()
        self.send_dropped = 0
        self.rounds_completed = 0
        self.last: dict = {}  # the last round's metrics record
        self.evaluation: dict[str, float] = {}  # the task's latest held-out figures
        self.metrics = None
        self._trace = None
        self.started = self.clock()

    def start(self) -> None:
        """Prepare the run directory: refuse an earlier run's outputs (unless --overwrite or --resume),
        restore the checkpoint with --resume, record the configuration, open the metrics."""
        config = self.config
        _prepare_output(self.out, config.overwrite, config.resume)
        self.start_round = self._restore() if config.resume else 0
        atomic_write_json(self.out / "config.json", {
            "config": config.to_dict(),
            "topology": {"name": self.topology.name, "size": self.topology.size,
                         "in_neighbours": list(self.in_neighbours), "out_neighbours": list(self.out_neighbours),
                         "period": self.topology.period,
                         "mixing_rows": [self.topology.mixing_row(self.id, r) for r in range(self.topology.period)]},
            "fingerprint": self.fingerprint,
            "agreement": self.replica.agreement,
            "task": _task_name(self.replica.task),
            "device": str(self.replica.device),
            # Public only: a secret key never leaves its file.
            "curve_public_key": self.transport.public_key,
            "shard_size": self.replica.shard_size,
            "versions": {"p2ptrain": __version__, "python": platform.python_version(), "torch": torch.__version__,
                         "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()},
        })
        self.metrics = JsonLines(self.out / "metrics.jsonl")
        self._trace = self._open_trace() if config.trace_every else None
        if self.replica.attack:
            self.log.warning("attacking its neighbours (--attack %s): it sends corrupted parameters",
                             config.attack)
        if not self.topology.doubly_stochastic:
            self.log.warning("the mixing weights of %s are not doubly stochastic: gossip will not keep the "
                             "mean of the peers' parameters", self.topology.name)
        self.log.info("listening on %s; in-neighbours %s; out-neighbours %s; %s training examples on %s",
                      self.topology.peer(self.id).bind, ",".join(self.in_neighbours),
                      ",".join(self.out_neighbours), self.replica.shard_size, self.replica.device)

    def _restore(self) -> int:
        """Load OUT/checkpoint.pt if there is one; returns the round to continue from."""
        for leftover in remove_partial_writes(self.out / CHECKPOINT):
            self.log.warning("removed %s, a checkpoint whose writing was interrupted", leftover.name)
        path = self.out / CHECKPOINT
        if not path.exists():
            self.log.info("--resume: no checkpoint in %s; starting from round 0", self.out)
            rewrite_json_lines(self.out / "metrics.jsonl", lambda record: False)
            return 0
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["fingerprint"] != self.fingerprint or state["run_id"] != self.config.run_id:
            raise ConfigError(f"{path} belongs to another run (run id {state['run_id']}, model fingerprint "
                              f"{state['fingerprint']}); resume with that run's options, or use another --out")
        self.model.load_state_dict(state["model"])
        if self.replica.trainer is not None:
            self.replica.trainer.load_state_dict(state["trainer"])
        try:
            self.algorithm.load_state_dict(to_device(state["algorithm"], self.replica.device))
        except ValueError as error:
            raise ConfigError(str(error)) from None
        torch.set_rng_state(state["torch_rng"])
        self.rejected.update(state["rejected"])
        self.inbox.stale, self.send_dropped = state["stale_dropped"], state["send_dropped"]
        self.membership.suspected = set(state["suspected"])
        self.inbox.current_round = self.rounds_completed = state["round"]
        self.last, self.evaluation = state["last"], state["evaluation"]
        # Rounds after the checkpoint will run again; their old lines would be duplicates.
        rewrite_json_lines(self.out / "metrics.jsonl", lambda record: record["round"] < state["round"])
        self.log.info("resumed from the checkpoint of round %d", state["round"])
        return state["round"]

    def _open_trace(self):
        path = self.out / "trace.f32"
        if not self.config.resume or not path.exists():
            return open(path, "wb")
        # Keep the rows of the rounds before the checkpoint, as the metrics do.
        traced = [r["traced"] for r in read_json_lines(self.out / "metrics.jsonl") if r.get("traced")]
        trace = open(path, "r+b")
        trace.truncate(sum(traced) * 4)  # float32 values
        trace.seek(0, 2)
        return trace

    def checkpoint(self, rounds_done: int) -> None:
        self.log.info("writing checkpoint at round %d", rounds_done)
        atomic_torch_save({
            "round": rounds_done,
            "run_id": self.config.run_id,
            "fingerprint": self.fingerprint,
            "model": self.model.state_dict(),
            "trainer": self.replica.trainer.state_dict() if self.replica.trainer is not None else {},
            "algorithm": self.algorithm.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "rejected": dict(self.rejected),
            "stale_dropped": self.inbox.stale,
            "send_dropped": self.send_dropped,
            "suspected": sorted(self.membership.suspected),
            "last": self.last,
            "evaluation": self.evaluation,
        }, self.out / CHECKPOINT, self._pause_before_rename if self.config.checkpoint_write_delay else None)

    def _pause_before_rename(self) -> None:
        self.log.warning("checkpoint written to a temporary file; pausing %.1fs before putting it in place "
                         "(--checkpoint-write-delay)", self.config.checkpoint_write_delay)
        time.sleep(self.config.checkpoint_write_delay)

    async def run(self) -> None:
        if self.config.join:
            self.start_round = self.rounds_completed = await self._join()
        round_ = self.start_round
        while round_ < self.config.rounds:
            # Let other tasks run: peers sharing one event loop (--in-process) would otherwise run
            # their asynchronous rounds one peer at a time, never mixing with each other.
            await asyncio.sleep(0)
            await self.run_round(round_)
            self.rounds_completed = round_ + 1
            round_ = self._next_round(round_ + 1)

    def _next_round(self, round_: int) -> int:
        if self.config.mode != "async":
            return round_
        target = min(self.newest.catch_up(round_), self.config.rounds)
        if target != round_:
            self.log.warning("round %d is more than %d rounds behind the neighbours (newest: %s); jumping to "
                             "round %d", round_, self.config.max_staleness,
                             ",".join(f"{j}@{r}" for j, r in sorted(self.newest.rounds().items())), target)
        return target

    async def _join(self) -> int:
        """Ask the neighbours for their state; load the first answer. Returns the round to continue from."""
        answerers = [j for j in self.out_neighbours if j in self.in_neighbours]
        if not answerers:
            raise ConfigError(f"--join: {self.id} has no neighbour linked both ways in {self.topology.name}, so "
                              "nobody could answer a state request; start it without --join")
        request = wire.encode(kind="state_request", sender=self.id, run_id=self.config.run_id, round=0,
                              fingerprint=self.fingerprint, tensors={})
        self.log.info("joining: asking %s for their state", ",".join(answerers))
        deadline = self.clock() + self.config.startup_timeout
        while (remaining := deadline - self.clock()) > 0:
            # Ask again now and then: a neighbour's queue towards this peer may have been full of the
            # parameters it sent while this peer was not running, and then its answer was dropped.
            for neighbour in answerers:
                self.transport.send(neighbour, request)
            frames = await self.transport.receive(min(remaining, STATE_REQUEST_INTERVAL))
            if frames is None:
                continue
            message = self._decode(frames)
            if message is None:
                continue
            if message.kind != "state":
                self._take_in(message)
                continue
            state = self.staging.to_device(message.tensors)
            for name, tensor in self.algorithm.parameters.items():
                # A copy: on the CPU the received tensor lives in the message's frame buffer.
                tensor.data = state[name].clone()
            self.inbox.skip_to(message.round)
            self.joined = True
            self.log.info("joined: took the state of %s, continuing from round %d", message.sender, message.round)
            return message.round
        raise ConfigError(f"--join: no answer from {', '.join(answerers)} within {self.config.startup_timeout}s "
                          f"(--startup-timeout). Is the swarm running, with run id {self.config.run_id} and this "
                          "peer in its topology? Start without --join to train from round 0")

    async def run_round(self, round_: int) -> None:
        """One round of the command-line peer: the task's local steps, then the exchange."""
        computing = self.clock()
        self.round_now = round_
        loss = self.replica.train(round_)
        if self.config.min_compute_seconds:
            await asyncio.sleep(max(0.0, computing + self.config.min_compute_seconds - self.clock()))
        lr = self.replica.trainer.optimizer.param_groups[0]["lr"]
        await self.exchange(round_, loss, lr)

    async def exchange(self, round_: int, loss: float | None = None, lr: float | None = None) -> None:
        """Send this round's tensors, gather the neighbours' until the deadline, mix, write the metrics
        (``loss`` and ``lr`` are the local steps', for the record)."""
        config = self.config
        self.round_now = round_
        outgoing = self.algorithm.outgoing(round_)
        frames = wire.encode(kind="params", sender=self.id, run_id=config.run_id, round=round_,
                             fingerprint=self.fingerprint, tensors=self.staging.to_host(self.replica.sent(round_)),
                             fragment=self.algorithm.fragment_at(round_))
        bytes_sent = 0
        for neighbour in self.topology.out_neighbours(self.id, round_):
            if self.transport.send(neighbour, frames, copy=self.staging.copy_on_send):
                bytes_sent += wire.frame_bytes(frames)
            else:
                self.send_dropped += 1

        # The first rounds of a run, or of a resumed one, wait for neighbours that may be starting too:
        # a late peer holds up its neighbours' round 0, they hold up their neighbours' round 1, and so
        # on, one hop per round, up to the diameter. A peer that joined a running swarm knows it is up.
        first = round_ == self.start_round
        starting = round_ < self.start_round + max(1, self.topology.diameter)
        timeout = config.startup_timeout if starting and not self.joined else config.recv_timeout
        expected = frozenset(self.topology.in_neighbours(self.id, round_))
        if config.mode == "async":
            waited, bytes_received, messages = await self._gather_newest(round_, timeout if first else 0, expected)
        else:
            waited, bytes_received, messages = await self._gather(round_, timeout, expected)
        outcome = self.membership.close_round(set(messages), expected)
        for neighbour in sorted(outcome.newly_suspected):
            if config.mode == "async":
                self.log.warning("round %d: nothing from %s newer than %d rounds; mixing without it",
                                 round_, neighbour, config.max_staleness)
            else:
                self.log.warning("round %d: no parameters from %s within %.1fs; going on without it",
                                 round_, neighbour, timeout)
        for neighbour in sorted(outcome.recovered):
            self.log.info("round %d: heard from %s again", round_, neighbour)

        received = {sender: self.staging.to_device(message.tensors) for sender, message in messages.items()}
        distance = _relative_distance_to_mean(self.algorithm.parameters_in(outgoing),
                                              [self.algorithm.parameters_in(m) for m in received.values()])
        self.algorithm.update(round_, received)

        record = {
            "round": round_,
            "time": round(self.clock() - self.started, 4),
            "unix_time": round(time.time(), 4),
            "lr": lr,
            "loss": loss,
            "neighbour_distance": distance,
            "bytes_sent": bytes_sent,
            "bytes_received": bytes_received,
            "wait_seconds": round(waited, 6),
            "heard": sorted(outcome.heard),
            "missing": sorted(outcome.missing),
            "send_dropped": self.send_dropped,
            "stale_dropped": self.inbox.stale,
            "too_far_ahead": self.inbox.too_far_ahead,
            "rejected": dict(self.rejected),
        } | self.algorithm.metrics()
        if config.mode == "async":
            record["staleness"] = {sender: round_ - message.round for sender, message in sorted(messages.items())}
        if self.reference is not None:
            record["rel_error"] = relative_error(self.model.state_dict(), self.reference)
        last_round = round_ == config.rounds - 1
        if config.trace_every and ((round_ + 1) % config.trace_every == 0 or last_round):
            row = flat_parameters(self.model.state_dict()).float().cpu().numpy()
            self._trace.write(row.tobytes())
            self._trace.flush()
            record["traced"] = row.size  # values per trace row
        if (round_ + 1) % config.eval_every == 0 or last_round:
            self.evaluation = self.replica.evaluate()
            record |= self.evaluation
        self.metrics.write(record)
        self.last = record
        if config.checkpoint_every and (round_ + 1) % config.checkpoint_every == 0 and not last_round:
            self.checkpoint(round_ + 1)
        if (round_ + 1) % config.log_every == 0 or last_round:
            self.log.info("round %d%s loss %s %s heard %d/%d waited %.3fs", round_ + 1,
                          "" if config.rounds == UNBOUNDED_ROUNDS else f"/{config.rounds}",
                          "-" if loss is None else f"{loss:.4f}",
                          _figures(self.evaluation), len(outcome.heard), len(expected), waited)

    async def _gather(self, round_: int, timeout: float,
                      expected: frozenset[str]) -> tuple[float, int, dict[str, wire.Message]]:
        """Collect round ``round_``'s messages until every awaited neighbour is heard or the deadline passes."""
        start = self.clock()
        bytes_received = await self._read_while(
            lambda: self.membership.awaited(self.inbox.senders(round_) | self.inbox.moved_on(round_), expected),
            start + timeout)
        return self.clock() - start, bytes_received, self.inbox.take(round_)

    async def _read_while(self, waiting, deadline: float) -> int:
        """File messages while ``waiting()`` is true and the deadline has not passed, then what else
        has already arrived (see _drain); returns the bytes read."""
        bytes_received = 0
        while waiting() and (remaining := deadline - self.clock()) > 0:
            frames = await self.transport.receive(remaining)
            if frames is None:
                break
            bytes_received += wire.frame_bytes(frames)
            self._file(frames)
        # Take in what else has already arrived, without waiting: when nobody is awaited
        # (all suspected, or moved on) the loop above reads nothing, and a peer that never
        # reads would never learn that its neighbours are back or where they are.
        return bytes_received + await self._drain()

    async def _drain(self) -> int:
        """Read up to DRAIN_LIMIT messages that have already arrived; returns their bytes."""
        bytes_received = 0
        for _ in range(DRAIN_LIMIT):
            frames = await self.transport.receive(0)
            if frames is None:
                break
            bytes_received += wire.frame_bytes(frames)
            self._file(frames)
        return bytes_received

    async def _gather_newest(self, round_: int, timeout: float,
                             expected: frozenset[str]) -> tuple[float, int, dict[str, wire.Message]]:
        """Asynchronous mode: read what has arrived and take each neighbour's newest fresh parameters.
        Only a first round waits (up to ``timeout``), until every neighbour has been heard once."""
        start = self.clock()
        bytes_received = await self._read_while(lambda: self.membership.awaited(self.newest.senders(), expected),
                                                start + timeout)
        return self.clock() - start, bytes_received, self.newest.fresh(round_, expected)

    def _file(self, frames) -> None:
        message = self._decode(frames)
        if message is not None:
            self._take_in(message)

    def _decode(self, frames) -> wire.Message | None:
        """The checked message, or None (counted by reason, and logged) if it must not be used."""
        authenticated = authenticated_sender(frames) if self.transport.secure else None
        try:
            message = wire.decode(frames, self.contract)
            if self.transport.secure and message.sender != authenticated:
                raise Impersonation(f"the header names {message.sender!r}, the connection's key is {authenticated!r}'s")
        except wire.WireError as error:
            self._count_rejection(error, authenticated or "unauthenticated")
            return None
        return message

    def _count_rejection(self, error: wire.WireError, source: str) -> None:
        self.rejected[error.reason] += 1
        self.rejected_from[source] += 1
        total = sum(self.rejected.values())
        if total <= REJECTIONS_LOGGED or total % 1000 == 0:
            self.log.warning("rejected message #%d from %s (%s): %s", total, source, error.reason, error)
        if self.rejected_from[source] in (10, 100, 1000, 10_000, 100_000):
            self.log.warning("%s has sent %d messages that were rejected", source, self.rejected_from[source])

    def _take_in(self, message: wire.Message) -> None:
        # Any message shows its sender is alive, except, in async mode, parameters too old to be
        # mixed: counting those would mark a neighbour that is catching up alive and suspected by turns.
        if self.config.mode != "async" or message.kind != "params" or \
                self.round_now - message.round <= self.config.max_staleness:
            self.membership.saw(message.sender)
        if message.kind == "state_request":
            self._answer_state_request(message.sender)
        elif message.kind == "state":
            # Only a joining peer asks (and reads the answer itself); a second answer comes too late.
            self.log.debug("ignored a state message from %s: not joining", message.sender)
        elif self.config.mode == "async":
            self.newest.put(message)
        elif self.inbox.put(message) == "stale":
            self.log.debug("dropped stale round-%d message from %s", message.round, message.sender)

    def _answer_state_request(self, asker: str) -> None:
        """Send ``asker`` this peer's parameters and the round to continue from (the next one)."""
        round_ = self.round_now + 1
        if self._answered.get(asker) == round_:
            return  # one answer per asker per round: repeated requests cost nothing more
        if asker not in self.out_neighbours:
            self.log.warning("state request from %s, which this peer does not send to; not answered", asker)
            return
        frames = wire.encode(kind="state", sender=self.id, run_id=self.config.run_id, round=round_,
                             fingerprint=self.fingerprint, tensors=self.staging.to_host(self.algorithm.state_tensors()))
        if self.transport.send(asker, frames):
            self._answered[asker] = round_
            self.log.info("answered a state request from %s: continue from round %d", asker, round_)
        else:
            self.log.debug("could not answer %s's state request: its queue is full; it will ask again", asker)

    def finish(self, status: str) -> None:
        """Write the final model and result, then release the sockets. Safe to call once per peer."""
        atomic_torch_save(self.model.state_dict(), self.out / "model.pt")
        sample = self.replica.sample()
        if sample is not None:
            atomic_write_bytes(self.out / "sample.txt", sample.encode("utf-8"))
        if self.algorithm.state_dict():
            atomic_torch_save(self.algorithm.state_dict(), self.out / "algorithm.pt")
        atomic_write_json(self.out / "result.json", {
            "peer": self.id,
            "status": status,
            "rounds": self.config.rounds,
            "rounds_completed": self.rounds_completed,
            "start_round": self.start_round,
            # Readers look these up by name; a task that measures neither leaves them null.
            "test_accuracy": None,
            "test_loss": None,
        } | self.replica.evaluate() | {
            "train_loss": self.last.get("loss"),
            "wall_seconds": self.clock() - self.started,
            "rejected": dict(self.rejected),
            "rejected_from": dict(self.rejected_from),
            "secure": self.transport.secure,
            "stale_dropped": self.inbox.stale,
            "too_far_ahead": self.inbox.too_far_ahead,
            "duplicates": self.inbox.duplicates,
            "send_dropped": self.send_dropped,
        })
        if self.metrics is not None:
            self.metrics.close()
        if self._trace is not None:
            self._trace.close()
        self.transport.close(abandon=self.membership.suspected)


def _figures(evaluation: dict[str, float]) -> str:
    """The latest held-out figures for a progress line: accuracy as before, or whatever the task measures."""
    if not evaluation:
        return "acc -"
    if "test_accuracy" in evaluation:
        return f"acc {evaluation['test_accuracy']:.4f}"
    return " ".join(f"{name} {value:.4f}" for name, value in evaluation.items())


def _task_name(task) -> str | None:
    return None if task is None else getattr(task, "name", type(task).__name__)


class Impersonation(wire.WireError):
    """A listed key sending under another peer's id."""

    reason = "impersonation"


def _relative_distance_to_mean(own: dict[str, torch.Tensor], neighbours: list[dict[str, torch.Tensor]]) -> float | None:
    """||x_i - mean_j x_j|| / ||x_i|| over the neighbours heard this round, before mixing."""
    if not neighbours:
        return None
    mine = flat_parameters(own)
    mean = sum(flat_parameters(n) for n in neighbours) / len(neighbours)
    return float(torch.linalg.vector_norm(mine - mean) / max(float(torch.linalg.vector_norm(mine)), 1e-30))


def _load_reference(path: str, model: torch.nn.Module) -> torch.Tensor:
    try:
        reference = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as error:
        raise ConfigError(f"--reference {path}: cannot read it ({error}); pass a file written by torch.save") from None
    size = sum(p.numel() for p in model.parameters())
    if not isinstance(reference, torch.Tensor) or reference.numel() != size:
        raise ConfigError(f"--reference {path} is not a tensor of {size} values, the size of this model")
    return reference.double().reshape(-1)


def _prepare_output(out: Path, overwrite: bool, resume: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        return
    existing = [name for name in OUTPUT_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{out} already holds the outputs of a run ({', '.join(existing)}); "
            "pass another --out, --resume to continue it, or --overwrite to replace it (in the Python API: "
            "out=..., resume=True or overwrite=True)"
        )
    for name in existing:
        (out / name).unlink()


def open_node(config: PeerConfig, context: zmq.asyncio.Context, topology: Topology | None = None,
              replica: Replica | None = None) -> Node:
    """A started Node: the peer id resolved, its replica built (unless given), its port bound, its run
    directory prepared. Files are touched only once the port is ours: a peer that cannot start
    leaves a run as it was."""
    topology = topology or load_topology(config.topology)
    peer_id = resolve_peer_id(config.peer, topology.ids)
    config = config.replace(peer=peer_id, run_id=config.run_id or f"{topology.name}-{config.algo}-s{config.seed}")
    torch.set_num_threads(config.threads)
    replica = replica or build_replica(config, topology, peer_id)
    largest = max(spec.nbytes for tensors in (*replica.algorithm.message_layouts(), replica.algorithm.state_tensors())
                  for spec in wire.specs_of(tensors))
    transport = Transport(
        context,
        topology.peer(peer_id).bind,
        {j: topology.peer(j).endpoint for j in topology.out_neighbours(peer_id)},
        linger_seconds=min(config.recv_timeout, 5.0),
        # ZeroMQ drops (and disconnects) any frame over twice the largest one a peer sends,
        # before it is read into memory; the decoder checks exact sizes below that.
        max_message_bytes=2 * max(wire.MAX_HEADER_BYTES, largest),
        security=_security(config, topology, peer_id),
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
    logging.LoggerAdapter(logging.getLogger("p2ptrain.peer"), {"peer": peer_id}).warning(
        "no --keys: connections are neither encrypted nor authenticated; anyone who can reach %s can send this "
        "peer messages (docs/security.md)", topology.peer(peer_id).bind)
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
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    own_signals = signals is None
    if own_signals:
        signals = []

        def on_signal(signum: int) -> None:
            signals.append(signum)
            task.cancel()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
    peer = None
    try:
        peer = open_node(config, context, topology)
        await peer.run()
        peer.finish("completed")
        peer.log.info("finished %d rounds in %.1fs", peer.rounds_completed, peer.clock() - peer.started)
        return 0
    except Diverged as error:
        peer.log.error("stopping: %s", error)
        peer.finish("diverged")
        return 3
    except asyncio.CancelledError:
        if not signals:
            raise
        task.uncancel()
        if peer is not None:
            peer.log.warning("stopped by %s after %d rounds", signal.Signals(signals[0]).name, peer.rounds_completed)
            peer.finish("interrupted")
        return 128 + signals[0]
    except Exception:
        if peer is not None:
            peer.finish("failed")
        raise
    finally:
        if own_signals:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
        if peer is not None and not peer.transport.closed:
            peer.transport.close()
        if own_context:
            context.term()  # returns once queued messages are delivered or the linger ends


def _default_peer_field(record: logging.LogRecord) -> bool:
    # Records from other libraries (asyncio, zmq) carry no peer id.
    if not hasattr(record, "peer"):
        record.peer = "-"
    return True


def configure_logging(level: str, path: Path | None = None) -> None:
    """Peer log lines ("time peer level message") to standard error, or appended to ``path``."""
    handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(peer)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.addFilter(_default_peer_field)
    logging.basicConfig(level=level, handlers=[handler], force=True)


def main(argv: list[str] | None = None) -> int:
    everything, explicit = given_options(build_parser, argv)
    configure_logging(everything["log_level"])
    try:
        config_file = explicit.pop("config", "")
        config = resolve_config(explicit, PeerConfig.from_file(config_file) if config_file else None)
        if not config.topology:
            raise ConfigError("no topology: pass --topology FILE (e.g. topologies/ring8.toml), or --config FILE")
        return asyncio.run(run_peer(config))
    except (ConfigError, TopologyError, TransportError, KeyFileError) as error:
        print(f"p2ptrain.peer: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
