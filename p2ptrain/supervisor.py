"""Running the peers of a launch: a process per peer, watched until they end, with the fault plan carried out
meanwhile; or every peer as a task of this process (--in-process).

The supervisor starts, signals and stops processes; it learns how far peers
have got from the progress display, which reads their files. It never talks
to a peer.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from .config import RESTART_COUNTS, PeerConfig
from .faults import FaultPlan
from .inprocess import run_in_process
from .lifeline import LAUNCHER_PID
from .peer import configure_logging
from .progress import Progress
from .rundir import PeerDir, RunDir
from .topology import Topology

# How long peers get to exit after SIGTERM before they are killed.
STOP_GRACE_SECONDS = 10.0
FAULT_SIGNALS = {"kill": signal.SIGKILL, "pause": signal.SIGSTOP, "continue": signal.SIGCONT}


@dataclass
class PeerProcess:
    id: str
    files: PeerDir
    command: tuple[str, ...]
    log_file: BinaryIO
    process: subprocess.Popen | None = None  # None while held back for a --join
    exit_code: int | None = None

    def start(self, *extra: str) -> None:
        self.process = _spawn((*self.command, *extra), self.log_file)
        self.exit_code = None

    def restart(self, recv_timeout: float) -> None:
        """Start a killed peer again with --resume; its log goes on in the same file. Its neighbours are
        running (or done), so its first round waits the round deadline, not the start-up one; and the
        launch's --absent (the latecomers of a --join, absent at its start) is no longer so: whom the peer
        suspects is what its checkpoint says."""
        self.log_file.close()
        self.log_file = open(self.files.log, "ab")
        self.start("--resume", "--startup-timeout", str(recv_timeout), "--absent", "")

    def join(self) -> None:
        """Start a held-back peer with --join: it takes a running neighbour's state."""
        self.start("--join")


def start_peers(run_dir: RunDir, config_file: Path, peer_ids: tuple[str, ...],
                held_back: set[str] = frozenset(), arguments: dict[str, tuple[str, ...]] | None = None,
                done: set[str] = frozenset()) -> list[PeerProcess]:
    """Start a process per peer, except the ``held_back`` ones (they join later, see PeerProcess.join).
    Resuming a launch: ``arguments`` adds to each peer's command line, peers ``done`` in an earlier launch
    are not started (their exit code is taken as 0), and the logs go on where they stopped."""
    peers = []
    for peer_id in peer_ids:
        files = run_dir.peer(peer_id)
        files.path.mkdir(parents=True, exist_ok=True)
        command = (sys.executable, "-m", "p2ptrain.peer", "--config", str(config_file), "--peer", peer_id,
                   "--out", str(files.path), *(arguments or {}).get(peer_id, ()))
        peer = PeerProcess(peer_id, files, command, open(files.log, "ab" if arguments is not None else "wb"))
        if peer_id in done:
            peer.exit_code = 0
        elif peer_id not in held_back:
            peer.start()
        peers.append(peer)
    return peers


def _spawn(command: tuple[str, ...], log_file: BinaryIO) -> subprocess.Popen:
    # A restart count belongs to the launcher (run inside a requeued Slurm job, say), not to its peers: this
    # launcher says itself which peers resume.
    environ = {name: value for name, value in os.environ.items() if name not in RESTART_COUNTS}
    return subprocess.Popen(
        command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        # The peer ties itself to this process (lifeline.py): however the launcher ends, its peers end too.
        env=environ | {"PYTHONUNBUFFERED": "1", LAUNCHER_PID: str(os.getpid())},
        start_new_session=True,  # Ctrl-C reaches the launcher only; it stops the peers in order
    )


def supervise(peers: list[PeerProcess], progress: Progress, timeout: float, faults: FaultPlan,
              recv_timeout: float, started_more: Callable[[], None] = lambda: None) -> int | None:
    """Watch peer processes until all exit, a signal arrives (returned) or the timeout passes; then stop them.
    Meanwhile carry out the fault plan's kills, restarts and pauses as they fall due; ``started_more`` is
    called once a restart or a join has started a process."""
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
                if p.process is not None:
                    p.exit_code = p.process.poll()
            _show(progress, peers)
            if carry_out(faults, peers, progress, recv_timeout):
                started_more()
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
            if p.process is not None:
                p.exit_code = p.process.returncode
            p.log_file.close()
        _show(progress, peers)
    return interrupted


def carry_out(faults: FaultPlan, peers: list[PeerProcess], progress: Progress,
              recv_timeout: float) -> bool:
    """The fault plan's actions that are due now, given the rounds the peers have completed; whether one of
    them started a process (a restart, a join)."""
    by_id = {p.id: p for p in peers}
    rounds = progress.rounds_completed()
    actions = faults.due(rounds, time.monotonic() - progress.started)
    # Each as the plan recorded it: a join at the swarm's round, the others at the peer's own.
    for action, event in zip(actions, faults.events[len(faults.events) - len(actions):]):
        print(f"launch_swarm: {action.kind} {action.peer} at round {event['round']}", flush=True)
        peer = by_id[action.peer]
        if action.kind == "restart":
            peer.restart(recv_timeout)
        elif action.kind == "join":
            peer.join()
        else:
            peer.process.send_signal(FAULT_SIGNALS[action.kind])
    return any(action.kind in ("restart", "join") for action in actions)


def _show(progress: Progress, peers: list[PeerProcess]) -> None:
    progress.show({p.id: p.exit_code for p in peers}, {p.id for p in peers if p.process is None and p.exit_code is None})


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


def run_here(topology: Topology, config: PeerConfig, run_dir: RunDir, progress: Progress,
             timeout: float) -> tuple[dict[str, int], int | None]:
    """Every peer as a task of this process (--in-process), logging to RUN/peers.log, with the progress
    shown meanwhile. Returns each peer's exit code and the signal that interrupted the run, if one did."""
    configure_logging(config.log_level, run_dir.peers_log)
    codes, timed_out = asyncio.run(_run_and_watch(topology, config, run_dir, progress, timeout))
    stopped = set(codes.values()) & {128 + signal.SIGINT, 128 + signal.SIGTERM}
    # A timeout stops the peers like a signal, but the run failed rather than being interrupted.
    return codes, (min(stopped) - 128 if stopped and not timed_out else None)


async def _run_and_watch(topology: Topology, config: PeerConfig, run_dir: RunDir, progress: Progress,
                         timeout: float) -> tuple[dict[str, int], bool]:
    running = {peer_id: None for peer_id in topology.ids}
    run = asyncio.ensure_future(run_in_process(topology, config, run_dir.peers))
    timed_out = False

    async def watch() -> None:
        nonlocal timed_out
        while True:
            progress.show(running)
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
    progress.show(codes)
    return codes, timed_out
