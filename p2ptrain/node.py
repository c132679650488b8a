"""``Node``: one peer's exchange with its neighbours, the engine every peer runs (running.py starts one
over ZeroMQ and runs it to its end).

A round, ``exchange``: send this round's tensors to the out-neighbours, gather
the in-neighbours' (gather.py: by round until the deadline, or each one's
newest), mix with the topology's weights (adapt-then-combine D-PSGD), then
keep the books: a metrics line, the trace, evaluations, checkpoints, a
progress line. No peer is special; there is no coordinator.

A Node is handed its replica, its transport and its clock, so it runs the
same against memory.py's transport and a clock a test moves as over ZeroMQ.
The command-line peer drives it with a task's local steps (``run``); the
Python API (api.py) from the hooks on a user's own optimizer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import time
from typing import Callable

import torch
import zmq
import zmq.asyncio

from . import __version__, wire
from .config import UNBOUNDED_ROUNDS, ConfigError, PeerConfig, launch_identity, restarting_launches
from .gather import Gathered, gatherer_for
from .membership import Membership
from .replica import Replica
from .results import flat_parameters, relative_error
from .rundir import FINISHED, MetricsLine, PeerDir
from .staging import Staging
from .stats import PeerStats
from .resume import read_checkpoints
from .storage import (JsonLines, atomic_torch_save, atomic_write_bytes, atomic_write_json, read_json_lines,
                      remove_partial_writes, replace_durably, rewrite_json_lines)
from .tensors import relative_distance_to_mean
from .topology import Topology, topology_digests
from .training import to_device
from .transport import Received, Transport

# Seconds between a joining peer's state requests while no answer has come.
STATE_REQUEST_INTERVAL = 0.5


class Impersonation(wire.WireError):
    """A listed key sending under another peer's id."""

    reason = "impersonation"


def message_contract(run_id: str, fingerprint: str, senders: frozenset[str], algorithm, period: int,
                     state_specs: tuple[wire.TensorSpec, ...], topology: tuple[str, ...] = ()) -> wire.Contract:
    """What this peer accepts: its algorithm's params messages (one layout per fragment) and state answers
    (``state_specs``: the whole model in its own precision), sent with its view of the topology
    (``topology``: the digest of each round of the period)."""
    layouts = tuple(wire.specs_of(tensors) for tensors in algorithm.message_layouts())
    if len(layouts) == 1:
        return wire.Contract(run_id, fingerprint, senders, layouts[0], state_specs=state_specs, topology=topology)
    return wire.Contract(run_id, fingerprint, senders, state_specs, fragments=layouts, period=period,
                         state_specs=state_specs, topology=topology)


class Node:
    """One peer's exchange with its neighbours, given its replica, its transport and its clock.

    The constructor does no I/O; ``start`` prepares the run directory (and restores a checkpoint
    with --resume), ``finish`` writes the final model and result and closes the transport.
    ``clock`` measures deadlines and waits; ``wall_clock`` only dates the metrics lines."""

    def __init__(self, config: PeerConfig, topology: Topology, replica: Replica, transport: Transport,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time):
        self.config, self.topology, self.replica, self.transport = config, topology, replica, transport
        self.clock, self.wall_clock = clock, wall_clock
        self.id = replica.peer_id
        self.log = logging.LoggerAdapter(logging.getLogger("p2ptrain.peer"), {"peer": self.id})
        self.files = PeerDir(config.run_directory(self.id))
        self.model, self.algorithm = replica.model, replica.algorithm
        self.staging = Staging(replica.device, always=config.staging == "always")
        # Over CurveZMQ large tensors travel in chunks, which libzmq encrypts and decrypts one by one
        # (the sender encrypting the next while the receiver decrypts the last): wire.SECURE_CHUNK_BYTES.
        self.chunk = wire.SECURE_CHUNK_BYTES if transport.secure else None
        self.reference = _load_reference(config.reference, self.model) if config.reference else None
        # The fingerprint covers the whole model in its own precision; the agreement says how it travels.
        state_specs = wire.specs_of(self.algorithm.state_tensors())
        self.fingerprint = wire.fingerprint(state_specs, replica.agreement)
        self.in_neighbours = topology.in_neighbours(self.id)
        self.out_neighbours = topology.out_neighbours(self.id)
        self.answerers = topology.linked_both_ways(self.id)  # who can answer this peer's state request
        # What every message carries of this peer's graph and weights, per round of the period (PROTOCOL.md 2.6).
        self.topology_digests = topology_digests(topology)
        self.contract = message_contract(config.run_id, self.fingerprint, frozenset(self.in_neighbours),
                                         self.algorithm, topology.period, state_specs, self.topology_digests)
        # Peers known not to be running yet are suspected from the start, so round 0 does not wait for them.
        self.absent = config.absent_peers(topology.ids) & set(self.in_neighbours)
        self.membership = Membership(frozenset(self.in_neighbours), suspected=set(self.absent))
        self.stats = PeerStats()
        self.gatherer = gatherer_for(config, topology.diameter, transport, clock, self.membership, self._accept,
                                     self.stats, self.log)
        self._answered: dict[str, int] = {}  # state requests answered: asker -> round
        self._awaiting_state = False  # joining or catching up: the first state answer is this peer's
        self._state_answer: wire.Message | None = None
        self._next_catch_up = 0  # the first round at which a peer behind may ask for a state (again)
        self._state_after = -1  # a state answer is taken only for a round after this one (-1: joining)
        if self.catches_up:
            # Neighbours further behind catch up by a state: waiting for them would cost a deadline a round.
            self.gatherer.waits_for_behind = config.catch_up
        self.round_now = self.start_round = self.rounds_completed = 0
        self.last: dict = {}  # the last round's metrics record
        self.write_error: OSError | None = None  # a final output that could not be written
        self.withdrawn = False  # a join refused before its first round took back the files it made (_withdraw)
        self.evaluation: dict[str, float] = {}  # the task's latest held-out figures
        # The round whose books took ``evaluation`` (None once a neighbour's state replaced the model), and
        # whether ``run`` went on to the last round: then the result reuses that round's evaluation.
        self._evaluated_round: int | None = None
        self._run_completed = False
        self.metrics: JsonLines | None = None
        self._trace = None
        self.started = clock()

    # ---- the run directory ------------------------------------------------------------------

    def start(self) -> None:
        """Prepare the run directory: refuse an earlier run's outputs (unless --overwrite or --resume),
        restore the checkpoint with --resume, record the configuration, open the metrics."""
        try:
            self._refuse_another_launchs_outputs()
            _prepare_output(self.files, self.config.overwrite, self.config.resume, self.config.resume_round)
            for output in self.files.outputs():
                for leftover in remove_partial_writes(output):
                    self.log.warning("removed %s, left by a write that was interrupted", leftover.name)
            self.start_round = self._restore() if self.config.resume else 0
            atomic_write_json(self.files.config, self._description())
            self.metrics = JsonLines(self.files.metrics)
            self._trace = self._open_trace() if self.config.trace_every else None
        except OSError as error:
            raise ConfigError(f"--out {self.files.path}: cannot write this peer's files there ({error}); "
                              "pass a directory it can write to") from None
        self.gatherer.start_at(self.start_round)
        if self.replica.attack:
            self.log.warning("attacking its neighbours (--attack %s): it sends corrupted parameters",
                             self.config.attack)
        examples = "" if self.replica.shard_size is None else f"; {self.replica.shard_size} training examples"
        self.log.info("listening on %s; in-neighbours %s; out-neighbours %s%s on %s",
                      self.topology.peer(self.id).bind, ",".join(self.in_neighbours),
                      ",".join(self.out_neighbours), examples, self.replica.device)

    def _refuse_another_launchs_outputs(self) -> None:
        """A launcher's restart resumes (config.after_launcher_restart: --resume with --overwrite), but only
        the run its own launch began: a first start refused over an earlier launch's outputs would otherwise
        be restarted into them, and continue or overwrite a run made with other options. A --resume of the
        user's own (without --overwrite) is theirs to decide."""
        restarting = restarting_launches()
        if not (restarting and self.config.resume and self.config.overwrite and self.files.config.exists()):
            return
        try:
            recorded = json.loads(self.files.config.read_text()).get("launch")
        except (OSError, ValueError, AttributeError):
            return  # unreadable: the checks of the resume itself speak for the files
        if not isinstance(recorded, dict):
            return  # written before launches were recorded
        differ = {name: value for name, value in restarting.items() if value and recorded.get(name) != value}
        if differ:
            raise ConfigError(f"{self.files.path} holds the outputs of another launch ({_launch_text(recorded)}; "
                              f"this one is {_launch_text(differ)}), so this restart will not continue or replace "
                              "them; give this launch another --out (or run id), or remove them")

    def _description(self) -> dict:
        """config.json: the configuration and everything the run was built from."""
        topology = self.topology
        return {
            "config": self.config.to_dict(),
            "launch": launch_identity(),  # a launcher's restart continues only the outputs of its own launch
            "topology": {"name": topology.name, "size": topology.size,
                         "in_neighbours": list(self.in_neighbours), "out_neighbours": list(self.out_neighbours),
                         "period": topology.period,
                         "mixing_rows": [topology.mixing_row(self.id, r) for r in range(topology.period)]},
            "fingerprint": self.fingerprint,
            "topology_digests": list(self.topology_digests),
            "agreement": self.replica.agreement,
            "task": _task_name(self.replica.task),
            "device": str(self.replica.device),
            # Public only: a secret key never leaves its file.
            "curve_public_key": self.transport.public_key,
            "shard_size": self.replica.shard_size,
            "batch_size": self.replica.batch_size,
            "versions": {"p2ptrain": __version__, "python": platform.python_version(), "torch": torch.__version__,
                         "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()},
        }

    def _restore(self) -> int:
        """Load the checkpoint if there is one (of --resume-round, or the newest); returns the round to
        continue from."""
        checkpoints, unreadable = read_checkpoints(self.files)
        for problem in unreadable:
            self.log.warning("skipped %s", problem)
        wanted = self.config.resume_round
        if wanted >= 0 and wanted not in checkpoints:
            raise ConfigError(f"--resume-round {wanted}: {self.files.path} holds no checkpoint of that round (it has "
                              f"{', '.join(map(str, sorted(checkpoints))) or 'none'} that can be read); resume without "
                              "--resume-round to continue from the newest")
        if unreadable and not checkpoints:
            raise ConfigError(f"--resume: no checkpoint in {self.files.path} can be read ({'; '.join(unreadable)}); "
                              "restore a copy of one, or pass --overwrite to run again from round 0")
        if not checkpoints:
            self.log.info("--resume: no checkpoint in %s; starting from round 0", self.files.path)
            rewrite_json_lines(self.files.metrics, lambda record: False)
            return 0
        path, state = checkpoints[wanted if wanted >= 0 else max(checkpoints)]
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
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        # Checkpoints written before the counters had a key of their own kept three of them at the top.
        self.stats.load_state_dict(state.get("stats", state))
        # --absent still holds: a neighbour that finished, or that joins anew, sends nothing in this round.
        self.membership.suspected = set(state["suspected"]) | self.absent
        self.rounds_completed = state["round"]
        self.last, self.evaluation = state["last"], state["evaluation"]
        if path == self.files.previous_checkpoint and self.files.checkpoint.exists():
            newest_read = any(kept == self.files.checkpoint for kept, _ in checkpoints.values())
            if not newest_read:  # it is there, but could not be read: kept aside, not overwritten
                self.files.checkpoint.replace(self.files.damaged_checkpoint)
                self.log.warning("the newest checkpoint could not be read; kept as %s",
                                 self.files.damaged_checkpoint.name)
            self._rewind_checkpoints(state["round"], max(checkpoints))
        # Rounds after the checkpoint will run again; their old lines would be duplicates.
        rewrite_json_lines(self.files.metrics, lambda record: record["round"] < state["round"])
        self.log.info("resumed from the checkpoint of round %d", state["round"])
        return state["round"]

    def _rewind_checkpoints(self, resumed: int, newer: int) -> None:
        """Resuming from the previous checkpoint: the newest belongs to the rounds being abandoned (or could
        not be read). The one resumed from takes its place, so that a later --resume cannot load the abandoned
        rounds and the next checkpoint keeps two rounds of this run (the launcher looks for a round every peer
        kept)."""
        replace_durably(self.files.previous_checkpoint, self.files.checkpoint)
        if newer > resumed:
            self.log.warning("--resume-round %d: the checkpoint of round %d belonged to the rounds now run again; "
                             "the checkpoint of round %d replaced it", resumed, newer, resumed)

    def _open_trace(self):
        path = self.files.trace
        if not self.config.resume or not path.exists():
            return open(path, "wb")
        # Keep the rows of the rounds before the checkpoint, as the metrics do.
        traced = [r["traced"] for r in read_json_lines(self.files.metrics) if r.get("traced")]
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
            # A model on a GPU draws its dropout masks from the GPU's generators.
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "stats": self.stats.state_dict(),
            "suspected": sorted(self.membership.suspected),
            "last": self.last,
            "evaluation": self.evaluation,
        }, self.files.checkpoint, self._keep_previous_checkpoint)
        for leftover in remove_partial_writes(self.files.checkpoint):  # of a write whose clean-up failed
            self.log.warning("removed %s, left by a checkpoint write that failed", leftover.name)

    def _try_checkpoint(self, rounds_done: int) -> None:
        """A checkpoint, or a logged and counted failure: a full or unwritable disk must not stop a peer whose
        model is intact and whose neighbours need it. The next checkpoint round tries again; meanwhile the
        previous checkpoint stays in place (a failed write removes its temporary file)."""
        try:
            self.checkpoint(rounds_done)
        except OSError as error:  # its temporary file is removed already (storage.atomic_write_bytes)
            self.stats.checkpoint_failures += 1
            self.log.error("could not write the checkpoint of round %d to %s (%s); training on, the next "
                           "checkpoint round tries again (%d failed so far)", rounds_done, self.files.checkpoint,
                           error.strerror or error, self.stats.checkpoint_failures)

    def _keep_previous_checkpoint(self) -> None:
        """Run between writing a checkpoint and putting it in place: the one it replaces becomes the previous
        one. A crash between the two renames leaves the previous one (and the complete new temporary file)."""
        if self.config.checkpoint_write_delay:
            self._pause_before_rename()
        if self.files.checkpoint.exists():
            os.replace(self.files.checkpoint, self.files.previous_checkpoint)

    def _pause_before_rename(self) -> None:
        self.log.warning("checkpoint written to a temporary file; pausing %.1fs before putting it in place "
                         "(--checkpoint-write-delay)", self.config.checkpoint_write_delay)
        time.sleep(self.config.checkpoint_write_delay)

    # ---- rounds -----------------------------------------------------------------------------

    async def run(self) -> None:
        """The command-line peer: every round from the first (or the joined one) to the last."""
        if self.config.join:
            await self.join()
        round_ = self.start_round
        while round_ < self.config.rounds:
            # Let other tasks run: peers sharing one event loop (--in-process) would otherwise run
            # their asynchronous rounds one peer at a time, never mixing with each other.
            await _let_the_others_run()
            await self.run_round(round_)
            self.rounds_completed = round_ + 1
            round_ = await self.catch_up(self.gatherer.next_round(round_))
        self._run_completed = True

    async def run_round(self, round_: int) -> None:
        """One round of the command-line peer: the task's local steps, then the exchange."""
        computing = self.clock()
        self.round_now = round_
        loss = self.replica.train(round_)
        if self.config.min_compute_seconds:
            await asyncio.sleep(max(0.0, computing + self.config.min_compute_seconds - self.clock()))
        lr = self.replica.trainer.optimizer.param_groups[0]["lr"]
        await _let_the_others_run()
        await self.exchange(round_, loss, lr)

    async def exchange(self, round_: int, loss: float | None = None, lr: float | None = None) -> None:
        """Send this round's tensors, gather the neighbours', mix, keep the books (``loss`` and ``lr``
        are the local steps', for the record)."""
        self.round_now = round_
        outgoing = self.algorithm.outgoing(round_)
        bytes_sent = self._send(round_, outgoing)
        await _let_the_others_run()  # peers on this loop send too: their messages are then here to read
        expected = frozenset(self.topology.in_neighbours(self.id, round_))
        gathered = await self.gatherer.gather(round_, expected)
        distance = self._mix(round_, outgoing, gathered)
        self._keep_books(round_, self._metrics_line(round_, loss, lr, distance, bytes_sent, gathered), len(expected))

    def _send(self, round_: int, outgoing: dict[str, torch.Tensor]) -> int:
        """Queue this round's message for every out-neighbour; returns the bytes queued."""
        frames = wire.encode(kind="params", sender=self.id, run_id=self.config.run_id, round=round_,
                             fingerprint=self.fingerprint,
                             tensors=self.staging.to_host(self.replica.as_sent(outgoing, round_)),
                             fragment=self.algorithm.fragment_at(round_), topology=self.topology_digest(round_),
                             chunk=self.chunk)
        bytes_sent, size, copy = 0, wire.frame_bytes(frames), self.staging.copy_on_send
        for neighbour in self.topology.out_neighbours(self.id, round_):
            if self.transport.send(neighbour, frames, copy=copy):
                bytes_sent += size
            else:
                self.stats.send_dropped += 1
        return bytes_sent

    def _mix(self, round_: int, outgoing: dict[str, torch.Tensor], gathered: Gathered) -> float | None:
        """Fold in what arrived; returns this peer's distance to the mean of what arrived, before, on
        evaluation rounds (None on others: it costs as much as the mixing itself)."""
        received = {sender: self.staging.to_device(m.tensors) for sender, m in gathered.messages.items()}
        distance = None
        if self._evaluating(round_) and self.algorithm.messages_hold_parameters:
            distance = relative_distance_to_mean(self.algorithm.parameters_in(outgoing),
                                                 [self.algorithm.parameters_in(t) for t in received.values()])
        self.algorithm.update(round_, received)
        return distance

    def _evaluating(self, round_: int) -> bool:
        """Every --eval-every rounds and the last: the rounds whose metrics line holds the evaluation."""
        return (round_ + 1) % self.config.eval_every == 0 or round_ == self.config.rounds - 1

    def _metrics_line(self, round_: int, loss: float | None, lr: float | None, distance: float | None,
                      bytes_sent: int, gathered: Gathered) -> MetricsLine:
        line: MetricsLine = {
            "round": round_,
            "time": round(self.clock() - self.started, 4),
            "unix_time": round(self.wall_clock(), 4),
            "lr": lr,
            "loss": loss,
            "neighbour_distance": distance,
            "bytes_sent": bytes_sent,
            "bytes_received": gathered.bytes_received,
            "wait_seconds": round(gathered.waited, 6),
            "heard": sorted(gathered.outcome.heard),
            "missing": sorted(gathered.outcome.missing),
        } | self.stats.state_dict() | self.algorithm.metrics() | gathered.metrics
        if self.reference is not None:
            line["rel_error"] = relative_error(self.model.state_dict(), self.reference)
        return line

    def _keep_books(self, round_: int, record: dict, expected: int) -> None:
        """After the round: its trace row and evaluation when due, its metrics line, a checkpoint when
        due, a progress line (``expected``: the in-neighbours sending this round)."""
        config = self.config
        last_round = round_ == config.rounds - 1
        if config.trace_every and ((round_ + 1) % config.trace_every == 0 or last_round):
            record["traced"] = self._write_trace_row()
        if self._evaluating(round_):
            self.evaluation = self.replica.evaluate()
            self._evaluated_round = round_
            record |= self.evaluation
        self.metrics.write(record)
        self.last = record
        if config.checkpoint_every and (round_ + 1) % config.checkpoint_every == 0 and not last_round:
            self._try_checkpoint(round_ + 1)
        if (round_ + 1) % config.log_every == 0 or last_round:
            self.log.info("round %d%s loss %s %s heard %d/%d waited %.3fs", round_ + 1,
                          "" if config.rounds == UNBOUNDED_ROUNDS else f"/{config.rounds}",
                          "-" if record["loss"] is None else f"{record['loss']:.4f}",
                          _figures(self.evaluation), len(record["heard"]), expected, record["wait_seconds"])

    def _write_trace_row(self) -> int:
        """Append the parameters as float32 to the trace; returns the values per row."""
        row = flat_parameters(self.model.state_dict()).float().cpu().numpy()
        self._trace.write(row.tobytes())
        self._trace.flush()
        return row.size

    def topology_digest(self, round_: int) -> str:
        """This peer's digest of the graph of round ``round_``, carried by every message of that round."""
        return self.topology_digests[round_ % len(self.topology_digests)]

    # ---- what arrives -----------------------------------------------------------------------

    def _accept(self, received: Received) -> wire.Message | None:
        """Check a message and act on it; parameters are handed back for the gatherer to file."""
        message = self._check(received)
        if message is None or message.kind == "params":
            return message
        if message.kind == "state" and message.round > self.config.rounds:
            # An honest answer's round is at most the run's end (an answer given in the last round), so this
            # one is believed in nothing; taken, it would end the joiner's run before it trained.
            self.stats.too_far_ahead += 1
            return None
        if message.kind == "state" and self._awaiting_state and message.round > self._state_after:
            self._awaiting_state, self._state_answer = False, message
            return None
        # A state request, or a state answer to a peer no longer joining: its sender is alive.
        self.membership.saw(message.sender)
        if message.kind == "state_request":
            if self._awaiting_state and self._state_after < 0:
                # Joining (waiting for a state, not for one after a round of its own): its model is not the
                # swarm's yet, and a joining neighbour would take it and train from scratch.
                self.log.debug("state request from %s not answered: this peer is joining itself", message.sender)
            else:
                self._answer_state_request(message.sender)
        else:
            # Only a joining peer asks (and reads the answer itself); a second answer comes too late.
            self.log.debug("ignored a state message from %s: not joining", message.sender)
        return None

    def _check(self, received: Received) -> wire.Message | None:
        """The checked message, or None (counted by reason and source, and logged) if it must not be used."""
        try:
            if received.excess is not None:
                # Its header was kept, and the header's checks come first: a neighbour of another model,
                # algorithm or run is named as such; only a message that passes them is refused for its size.
                try:
                    wire.decode(received.frames[:1], self.contract)
                except wire.FrameCountMismatch:
                    pass
                raise wire.FrameCountMismatch(received.excess)
            message = wire.decode(received.frames, self.contract)
            if self.transport.secure and message.sender != received.sender:
                raise Impersonation(f"the header names {message.sender!r}, the connection's key is "
                                    f"{received.sender!r}'s")
        except wire.TopologyMismatch as error:
            # Say which file this peer runs with: one of the two files is the one to fix.
            self._count_rejection(wire.TopologyMismatch(
                f"{error}; this peer uses {self.config.topology or 'the topology ' + self.topology.name}: start "
                "every peer with the same topology file"),
                received.sender or "unauthenticated")
            return None
        except wire.WireError as error:
            self._count_rejection(error, received.sender or "unauthenticated")
            return None
        self.stats.accepted_from[message.sender] += 1
        return message

    def _count_rejection(self, error: wire.WireError, source: str) -> None:
        self.stats.reject(error.reason, source)
        log_this, log_source = self.stats.worth_logging(source)
        if log_this:
            self.log.warning("rejected message #%d from %s (%s): %s", sum(self.stats.rejected.values()), source,
                             error.reason, error)
        if log_source:
            self.log.warning("%s has sent %d messages that were rejected", source, self.stats.rejected_from[source])

    def _answer_state_request(self, asker: str) -> None:
        """Send ``asker`` this peer's parameters and the round to continue from (the next one)."""
        round_ = self.round_now + 1
        if self._answered.get(asker) == round_:
            return  # one answer per asker per round: repeated requests cost nothing more
        if asker not in self.out_neighbours:
            self.log.warning("state request from %s, which this peer does not send to; not answered", asker)
            return
        frames = wire.encode(kind="state", sender=self.id, run_id=self.config.run_id, round=round_,
                             fingerprint=self.fingerprint, tensors=self.staging.to_host(self.algorithm.state_tensors()),
                             topology=self.topology_digest(round_), chunk=self.chunk)
        if self.transport.send(asker, frames, copy=self.staging.copy_on_send):  # staged frames are reused
            self._answered[asker] = round_
            self.log.info("answered a state request from %s: continue from round %d", asker, round_)
        else:
            self.log.debug("could not answer %s's state request: its queue is full; it will ask again", asker)

    # ---- joining a running swarm ------------------------------------------------------------

    async def join(self) -> int:
        """Ask the neighbours for their state and load the first answer (PROTOCOL.md section 6).
        Returns the round to continue from."""
        if not self.answerers:
            self._withdraw()
            raise ConfigError(f"--join: {self.id} has no neighbour linked both ways in {self.topology.name}, so "
                              "nobody could answer a state request; start it without --join")
        self.log.info("joining: asking %s for their state", ",".join(self.answerers))
        answer = await self._ask_for_state(self.config.startup_timeout)
        if answer is None:
            self._withdraw()
            raise ConfigError(f"--join: no answer from {', '.join(self.answerers)} within "
                              f"{self.config.startup_timeout}s (--startup-timeout). Is the swarm running, with run "
                              f"id {self.config.run_id} and this peer in its topology? Start without --join to "
                              "train from round 0")
        self._take_state(answer)
        self.start_round = answer.round
        self.log.info("joined: took the state of %s, continuing from round %d", answer.sender, answer.round)
        return answer.round

    def _withdraw(self) -> None:
        """A join refused before any round: take back the files this start made (its configuration and empty
        metrics), so that the run directory is as it was and the retry the refusal suggests can start there.
        ``finish`` then writes nothing."""
        self.withdrawn = True
        self._close_files()
        for path in (self.files.config, self.files.metrics, self.files.trace):
            if path.exists() and (path == self.files.config or path.stat().st_size == 0):
                path.unlink()

    async def _ask_for_state(self, timeout: float, after: int = -1) -> wire.Message | None:
        """Send state requests to the answerers until one answers with a round after ``after`` or ``timeout``
        passes; that first answer."""
        request = wire.encode(kind="state_request", sender=self.id, run_id=self.config.run_id, round=0,
                              fingerprint=self.fingerprint, tensors={}, topology=self.topology_digest(0))
        self._awaiting_state, self._state_answer, self._state_after = True, None, after
        now = self.clock()
        deadline, ask_at = now + timeout, now
        while self._awaiting_state and (remaining := deadline - self.clock()) > 0:
            # Ask again every STATE_REQUEST_INTERVAL, not after every message read: a neighbour's queue
            # towards this peer may have been full of the parameters it sent while this peer was not
            # running (then its answer was dropped), and those are read here one by one.
            if self.clock() >= ask_at:
                for neighbour in self.answerers:
                    self.transport.send(neighbour, request)
                ask_at = self.clock() + STATE_REQUEST_INTERVAL
            await self.gatherer.receive(max(0.0, min(remaining, ask_at - self.clock())))
        self._awaiting_state = False
        return self._state_answer

    def _take_state(self, answer: wire.Message) -> None:
        state = self.staging.to_device(answer.tensors)
        for name, tensor in self.algorithm.parameters.items():
            # A copy: on the CPU the received tensor lives in the message's frame buffer.
            tensor.data = state[name].clone()
        self.rounds_completed = self.round_now = answer.round
        self._evaluated_round = None  # of the model just replaced
        self.gatherer.start_at(answer.round, joined=True)

    # ---- catching up ------------------------------------------------------------------------

    @property
    def catches_up(self) -> bool:
        """Whether a far-behind peer takes a neighbour's state (--catch-up). Only synchronous gossip does:
        asynchronous mode jumps to the neighbours' round by itself, and ADMM's duals are tied to the running
        sums since round 0 (as are gradient tracking's and push-sum's sums and CHOCO's public copies), so such
        a peer runs the rounds it missed alone."""
        return (self.config.catch_up > 0 and self.config.mode == "sync" and self.config.algo == "gossip"
                and bool(self.answerers))

    async def catch_up(self, round_: int) -> int:
        """The round to run next: ``round_``, or, when a neighbour is more than --catch-up rounds ahead of
        it (this peer was restarted, paused or slow), the round of a neighbour's state, which it takes."""
        ahead = self.gatherer.newest_round()
        if not self.catches_up or ahead is None or ahead - round_ <= self.config.catch_up:
            return round_
        if round_ < self._next_catch_up or round_ >= self.config.rounds:
            return round_  # a request just went unanswered: run some rounds before asking again
        self.log.info("round %d is %d rounds behind the newest round heard (%d); asking %s for their state",
                      round_, ahead - round_, ahead, ",".join(self.answerers))
        # Only an answer ahead is taken: a neighbour as far behind (the other side of a cut link) answers too.
        answer = await self._ask_for_state(self.config.recv_timeout, after=round_)
        if answer is None:
            self.log.warning("round %d: no neighbour ahead answered the state request within %.1fs "
                             "(--recv-timeout); running the rounds alone", round_, self.config.recv_timeout)
            self._next_catch_up = round_ + self.config.catch_up
            return round_
        self._take_state(answer)
        self.stats.caught_up += 1
        self.log.warning("caught up: took the state of %s, continuing from round %d instead of %d (%d rounds "
                         "not run)", answer.sender, answer.round, round_, answer.round - round_)
        return answer.round

    # ---- the end ----------------------------------------------------------------------------

    @property
    def isolated(self) -> bool:
        """It has in-neighbours and never heard a valid message from any of them."""
        return bool(self.in_neighbours) and not self.stats.accepted_from

    def finish(self, status: str) -> None:
        """Write the final model and result, then release the sockets. Safe to call once per peer. A write
        that fails is logged in one line naming the file and kept in ``write_error`` (the command line
        exits with rundir.EXIT_WRITE_FAILED); the sockets are released all the same."""
        if status == "completed" and self.isolated:
            self.log.warning("heard from no neighbour in the whole run: it trained alone. Are %s running, with "
                             "run id %s, and can they reach %s?", ",".join(self.in_neighbours), self.config.run_id,
                             self.topology.peer(self.id).endpoint)
            status = "isolated"
        if not self.withdrawn:
            try:
                self._write_outputs(status)
            except OSError as error:
                self._failed_write(error)
        self._close_files()
        self.transport.close(abandon=self.membership.suspected)

    def _close_files(self) -> None:
        """Close the metrics and the trace; closing flushes what is buffered, which a full disk may refuse."""
        for output in (self.metrics, self._trace):
            try:
                if output is not None:
                    output.close()
            except OSError as error:
                self._failed_write(error)
        self.metrics = self._trace = None

    def _failed_write(self, error: OSError) -> None:
        """A final output not written: logged in one line naming the file; the first is kept (exit code 4)."""
        self.write_error = self.write_error or error
        self.log.error("could not write %s: %s; %s", error.filename or self.files.path, error.strerror or error,
                       self._usable_checkpoint())

    def _write_outputs(self, status: str) -> None:
        atomic_torch_save(self.model.state_dict(), self.files.model)
        sample = self.replica.sample()
        if sample is not None:
            atomic_write_bytes(self.files.sample, sample.encode("utf-8"))
        if self.algorithm.state_dict():
            atomic_torch_save(self.algorithm.state_dict(), self.files.algorithm)
        atomic_write_json(self.files.result, self._result(status))

    def _usable_checkpoint(self) -> str:
        if not self.config.checkpoint_every:
            return "no checkpoint was asked for (--checkpoint-every)"
        return f"the last checkpoint written stays usable: rerun with --resume once {self.files.path} can be written"

    def _result(self, status: str) -> dict:
        return {
            "peer": self.id,
            "status": status,
            "rounds": self.config.rounds,
            "rounds_completed": self.rounds_completed,
            "start_round": self.start_round,
            # Readers look these up by name; a task that measures neither leaves them null.
            "test_accuracy": None,
            "test_loss": None,
        } | self._final_evaluation() | {
            "train_loss": self.last.get("loss"),
            "wall_seconds": self.clock() - self.started,
            "secure": self.transport.secure,
        } | self.stats.state_dict()

    def _final_evaluation(self) -> dict[str, float]:
        """The task's figures for the model as the run leaves it. A run that went to its last round evaluated
        that model in the round's books (the last round always evaluates), and an evaluation can cost as much
        as a round (a language model's); any other end (an interrupted run, an API Peer whose script may have
        stepped its optimizer since its last exchange) is evaluated now."""
        if self._run_completed and self._evaluated_round == self.config.rounds - 1:
            return self.evaluation
        return self.replica.evaluate()


async def _let_the_others_run() -> None:
    """One turn of the event loop for the other tasks ready to run; alone on its loop, a peer goes on at once.

    Peers sharing one loop (run_in_process) then take each step of a round one after the other,
    all of them training, then all sending, then all gathering and mixing: the same code in a
    row, as the lockstep simulation runs it, and a peer that gathers finds its neighbours'
    messages already queued instead of waiting on its socket. Measured in docs/performance.md
    ("In-process swarms"): a third of an in-process round of ring256."""
    await asyncio.sleep(0)


def _figures(evaluation: dict[str, float]) -> str:
    """The latest held-out figures for a progress line: accuracy as before, or whatever the task measures."""
    if not evaluation:
        return "acc -"
    if "test_accuracy" in evaluation:
        return f"acc {evaluation['test_accuracy']:.4f}"
    return " ".join(f"{name} {value:.4f}" for name, value in evaluation.items())


def _task_name(task) -> str | None:
    return None if task is None else getattr(task, "name", type(task).__name__)


def _load_reference(path: str, model: torch.nn.Module) -> torch.Tensor:
    try:
        reference = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as error:
        raise ConfigError(f"--reference {path}: cannot read it ({error}); pass a file written by torch.save") from None
    size = sum(p.numel() for p in model.parameters())
    if not isinstance(reference, torch.Tensor) or reference.numel() != size:
        raise ConfigError(f"--reference {path} is not a tensor of {size} values, the size of this model")
    return reference.double().reshape(-1)


def _launch_text(identity: dict[str, str]) -> str:
    return ", ".join(f"${variable}={value}" for variable, value in identity.items()) or "started by hand"


def _prepare_output(files: PeerDir, overwrite: bool, resume: bool, resume_round: int = -1) -> None:
    files.path.mkdir(parents=True, exist_ok=True)
    checkpointed = files.checkpoint.exists() or files.previous_checkpoint.exists()
    if resume:
        # Without a checkpoint --resume starts again from round 0 (a launcher's restart of a peer that
        # had not written one yet), but never over a run that finished: there is nothing to continue, and
        # its last rounds run again alone would replace its model with another. Only a round named with
        # --resume-round runs them again (its neighbours rerun from that round too: launch_swarm --resume).
        result = files.read_result()
        if not overwrite and resume_round < 0 and result is not None and result["status"] in FINISHED:
            rerun = "" if not checkpointed else ("--resume-round R to run its last rounds again from a kept "
                                                 "checkpoint (with its neighbours), ")
            raise ConfigError(f"--resume: {files.path} holds a finished run ({result['status']}), nothing to "
                              f"continue; pass another --out, {rerun}or --overwrite to run it again from round 0 "
                              "(in the Python API: out=... or overwrite=True)")
        return
    existing = [path for path in files.outputs() if path.exists()]
    if existing and not overwrite:
        also = ("--resume to continue it from its checkpoint, ", "resume=True, ") if checkpointed else ("", "")
        raise ConfigError(
            f"{files.path} already holds the outputs of a run ({', '.join(path.name for path in existing)}); "
            f"pass another --out, {also[0]}or --overwrite to replace it (in the Python API: out=..., {also[1]}"
            "or overwrite=True)"
        )
    for path in existing:
        path.unlink()
