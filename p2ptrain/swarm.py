"""Start every peer of a topology on this machine, watch them, summarise the run.

The launcher is a process supervisor only: peers talk to each other directly,
and the launcher learns how they are doing by reading the files they write.
It never sends or relays a parameter. This module reads the command line and
prepares the run directory; supervisor.py runs the peers, progress.py shows
them, summary.py sums them up.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .builtin_tasks import DatasetTask
from .config import (ConfigError, PeerConfig, add_training_options, given_options, new_parser, option_adder,
                     read_config_file)
from .data import PRESPLIT
from .faults import FaultPlan, FaultSpecError
from .keys import KeyFileError, load_security
from .keys import generate as generate_keys
from .inprocess import local_endpoints, remove_socket_directory
from .progress import Progress
from .replica import build_algorithm, check_run, resolve_config, resolve_task, shard_of, task_batch_size
from .resume import ResumePlan, plan_resume
from .task import headline_figure
from .rundir import RunDir
from .storage import atomic_torch_save, atomic_write_json
from .summary import failed_peers, print_summary, summarise
from .supervisor import run_here, start_peers, supervise
from .task import task_name
from .topology import (ENDPOINT, PeerSpec, Topology, TopologyError, build_topology, dump_topology, generate,
                       load_topology, relocate)

DEFAULT_TOPOLOGY = "ring8 (built in: ring of 8 peers on 127.0.0.1:25000-25007)"
PEER_FIELDS = {f.name for f in dataclasses.fields(PeerConfig)}


class LaunchError(RuntimeError):
    pass


# What stops a launch before any peer starts, with a one-line message and exit code 2.
REFUSALS = (ConfigError, TopologyError, LaunchError, FaultSpecError, KeyFileError)


def main(argv: list[str] | None = None) -> int:
    try:
        config, topology, options = parse(argv)
        run = prepare_resume(options) if options.resume else prepare(config, topology, options)
    except REFUSALS as error:
        return refuse(error)
    if run is None:
        return 0  # a resumed run whose peers had all finished
    ended = run_peers(run)
    return conclude(run, ended)


def launch(config: PeerConfig | None, topology: Topology | None, options: LaunchOptions) -> int:
    """``main`` for a configuration built by functions (the experiment runner, the message study): run every
    peer of ``topology`` with ``config`` on this machine, show their progress, write RUN/summary.json;
    returns the launcher's exit code. With ``options.resume`` it resumes the interrupted run in
    ``options.out`` instead, with that run's own configuration and topology (pass None for both)."""
    try:
        if options.resume:
            if config is not None or topology is not None:
                raise LaunchError("resuming takes the configuration and topology from the run directory; "
                                  "pass None for both")
            run = prepare_resume(options)
        else:
            run = prepare(config, topology, options)
    except REFUSALS as error:
        return refuse(error)
    return 0 if run is None else conclude(run, run_peers(run))


def resume(out: str | Path, timeout: float = 0.0) -> int:
    """Resume the interrupted launch in ``out`` (``--resume DIR``); returns the launcher's exit code."""
    return launch(None, None, LaunchOptions(out=str(out), resume=True, timeout=timeout))


def refuse(error: Exception) -> int:
    print(f"launch_swarm: error: {error}", file=sys.stderr)
    return 2


def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    parser = new_parser(
        defaults,
        prog="p2ptrain-swarm",
        description="Start one p2ptrain peer process per peer of TOPOLOGY on this machine, show their "
                    "progress, and write DIR/summary.json. Training options are passed to every peer. "
                    "Also run as python -m p2ptrain.swarm or scripts/launch_swarm.py.",
    )
    add = option_adder(parser, defaults)
    add("topology", nargs="?", default="",
        help=f"topology file (default: the --config file's topology, else {DEFAULT_TOPOLOGY})")
    add("--config", default="", metavar="FILE",
        help="the peers' options from a TOML file (run.toml, as python -m p2ptrain.peer --config reads it); "
             "its out, keys, insecure and overwrite are the launcher's; the command line overrides it")
    add("--out", default="", help="run directory (default: runs/TOPOLOGY-ALGO-TIME)")
    add("--base-port", type=int, default=0,
        help="move peer i to port BASE+i on its host, to run beside another swarm")
    add("--run-id", default="", help="run id shared by the peers (default: the run directory's name)")
    add("--timeout", type=float, default=0.0,
        help="stop every peer after this many seconds (default: no limit)")
    add("--overwrite", action="store_true", help="replace an earlier run in --out")
    add("--resume", default="", metavar="DIR",
        help="resume the interrupted launch in DIR with its own options and topology (only --timeout may be "
             "given): every peer continues from its checkpoint, all from the same round when their "
             "checkpoints allow it, so a synchronous run ends as it would have uninterrupted")
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
    resume: bool = False  # resume the interrupted launch in ``out`` (the command line: --resume DIR)


LAUNCH_FIELDS = tuple(f.name for f in dataclasses.fields(LaunchOptions))
# Peer options of a --config file that the launcher takes as its own: where the run goes, and its keys.
FILE_LAUNCH_FIELDS = ("out", "keys", "insecure", "overwrite")
# What --resume DIR may be given with: everything else comes from DIR.
RESUME_OPTIONS = {"resume", "timeout"}
# Launcher options that share a peer option's name but mean something else to the launcher.
LAUNCHER_OWN = ("peer", "out", "join", "resume")


def parse(argv: list[str] | None) -> tuple[PeerConfig | None, Topology | None, LaunchOptions]:
    """The launcher's command line: the peers' configuration (with the task's defaults where the
    command line sets nothing), the topology and the launcher's own options; with --resume DIR, the
    options only (the rest is read from DIR)."""
    everything, explicit = given_options(build_parser, argv)
    if everything["resume"]:
        others = sorted(set(explicit) - RESUME_OPTIONS)
        if others:
            flags = ", ".join("TOPOLOGY" if name == "topology" else "--" + name.replace("_", "-") for name in others)
            raise LaunchError(f"--resume {everything['resume']} takes the run's options and topology from that "
                              f"directory; drop {flags} (only --timeout may be given)")
        everything |= {"out": everything["resume"], "resume": True}
        return None, None, LaunchOptions(**{name: everything[name] for name in LAUNCH_FIELDS})
    from_file = read_config_file(everything["config"]) if everything["config"] else {}
    options = LaunchOptions(**{name: everything[name] for name in LAUNCH_FIELDS})
    options = dataclasses.replace(options, **{name: from_file[name] for name in FILE_LAUNCH_FIELDS
                                              if name in from_file and name not in explicit})
    # The launcher gives each peer its own --peer and --out; its --join and --resume are its own options.
    training = {name: value for name, value in (from_file | explicit).items()
                if name in PEER_FIELDS and name not in LAUNCHER_OWN}
    config = resolve_config(training)
    topology_file = everything["topology"] or from_file.get("topology", "")
    topology = load_topology(topology_file) if topology_file else generate("ring", 8, base_port=25000, name="ring8")
    if everything["base_port"]:
        topology = with_ports(topology, everything["base_port"])
    return config, topology, options


def with_ports(topology: Topology, base_port: int) -> Topology:
    endpoints = []
    for i, spec in enumerate(topology.peers):
        match = ENDPOINT.fullmatch(spec.endpoint)
        if not match or match["host"] is None:  # ipc:// or inproc://: no port to move
            raise LaunchError(f"--base-port needs tcp:// endpoints; {spec.id} has {spec.endpoint}")
        endpoints.append(f"tcp://{match['host']}:{base_port + i}")
    return relocate(topology, endpoints)


@dataclass
class PreparedRun:
    """A launch checked and written down: what the peers are given, and what the summary needs."""

    config: PeerConfig  # as every peer reads it from RUN/peer-config.json
    topology: Topology
    options: LaunchOptions
    dir: RunDir
    task: object
    faults: FaultPlan
    reference: torch.Tensor | None  # the centralized optimum of a convex task, to measure the peers against
    resumed: ResumePlan | None = None  # how each peer continues an interrupted launch (--resume)


def prepare(config: PeerConfig, topology: Topology, options: LaunchOptions) -> PreparedRun:
    """Refuse (with one of REFUSALS) what cannot work before anything is written; then write the run
    directory: the topology, keys, the reference optimum and the one configuration every peer reads."""
    task = resolve_task(config)
    if options.centralized:
        topology, config = centralized(topology, config, task)
    check_run(config, topology, task)
    if config.task:
        shard_of(task, 0, topology.size, config.seed)  # a task of the user's: a shard no peer could use, refused now
    faults = fault_plan(options, topology)
    check_launch_options(options, topology)
    check_given_keys(options, topology)
    if config.fragments > 1:
        # Cut here as every peer will cut it: a count the model cannot take is refused before any peer starts.
        build_algorithm(config, topology, topology.ids[0], task.build_model())
    if options.join:
        config.replace(join=True).validate()  # what the joining peers will be told: refused now, not then
        # The others do not wait for the latecomers in their first round.
        config = config.replace(absent=",".join(sorted(config.absent_peers() | set(faults.joins))))
    if options.restart and not config.checkpoint_every:
        print("launch_swarm: warning: --restart without --checkpoint-every restarts peers from round 0",
              file=sys.stderr)

    run_dir = claim_run_dir(options, topology, config)
    run_id = config.run_id or run_dir.path.name
    if options.in_process:
        topology = local_endpoints(topology, run_id, options.in_process)
    run_dir.topology.write_text(
        dump_topology(topology, "The topology this run used, as the launcher gave it to the peers."))
    keys_dir = swarm_keys(options, topology, run_dir)
    reference = None
    if hasattr(task, "centralized_optimum"):
        # Computed once here, from all the data, only to measure the peers against.
        reference = task.centralized_optimum(topology.size)
        atomic_torch_save(reference, run_dir.reference)
    # One configuration for every peer, in a file: the peers read it as it is, nothing is re-parsed.
    # Absolute paths: the peers, a later --resume or a peer started by hand with --config may run elsewhere.
    config = config.replace(topology=str(run_dir.topology.resolve()), run_id=run_id,
                            keys=str(keys_dir.resolve()) if keys_dir else "", insecure=keys_dir is None,
                            reference=str(run_dir.reference.resolve()) if reference is not None else "",
                            task=portable_task(config.task), task_args=portable_task_args(config.task_args))
    atomic_write_json(run_dir.peer_config, config.to_dict())
    return PreparedRun(config, topology, options, run_dir, task, faults, reference)


def prepare_resume(options: LaunchOptions) -> PreparedRun | None:
    """The interrupted launch in ``options.out``, ready to run again: its configuration, topology, keys and
    mode as it recorded them, and how each peer continues (resume.py). None, with nothing changed, if every
    peer had finished."""
    run_dir = RunDir(Path(options.out))
    if not (run_dir.peer_config.exists() and run_dir.topology.exists()):
        raise LaunchError(f"--resume {run_dir.path}: no launched run there (no {run_dir.peer_config.name} and "
                          f"{run_dir.topology.name}); pass the --out of the launch to resume")
    # The launch's --absent named its --join peers, absent at its start; whom a resumed peer does not wait
    # for is the resume plan's (resume.py: the finished and the joining peers), given on its command line.
    config = _found_here(PeerConfig.from_file(run_dir.peer_config), run_dir).replace(absent="")
    topology = load_topology(run_dir.topology)
    earlier = json.loads(run_dir.launch.read_text()) if run_dir.launch.exists() else {}
    mode = earlier.get("mode", "processes")
    options = dataclasses.replace(options, in_process="" if mode == "processes" else mode)
    task = resolve_task(config)
    check_launch_options(options, topology)
    plan = plan_resume(run_dir, topology, config)
    if plan.nothing_to_do:
        print(f"launch_swarm: {run_dir.path}: {plan.describe()}; its summary is {run_dir.summary}", flush=True)
        return None
    try:
        atomic_write_json(run_dir.peer_config, config.to_dict())  # the file the peers read
    except OSError as error:
        raise LaunchError(f"cannot write {run_dir.peer_config}: {error.strerror}; free space or fix the "
                          "directory's permissions, then resume again") from None
    plan.earlier_launches = [*earlier.get("interrupted_launches", []),
                             {key: earlier[key] for key in ("argv", "pids", "started_unix_time") if key in earlier}]
    if options.in_process:
        if plan.finished or plan.joining or not plan.consistent:
            raise LaunchError(f"cannot resume {run_dir.path} in one process: {plan.describe()}; only a run whose "
                              "peers all continue from one round can (or start it again with --overwrite)")
        topology = local_endpoints(topology, config.run_id, options.in_process)  # fresh ipc socket files
        config = config.replace(resume=True, resume_round=-1 if plan.common_round is None else plan.common_round)
    reference = torch.load(run_dir.reference, weights_only=True) if run_dir.reference.exists() else None
    print(f"resuming {run_dir.path}: {plan.describe()}", flush=True)
    return PreparedRun(config, topology, options, run_dir, task, FaultPlan(), reference, plan)


def _found_here(config: PeerConfig, run_dir: RunDir) -> PeerConfig:
    """``config`` with the run's own files (its topology, keys, reference) named where ``run_dir`` is now: a
    launch recorded them where it ran from, and the run may be resumed from elsewhere, or have moved."""
    recorded = Path(config.topology).parent  # the launch's run directory: the topology is always in it

    def here(path: str) -> str:
        if not path or not Path(path).is_relative_to(recorded):
            return path  # not the run's own (keys of the user's): as given, absolute since launches record so
        return str((run_dir.path / Path(path).relative_to(recorded)).resolve())

    return config.replace(topology=here(config.topology), keys=here(config.keys), reference=here(config.reference))


def centralized(topology: Topology, config: PeerConfig, task) -> tuple[Topology, PeerConfig]:
    """The swarm's centralized baseline: its first peer alone, with all the data, taking batches as large
    as the whole swarm's, so that after each round it has seen as many samples as the swarm has."""
    if isinstance(task, DatasetTask) and task.name in PRESPLIT:
        raise LaunchError(f"--centralized: {task.name} is generated for the number of peers, a block each, so one "
                          "peer alone would train on another problem; its swarms are measured against the exact "
                          "optimum instead (max_rel_error_to_optimum in summary.json)")
    first = topology.peers[0]
    alone = build_topology(f"{topology.name}-centralized", [PeerSpec(first.id, first.endpoint, first.bind)], [])
    return alone, config.replace(batch_size=task_batch_size(config, topology, task) * topology.size)


def fault_plan(options: LaunchOptions, topology: Topology) -> FaultPlan:
    faults = FaultPlan.parse(options.kill, options.restart, options.pause, topology.ids, options.join)
    if options.in_process and (options.kill or options.restart or options.pause or options.join):
        raise LaunchError("--kill, --restart, --pause and --join act on peer processes; drop --in-process")
    return faults


def check_launch_options(options: LaunchOptions, topology: Topology) -> None:
    if not options.in_process:
        check_endpoints_free(topology)
    if options.in_process == "inproc" and options.keys:
        raise LaunchError("--keys with --in-process: inproc sockets have no CurveZMQ handshake; "
                          "use --in-process ipc, or drop --keys")
    if options.insecure and options.keys:
        raise LaunchError("--insecure and --keys contradict each other; pick one")


def check_endpoints_free(topology: Topology) -> None:
    """Every peer must be able to listen here; say which port is taken before any peer starts."""
    for spec in topology.peers:
        match = ENDPOINT.fullmatch(spec.bind)
        if not match or match["host"] is None:  # ipc:// and inproc:// take no port
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


def claim_run_dir(options: LaunchOptions, topology: Topology, config: PeerConfig) -> RunDir:
    """The run directory, made or emptied of an earlier run (only with --overwrite), and known writable."""
    run_dir = RunDir(Path(options.out)) if options.out else \
        RunDir.fresh(f"{topology.name}-{config.algo}-{time.strftime('%Y%m%d-%H%M%S')}")
    if run_dir.holds_a_run() and not options.overwrite:
        raise LaunchError(f"{run_dir.path} holds an earlier run; pass another --out, or --overwrite to replace it")
    try:
        if run_dir.holds_a_run():
            shutil.rmtree(run_dir.peers, ignore_errors=True)
            # Everything else of the earlier run that is not written anew (a later --resume would read it).
            for earlier in (run_dir.summary, run_dir.reference, run_dir.peers_log, run_dir.launch):
                earlier.unlink(missing_ok=True)
        run_dir.path.mkdir(parents=True, exist_ok=True)
        # mkdir accepts a directory that exists but cannot be written: a file made and dropped at once tells.
        tempfile.TemporaryFile(dir=run_dir.path).close()
    except OSError as error:
        raise LaunchError(f"cannot write the run directory {run_dir.path}: {_why_not_writable(run_dir.path, error)}; "
                          "pass an --out you can write to") from None
    return run_dir


def _why_not_writable(path: Path, error: OSError) -> str:
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            return f"{'it' if part == path else part} is a file, not a directory"
    return (error.strerror or str(error)).lower()


def check_given_keys(options: LaunchOptions, topology: Topology) -> None:
    """--keys holds every peer's key pair and everyone's public key (every peer starts here); refused now,
    before anything of the run is written."""
    if options.keys and not options.insecure and options.in_process != "inproc":
        for peer_id in topology.ids:
            load_security(topology, peer_id, options.keys)


def swarm_keys(options: LaunchOptions, topology: Topology, run_dir: RunDir) -> Path | None:
    """The keys directory the peers get: --keys, or fresh keys in RUN_DIR/keys; None when insecure."""
    if options.in_process == "inproc":
        return None  # inproc messages never leave this process: nothing to encrypt or authenticate
    if options.insecure:
        print("launch_swarm: --insecure: the peers' connections are neither encrypted nor authenticated",
              file=sys.stderr)
        return None
    if options.keys:
        return Path(options.keys)  # checked by check_given_keys before the run directory was claimed
    generate_keys(topology, run_dir.keys, force=True)
    print(f"CurveZMQ keys for {topology.size} peers made in {run_dir.keys} (--insecure to run without)", flush=True)
    return run_dir.keys


def portable_task_args(task_args: str) -> str:
    """--task-args with every value that names a file or directory relative to here made absolute (a
    corpus: text=FILE), as task files are: the peers, or a later --resume, may run elsewhere."""
    items = []
    for item in task_args.split(","):
        key, equals, value = item.partition("=")
        path = Path(value.strip())
        if equals and value.strip() and not path.is_absolute() and path.exists():
            item = f"{key}={path.resolve()}"
        items.append(item)
    return ",".join(items)


def portable_task(task: str) -> str:
    """A task file named relative to here, made absolute: the peers may run elsewhere."""
    path, _, attribute = task.rpartition(":")
    if path.endswith(".py"):
        return f"{Path(path).resolve()}:{attribute}"
    return task


@dataclass
class Ended:
    """How the peers' run ended."""

    exit_codes: dict[str, int | None]  # None: never started (a --join that did not come due)
    interrupted: int | None  # the signal that stopped the run, if one did
    wall_seconds: float
    started_unix_time: float


def run_peers(run: PreparedRun) -> Ended:
    """Every peer of the run, as processes (with the fault plan) or in this process, shown meanwhile."""
    config, options = run.config, run.options
    mode = f"in this process over {options.in_process}" if options.in_process else "as processes"
    # --partition splits the built-in datasets; a task of its own (gpt-char's contiguous slices) splits its data itself.
    split = f", {run.task.partition}" if isinstance(getattr(run.task, "partition", None), str) else ""
    print(f"starting {run.topology.size} peers of {run.topology.name} ({config.algo}, {task_name(run.task)}{split}) "
          f"{mode}, in {run.dir.path}", flush=True)
    progress = Progress(run.dir, run.topology.ids, config.rounds, headline_figure(run.task))
    started_unix_time = time.time()
    record = {"argv": sys.argv, "run_id": config.run_id, "config": str(run.dir.peer_config),
              "mode": options.in_process or "processes", "started_unix_time": started_unix_time}
    if run.resumed is not None:
        record["interrupted_launches"] = run.resumed.earlier_launches
    if options.in_process:
        atomic_write_json(run.dir.launch, record)
        try:
            exit_codes, interrupted = run_here(run.topology, config, run.dir, progress, options.timeout)
        finally:
            remove_socket_directory(run.topology)  # local_endpoints' temporary one, with --in-process ipc
    else:
        if run.resumed is not None:
            plan = run.resumed
            peers = start_peers(run.dir, run.dir.peer_config, run.topology.ids,
                                arguments={p: plan.arguments(p) for p in run.topology.ids}, done=set(plan.finished))
        else:
            peers = start_peers(run.dir, run.dir.peer_config, run.topology.ids, set(run.faults.joins))

        def record_pids() -> None:  # at the start, and again once a restart or a join has started a process
            atomic_write_json(run.dir.launch,
                              record | {"pids": {p.id: p.process.pid for p in peers if p.process is not None}})

        record_pids()
        interrupted = supervise(peers, progress, options.timeout, run.faults, config.recv_timeout, record_pids)
        exit_codes = {p.id: p.exit_code for p in peers}
    return Ended(exit_codes, interrupted, time.monotonic() - progress.started, started_unix_time)


def conclude(run: PreparedRun, ended: Ended) -> int:
    """Write and print the summary; the launcher's exit code: 128 + a signal that interrupted the run,
    1 if a peer did not finish, 2 if the summary could not be written, else 0."""
    summary = summarise(run.topology, run.config.algo, run.dir, ended.exit_codes, ended.wall_seconds, run.reference,
                        headline_figure(run.task))
    summary["run_id"] = run.config.run_id
    if run.resumed is not None:
        summary["resumed"] = run.resumed.record()
    if run.faults.events:
        summary["faults"] = run.faults.events
        # Event times count from the launcher's start; peers' metrics carry wall-clock "unix_time".
        summary["started_unix_time"] = ended.started_unix_time
    try:
        atomic_write_json(run.dir.summary, summary)
    except OSError as error:  # the peers' own files are written: only the summary is missing
        print(f"launch_swarm: error: cannot write {run.dir.summary}: {error.strerror}; the peers' outputs are "
              f"in {run.dir.peers}", file=sys.stderr)
        return 2
    logs = run.dir.peers_log if run.options.in_process else run.dir.peer("ID").log
    print_summary(summary, run.dir, logs=str(logs))
    if ended.interrupted is not None:
        return 128 + ended.interrupted
    return 1 if failed_peers(summary) else 0


if __name__ == "__main__":
    sys.exit(main())
