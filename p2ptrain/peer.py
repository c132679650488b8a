"""python -m p2ptrain.peer: one peer of a swarm, from the command line.

This module reads and checks the command line; running.py starts the peer,
and node.py is the engine that runs its rounds. Everything that can be
refused without loading torch (the options, the topology, this peer's place
in it, --absent, --out) is refused here, in one line with exit code 2,
before the seconds torch takes to load; ``--help`` never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

from .config import (ConfigError, PeerConfig, after_launcher_restart, build_parser, given_options,
                     read_config_file, resolve_peer_id)
from .lifeline import LauncherGone, tie_to_launcher


def main(argv: list[str] | None = None) -> int:
    with _signals_exit():
        return _main(argv)


@contextlib.contextmanager
def _signals_exit() -> Iterator[None]:
    """Until the running peer takes them (running.run_peer), SIGINT and SIGTERM end the process as they end a
    running peer, with 128 + the signal: a launcher may stop its peers while they still import torch. The
    handlers before are put back after (main may be called in a process of its own: a test's)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; a peer run in another thread owns no signals
        return
    before = {signum: signal.signal(signum, _exit_on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def _main(argv: list[str] | None) -> int:
    everything, explicit = given_options(build_parser, argv)
    configure_logging(everything["log_level"])
    try:
        tie_to_launcher()  # a peer the launcher started ends with it; one started by hand is untouched
    except LauncherGone as error:
        return _refuse(error)
    try:
        explicit, restarted = given_with_file(explicit)
        topology = check_command_line(explicit)
    except ConfigError as error:
        return _refuse(error)
    if restarted:
        logging.getLogger("p2ptrain.peer").info(restarted)
    from . import replica, running  # torch and ZeroMQ: only for a peer that is going to run

    try:
        return asyncio.run(running.run_peer(replica.resolve_config(explicit), topology=topology))
    except running.USER_ERRORS as error:
        return _refuse(error)


def _exit_on_signal(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def given_with_file(explicit: dict, environ=os.environ) -> tuple[dict, str]:
    """The options a peer is given: its --config file's under its command line's (replica.resolve_config puts
    the task's defaults under both), with --resume when its launcher restarted it; and that restart, if any."""
    config_file = explicit.pop("config", "")
    given = read_config_file(config_file) | explicit if config_file else explicit
    return after_launcher_restart(given, environ)


def check_command_line(explicit: dict):
    """The topology, once what the options alone show cannot run is refused, with the fix: bad values, a
    topology that does not load or lacks this peer, --absent peers it lacks, an --out that cannot be written."""
    config = PeerConfig.from_dict(explicit).validate()
    if not config.topology:
        raise ConfigError("no topology: pass --topology FILE (e.g. topologies/ring8.toml), or --config FILE")
    from .topology import TopologyError, load_topology  # numpy, not torch

    try:
        topology = load_topology(config.topology)
        peer_id = topology.peer(resolve_peer_id(config.peer, topology.ids)).id
    except TopologyError as error:
        raise ConfigError(str(error)) from None
    config.absent_peers(topology.ids)
    from .keys import check_keys_or_insecure  # pyzmq, not torch

    check_keys_or_insecure(config, topology, peer_id)
    check_writable(config.for_peer(topology.name, peer_id).run_directory(peer_id))
    return topology


def check_writable(out: Path) -> None:
    """Refuse an output directory that could not be made or written to, before anything starts."""
    existing = out
    while not _exists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, not a directory; pass a directory path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {existing} is not writable by this user; pass a directory it can write to")


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # not even looked into: a parent that is not searchable decides
        return False


def _refuse(error: Exception) -> int:
    print(f"p2ptrain.peer: error: {error}", file=sys.stderr)
    return 2


def _default_peer_field(record: logging.LogRecord) -> bool:
    # Records from other libraries (asyncio, zmq) carry no peer id.
    if not hasattr(record, "peer"):
        record.peer = "-"
    return True


def configure_logging(level: str, path: Path | None = None) -> None:
    """Peer log lines ("time peer level message") to standard error, or appended to ``path``."""
    logging.basicConfig(level=level, handlers=[log_handler(path)], force=True)


def log_handler(path: Path | None = None) -> logging.Handler:
    """A handler writing peer log lines to standard error, or appending them to ``path``."""
    handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(peer)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.addFilter(_default_peer_field)
    return handler


if __name__ == "__main__":
    sys.exit(main())
