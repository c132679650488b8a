"""Start every peer of a topology on this machine, watch them, summarise the run.

The launcher is a process supervisor only: peers talk to each other directly,
and the launcher learns how they are doing by reading the files they write.
It never sends or relays a parameter.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import errno
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, PeerConfig, add_training_options, given_options, new_parser, option_adder
from .faults import FaultPlan, FaultSpecError
from .keys import KeyFileError
from .keys import generate as generate_keys
from .inprocess import local_endpoints, run_in_process
from .peer import configure_logging
from .replica import check_run, resolve_config, resolve_task
from .task import task_name
from .results import consensus_distance, load_model, peer_outcome, relative_error
from .storage import atomic_torch_save, atomic_write_json
from .topology import (PeerSpec, Topology, TopologyError, build_topology, dump_topology, generate, load_topology,
                       relocate)

DEFAULT_TOPOLOGY = "ring8 (built in: ring of 8 peers on 127.0.0.1:25000-25007)"
# How long peers get to exit after SIGTERM before they are killed.
STOP_GRACE_SECONDS = 10.0
PEER_FIELDS = {f.name for f in dataclasses.fields(PeerConfig)}
_TCP = re.compile(r"^tcp://(?P<host>\[[^\]]+\]|[^:/]+):(?P<port>\d+)$")


class LaunchError(RuntimeError):
    pass


@dataclass
class PeerProcess:
    id: str
    out: Path
    process: subprocess.Popen | None  # None when the peer runs in this process, or has not started yet
    log_file: object
    command: tuple[str, ...] = ()
    metrics_offset: int = 0
    metrics_inode: int = -1
    round: int = 0
    loss: float | None = None
    accuracy: float | None = None
    exit_code: int | None = None


def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    parser = new_parser(
        defaults,
        prog="scripts/launch_swarm.py",
        description="Start one p2ptrain peer process per peer of TOPOLOGY on this machine, show their "
                    "progress, and write DIR/summary.json. Training options are passed to every peer.",
    )
    add = option_adder(parser, defaults)
    add("topology", nargs="?", default="",
        help=f"topology file (default: {DEFAULT_TOPOLOGY})")
    add("--out", default="", help="run directory (default: runs/TOPOLOGY-ALGO-TIME)")
    add("--base-port", type=int, default=0,
        help="move peer i to port BASE+i on its host, to run beside another swarm")
    add("--run-id", default="", help="run id shared by the peers (default: the run directory's name)")
    add("--timeout", type=float, default=0.0,
        help="stop every peer after this many seconds (default: no limit)")
    add("--overwrite", action="store_true", help="replace an earlier run in --out")
    add("--kill", action="append", default=[], metavar="PEER@ROUND",
        help="fault injection: SIGKILL PEER when it has completed ROUND rounds (repeatable)")
    add("--restart", action="append", default=[], metavar="PEER@+SECONDS",
        help="start a killed PEER again SECONDS later, with --resume (use --checkpoint-every)")
    add("--pause", action="append", default=[], metavar="PEER@ROUND:SECONDS",
        help="SIGSTOP PEER at ROUND, SIGCONT it SECONDS later (repeatable)")
    add("--join", action="append", default=[], metavar="PEER@ROUND",
        help="hold PEER back and start it with --join once the others reach ROUND: it asks a "
                             "neighbour for its state and continues from there (gossip; repeatable)")
    add("--keys", default="", metavar="DIR",
        help="CurveZMQ keys of the peers (python -m p2ptrain.keys generate); by default the "
                             "launcher makes fresh ones in DIR/keys")
    add("--insecure", action="store_true",
        help="run without CurveZMQ: plain, unauthenticated connections")
    add("--centralized", action="store_true",
        help="the baseline: one peer alone on all the data, with --batch-size times the topology's peer count, "
             "so that it sees as many samples per step as the whole swarm (same rounds, steps and schedule)")
    add("--in-process", nargs="?", const="inproc", default="", choices=["inproc", "ipc"],
        help="run every peer as a task of this one process, over inproc (default) or ipc "
                             "sockets, for swarms too large for a process per peer; logs go to DIR/peers.log")
    add_training_options(parser, defaults)
    return parser


def swarm_keys(options: LaunchOptions, topology: Topology, run_dir: Path) -> Path | None:
    """The keys directory the peers get: --keys, or fresh keys in RUN_DIR/keys; None when insecure."""
    if options.in_process == "inproc":
        return None  # inproc messages never leave this process: nothing to encrypt or authenticate
    if options.insecure:
        print("launch_swarm: --insecure: the peers' connections are neither encrypted nor authenticated",
              file=sys.stderr)
        return None
    if options.keys:
        return Path(options.keys)
    generate_keys(topology, run_dir / "keys", force=True)
    print(f"CurveZMQ keys for {topology.size} peers made in {run_dir / 'keys'} (--insecure to run without)",
          flush=True)
    return run_dir / "keys"


def with_ports(topology: Topology, base_port: int) -> Topology:
    endpoints = []
    for i, spec in enumerate(topology.peers):
        match = _TCP.match(spec.endpoint)
        if not match:
            raise LaunchError(f"--base-port needs tcp:// endpoints; {spec.id} has {spec.endpoint}")
        endpoints.append(f"tcp://{match['host']}:{base_port + i}")
    return relocate(topology, endpoints)


def check_endpoints_free(topology: Topology) -> None:
    """Every peer must be able to listen here; say which port is taken before any peer starts."""
    for spec in topology.peers:
        match = _TCP.match(spec.bind)
        if not match:
            continue
        host = match["host"].strip("[]")
        host = "0.0.0.0" if host == "*" else host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As ZeroMQ does: connections of a finished run in TIME_WAIT do not block the port.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, int(match["port"])))
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise LaunchError(
                        f"port {match['port']} for peer {spec.id} ({spec.bind}) is in use, perhaps by another "
                        "swarm; stop it or pass --base-port N to move this swarm to ports N, N+1, ..."
                    ) from None
                raise LaunchError(
                    f"peer {spec.id} cannot listen on {spec.bind} here ({error.strerror}); the launcher starts "
                    "every peer on this machine, so use a topology with local endpoints, or start remote "
                    "peers with python -m p2ptrain.peer on their own hosts"
                ) from None


def _die_with_parent() -> None:
    # Linux: the peer gets SIGTERM if the launcher dies, even by SIGKILL, so no peer outlives it.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def start_peers(config_file: Path, topology: Topology, run_dir: Path,
                held_back: set[str] = frozenset()) -> list[PeerProcess]:
    """Start a process per peer, except the ``held_back`` ones (they join later, see join_peer)."""
    peers = []
    for peer_id in topology.ids:
        out = run_dir / "peers" / peer_id
        out.mkdir(parents=True, exist_ok=True)
        log_file = open(out / "peer.log", "wb")
        command = (sys.executable, "-m", "p2ptrain.peer", "--config", str(config_file), "--peer", peer_id,
                   "--out", str(out))
        process = None if peer_id in held_back else _spawn(command, log_file)
        peers.append(PeerProcess(peer_id, out, process, log_file, command))
    return peers


def _spawn(command, log_file) -> subprocess.Popen:
    return subprocess.Popen(
        command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # Ctrl-C reaches the launcher only; it stops the peers in order
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )


def restart_peer(peer: PeerProcess, recv_timeout: float) -> None:
    """Start a killed peer again with --resume; its log goes on in the same file. Its neighbours are
    running (or done), so its first round waits the round deadline, not the start-up one."""
    peer.log_file.close()
    peer.log_file = open(peer.out / "peer.log", "ab")
    peer.process = _spawn((*peer.command, "--resume", "--startup-timeout", str(recv_timeout)), peer.log_file)
    peer.exit_code = None


def join_peer(peer: PeerProcess) -> None:
    """Start a held-back peer with --join: it takes a running neighbour's state."""
    peer.process = _spawn((*peer.command, "--join"), peer.log_file)


FAULT_SIGNALS = {"kill": signal.SIGKILL, "pause": signal.SIGSTOP, "continue": signal.SIGCONT}


def poll_progress(peer: PeerProcess) -> None:
    """Read the metrics lines a peer added since the last look."""
    path = peer.out / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            inode = os.fstat(f.fileno()).st_ino
            if inode != peer.metrics_inode:
                # A resumed peer replaces its metrics file (dropping the rounds it will redo): start over.
                peer.metrics_inode, peer.metrics_offset = inode, 0
            f.seek(peer.metrics_offset)
            chunk = f.read()
    except FileNotFoundError:
        return
    complete = chunk[: chunk.rfind(b"\n") + 1]
    peer.metrics_offset += len(complete)
    for line in complete.decode().splitlines():
        record = json.loads(line)
        peer.round = record["round"] + 1
        peer.loss = record["loss"]
        if "test_accuracy" in record:
            peer.accuracy = record["test_accuracy"]


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def progress_table(peers: list[PeerProcess], rounds: int, elapsed: float) -> list[str]:
    lines = [f"{elapsed:7.1f}s  {'peer':<10} {'round':>9} {'loss':>8} {'accuracy':>9}  state"]
    for p in peers:
        state = "running" if p.exit_code is None else f"exit {p.exit_code}"
        lines.append(f"{'':9}{p.id:<10} {p.round:>4}/{rounds:<4} {_fmt(p.loss):>8} {_fmt(p.accuracy):>9}  {state}")
    return lines


def stop_peers(peers: list[PeerProcess], grace: float = STOP_GRACE_SECONDS) -> None:
    peers = [p for p in peers if p.process is not None]
    for p in peers:
        if p.process.poll() is None:
            p.process.send_signal(signal.SIGTERM)
            p.process.send_signal(signal.SIGCONT)  # a paused peer must run to handle it
    deadline = time.monotonic() + grace
    for p in peers:
        try:
            p.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.process.kill()
            p.process.wait()


def summarise(topology: Topology, algo: str, peers: list[PeerProcess], wall_seconds: float,
              reference=None) -> dict:
    models = [m for m in (load_model(p.out) for p in peers) if m is not None]
    summary_peers = {}
    for p in peers:
        outcome = peer_outcome(p.out)
        summary_peers[p.id] = {
            "rounds_completed": outcome["rounds_completed"],
            "test_accuracy": outcome["test_accuracy"],
            "train_loss": outcome["train_loss"],
            "exit_code": p.exit_code,
            "status": outcome["status"],
        }
        if outcome["start_round"]:
            summary_peers[p.id]["start_round"] = outcome["start_round"]  # it joined the run late
    summary = {
        "topology": topology.name,
        "algo": algo,
        "wall_seconds": wall_seconds,
        # From the final models of the peers that wrote one; None if none did.
        "consensus_distance": consensus_distance(models) if models else None,
        "peers": summary_peers,
    }
    if reference is not None and models:
        summary["max_rel_error_to_optimum"] = max(relative_error(m, reference) for m in models)
    return summary


def summary_table(summary: dict) -> str:
    lines = [f"{'peer':<10} {'rounds':>6} {'accuracy':>9} {'loss':>8} {'exit':>5}"]
    for peer_id, p in summary["peers"].items():
        lines.append(f"{peer_id:<10} {p['rounds_completed']:>6} {_fmt(p['test_accuracy']):>9} "
                     f"{_fmt(p['train_loss']):>8} {p['exit_code']!s:>5}")
    accuracies = [p["test_accuracy"] for p in summary["peers"].values() if p["test_accuracy"] is not None]
    if accuracies:
        lines.append(f"accuracy min {min(accuracies):.4f} mean {sum(accuracies) / len(accuracies):.4f} "
                     f"max {max(accuracies):.4f}")
    if "max_rel_error_to_optimum" in summary:
        lines.append(f"max relative error to the centralized optimum {summary['max_rel_error_to_optimum']:.3e}")
    lines.append(f"consensus distance {_fmt(summary['consensus_distance'], '.3e')}; "
                 f"wall time {summary['wall_seconds']:.1f}s ({summary['topology']}, {summary['algo']})")
    return "\n".join(lines)


class Progress:
    """Live progress: a table redrawn in place on a terminal, a line every few seconds otherwise."""

    def __init__(self, rounds: int, started: float):
        self.rounds, self.started = rounds, started
        self.tty = sys.stdout.isatty()
        self._drawn = 0
        self._last_line = -math.inf

    def show(self, peers: list[PeerProcess]) -> None:
        for p in peers:
            poll_progress(p)
        elapsed = time.monotonic() - self.started
        if self.tty:
            table = progress_table(peers, self.rounds, elapsed)
            sys.stdout.write(f"\x1b[{self._drawn}F" if self._drawn else "")
            sys.stdout.write("".join(f"\x1b[2K{line}\n" for line in table))
            sys.stdout.flush()
            self._drawn = len(table)
        elif elapsed - self._last_line >= 5.0:
            self._last_line = elapsed
            rounds = [p.round for p in peers]
            accuracies = [p.accuracy for p in peers if p.accuracy is not None]
            print(f"{elapsed:6.1f}s rounds {min(rounds)}-{max(rounds)}/{self.rounds}"
                  + (f" accuracy {min(accuracies):.3f}-{max(accuracies):.3f}" if accuracies else ""), flush=True)


def supervise(peers: list[PeerProcess], progress: Progress, timeout: float, faults: FaultPlan,
              recv_timeout: float) -> int | None:
    """Watch peer processes until all exit, a signal arrives (returned) or the timeout passes; then stop them.
    Meanwhile carry out the fault plan's kills, restarts and pauses as they fall due."""
    interrupted = None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum, _frame):
        nonlocal interrupted
        interrupted = signum

    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        while interrupted is None:
            for p in peers:
                p.exit_code = p.process.poll() if p.process else None
            progress.show(peers)
            by_id = {p.id: p for p in peers}
            for action in faults.due({p.id: p.round for p in peers}, time.monotonic() - progress.started):
                print(f"launch_swarm: {action.kind} {action.peer} at round {by_id[action.peer].round}", flush=True)
                if action.kind == "restart":
                    restart_peer(by_id[action.peer], recv_timeout)
                elif action.kind == "join":
                    join_peer(by_id[action.peer])
                else:
                    by_id[action.peer].process.send_signal(FAULT_SIGNALS[action.kind])
            started = [p for p in peers if p.process is not None]
            if all(p.exit_code is not None for p in started) and not faults.waiting_on_clock:
                # Whatever is still planned is tied to rounds that no running peer will reach.
                if faults.pending:
                    print("launch_swarm: every peer has exited before the rest of the fault plan came due",
                          file=sys.stderr)
                break
            if timeout and time.monotonic() - progress.started > timeout:
                print(f"launch_swarm: --timeout {timeout}s reached; stopping the peers", file=sys.stderr)
                break
            # Faults fire at a round: look often while any is pending, so they land close to it.
            time.sleep(0.05 if faults.pending else 0.5)
    finally:
        if interrupted is not None:
            print(f"\nlaunch_swarm: {signal.Signals(interrupted).name}: stopping every peer", file=sys.stderr)
        stop_peers(peers)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for p in peers:
            p.exit_code = p.process.returncode if p.process else None
            p.log_file.close()
    return interrupted


async def run_here(topology: Topology, config: PeerConfig, run_dir: Path, progress: Progress,
                   timeout: float) -> tuple[list[PeerProcess], bool]:
    """Every peer as a task of this process (--in-process), with the progress shown meanwhile.
    Returns the peers and whether the timeout stopped them."""
    peers = [PeerProcess(pid, run_dir / "peers" / pid, None, None) for pid in topology.ids]
    run = asyncio.ensure_future(run_in_process(topology, config, run_dir / "peers"))
    timed_out = False

    async def watch() -> None:
        nonlocal timed_out
        while True:
            progress.show(peers)
            if timeout and time.monotonic() - progress.started > timeout:
                print(f"launch_swarm: --timeout {timeout}s reached; stopping the peers", file=sys.stderr)
                timed_out = True
                os.kill(os.getpid(), signal.SIGTERM)  # the peers stop as on any SIGTERM
                return
            await asyncio.sleep(0.5)

    watcher = asyncio.ensure_future(watch())
    try:
        codes = await run
    finally:
        watcher.cancel()
    for p in peers:
        p.exit_code = codes[p.id]
    progress.show(peers)
    return peers, timed_out


@dataclass
class LaunchOptions:
    """What the launcher itself does, apart from the peers' configuration."""

    out: str = ""
    overwrite: bool = False
    timeout: float = 0.0
    in_process: str = ""  # "", "inproc" or "ipc"
    kill: list[str] = dataclasses.field(default_factory=list)
    restart: list[str] = dataclasses.field(default_factory=list)
    pause: list[str] = dataclasses.field(default_factory=list)
    join: list[str] = dataclasses.field(default_factory=list)
    keys: str = ""
    insecure: bool = False
    centralized: bool = False


LAUNCH_FIELDS = tuple(f.name for f in dataclasses.fields(LaunchOptions))


def parse(argv: list[str] | None) -> tuple[PeerConfig, Topology, LaunchOptions]:
    """The launcher's command line: the peers' configuration (with the task's defaults where the
    command line sets nothing), the topology and the launcher's own options."""
    everything, explicit = given_options(build_parser, argv)
    options = LaunchOptions(**{name: everything[name] for name in LAUNCH_FIELDS})
    training = {name: value for name, value in explicit.items() if name in PEER_FIELDS}
    config = resolve_config(training)
    topology = load_topology(everything["topology"]) if everything["topology"] else \
        generate("ring", 8, base_port=25000, name="ring8")
    if everything["base_port"]:
        topology = with_ports(topology, everything["base_port"])
    return config, topology, options


def main(argv: list[str] | None = None) -> int:
    try:
        config, topology, options = parse(argv)
    except (ConfigError, TopologyError, LaunchError) as error:
        print(f"launch_swarm: error: {error}", file=sys.stderr)
        return 2
    return launch(config, topology, options)


def launch(config: PeerConfig, topology: Topology, options: LaunchOptions) -> int:
    """Run every peer of ``topology`` with ``config`` on this machine, show their progress, write
    RUN/summary.json; returns the launcher's exit code."""
    if options.centralized:
        topology, config = centralized(topology, config)
    try:
        task = resolve_task(config)
        check_run(config, topology, task)
        faults = FaultPlan.parse(options.kill, options.restart, options.pause, topology.ids, options.join)
        if options.in_process and (options.kill or options.restart or options.pause or options.join):
            raise LaunchError("--kill, --restart, --pause and --join act on peer processes; drop --in-process")
        if options.join:
            # The others do not wait for the latecomers in their first round.
            config = config.replace(absent=",".join(sorted(config.absent_peers() | set(faults.joins))))
        if options.restart and not config.checkpoint_every:
            print("launch_swarm: warning: --restart without --checkpoint-every restarts peers from round 0",
                  file=sys.stderr)
        if not options.in_process:
            check_endpoints_free(topology)
        if options.in_process == "inproc" and options.keys:
            raise LaunchError("--keys with --in-process: inproc sockets have no CurveZMQ handshake; "
                              "use --in-process ipc, or drop --keys")
        if options.insecure and options.keys:
            raise LaunchError("--insecure and --keys contradict each other; pick one")
    except (ConfigError, TopologyError, LaunchError, FaultSpecError) as error:
        print(f"launch_swarm: error: {error}", file=sys.stderr)
        return 2

    run_dir = Path(options.out or Path("runs") / f"{topology.name}-{config.algo}-{time.strftime('%Y%m%d-%H%M%S')}")
    if (run_dir / "summary.json").exists() or (run_dir / "peers").exists():
        if not options.overwrite:
            print(f"launch_swarm: error: {run_dir} holds an earlier run; pass another --out, "
                  "or --overwrite to replace it", file=sys.stderr)
            return 2
        shutil.rmtree(run_dir / "peers", ignore_errors=True)
        (run_dir / "summary.json").unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = config.run_id or run_dir.name
    if options.in_process:
        topology = local_endpoints(topology, run_id, options.in_process)
    topology_file = run_dir / "topology.toml"
    topology_file.write_text(dump_topology(topology, "The topology this run used, as the launcher gave it to the peers."))
    try:
        keys_dir = swarm_keys(options, topology, run_dir)
    except KeyFileError as error:
        print(f"launch_swarm: error: {error}", file=sys.stderr)
        return 2
    reference = None
    if hasattr(task, "centralized_optimum"):
        # Computed once here, from all the data, only to measure the peers against.
        reference = task.centralized_optimum(topology.size)
        atomic_torch_save(reference, run_dir / "reference.pt")
    # One configuration for every peer, in a file: the peers read it as it is, nothing is re-parsed.
    config = config.replace(topology=str(topology_file), run_id=run_id, keys=str(keys_dir or ""),
                            reference=str(run_dir / "reference.pt") if reference is not None else "",
                            task=_portable_task(config.task))
    config_file = run_dir / "peer-config.json"
    atomic_write_json(config_file, config.to_dict())
    mode = f"in this process over {options.in_process}" if options.in_process else "as processes"
    print(f"starting {topology.size} peers of {topology.name} ({config.algo}, {task_name(task)}, {config.partition}) "
          f"{mode}, in {run_dir}", flush=True)
    progress = Progress(config.rounds, time.monotonic())
    started_unix_time = time.time()
    launch_record = {"argv": sys.argv, "run_id": run_id, "config": str(config_file),
                     "mode": options.in_process or "processes"}
    interrupted = None
    if options.in_process:
        atomic_write_json(run_dir / "launch.json", launch_record)
        configure_logging(config.log_level, run_dir / "peers.log")
        peers, timed_out = asyncio.run(run_here(topology, config, run_dir, progress, options.timeout))
        stopped = {p.exit_code for p in peers} & {128 + signal.SIGINT, 128 + signal.SIGTERM}
        # A timeout stops the peers like a signal, but the run failed rather than being interrupted.
        interrupted = min(stopped) - 128 if stopped and not timed_out else None
    else:
        peers = start_peers(config_file, topology, run_dir, set(faults.joins))
        atomic_write_json(run_dir / "launch.json",
                          launch_record | {"pids": {p.id: p.process.pid for p in peers if p.process is not None}})
        interrupted = supervise(peers, progress, options.timeout, faults, config.recv_timeout)

    summary = summarise(topology, config.algo, peers, time.monotonic() - progress.started, reference)
    summary["run_id"] = run_id
    if faults.events:
        summary["faults"] = faults.events
        # Event times count from the launcher's start; peers' metrics carry wall-clock "unix_time".
        summary["started_unix_time"] = started_unix_time
    atomic_write_json(run_dir / "summary.json", summary)
    print(summary_table(summary))
    show_sample(peers)
    failed = [p.id for p in peers if p.exit_code != 0]
    if failed:
        where = "peers.log" if options.in_process else "peers/ID/peer.log"
        print(f"launch_swarm: peers {', '.join(failed)} did not finish; see {run_dir}/{where}", file=sys.stderr)
    print(f"summary: {run_dir / 'summary.json'}")
    if interrupted is not None:
        return 128 + interrupted
    return 1 if failed else 0


def centralized(topology: Topology, config: PeerConfig) -> tuple[Topology, PeerConfig]:
    """The swarm's centralized baseline: its first peer alone, with all the data, taking batches as large
    as the whole swarm's, so that after each round it has seen as many samples as the swarm has."""
    first = topology.peers[0]
    alone = build_topology(f"{topology.name}-centralized", [PeerSpec(first.id, first.endpoint, first.bind)], [])
    return alone, config.replace(batch_size=config.batch_size * topology.size)


def show_sample(peers: list[PeerProcess]) -> None:
    """Print the text the first peer's model generated at the end, for tasks that generate (gpt-char)."""
    for p in peers:
        path = p.out / "sample.txt"
        if path.exists():
            print(f"--- text generated by {p.id}'s model ({path}):\n{path.read_text(encoding='utf-8')}\n---")
            return


def _portable_task(task: str) -> str:
    """A task file named relative to here, made absolute: the peers may run elsewhere."""
    path, _, attribute = task.rpartition(":")
    if path.endswith(".py"):
        return f"{Path(path).resolve()}:{attribute}"
    return task
