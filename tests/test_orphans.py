"""No orphans: peers started by the launcher end however it ends, stopped ones included; others are untouched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from p2ptrain.lifeline import LAUNCHER_PID
from p2ptrain.ports import free_port_block, port_free
from p2ptrain.topology import PeerSpec, build_topology, dump_topology, load_topology

from .processes import ROOT, LoggedProcess, alive, poll, process_state

pytestmark = pytest.mark.swarm


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads process states from /proc")
def test_a_sigkilled_launcher_leaves_no_peer_and_no_port_even_with_a_peer_sigstopped(topology_file, tmp_path):
    topology_path = topology_file("ring", 4)
    ports = [int(spec.endpoint.rsplit(":", 1)[1]) for spec in load_topology(topology_path).peers]
    out = tmp_path / "run"
    launcher = LoggedProcess.launcher([str(topology_path), "--out", str(out), "--rounds", "1000000",
                                       "--eval-every", "1000", "--insecure", "--pause", "p1@5:3600"])
    pids: dict[str, int] = {}
    try:
        launcher.wait_for_line(r"launch_swarm: pause p1 at round", timeout=120)
        pids = json.loads((out / "launch.json").read_text())["pids"]
        assert poll(lambda: process_state(pids["p1"]) == "T", timeout=10)  # stopped, as the fault plan said
        assert all(alive(pid) for pid in pids.values())
        assert not any(port_free(port) for port in ports)  # every peer holds its port

        launcher.kill(signal.SIGKILL)
        assert launcher.finish(timeout=10) == -signal.SIGKILL
        assert poll(lambda: not any(alive(pid) for pid in pids.values()), timeout=30), \
            {peer: process_state(pid) for peer, pid in pids.items()}
        assert poll(lambda: all(port_free(port) for port in ports), timeout=30)
    finally:
        launcher.kill()
        for pid in pids.values():  # only if the test failed: leave nothing behind
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_peer_whose_launcher_is_gone_stops_by_the_pid_watch_where_the_kernel_would_not_stop_it(tmp_path):
    # The fallback for systems without PR_SET_PDEATHSIG: a "launcher" starts a process that watches it (and asks
    # the kernel for nothing), then exits. Re-parented, the watcher sees it and SIGTERMs itself.
    watcher_code = ("import os, signal, sys; from p2ptrain.lifeline import watch_launcher, LAUNCHER_PID\n"
                    "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])  # for sigwait below\n"
                    "watch_launcher(int(os.environ[LAUNCHER_PID]), interval=0.05)\n"
                    "print('watching', flush=True)\n"
                    "signal.sigwait([signal.SIGTERM]); print('stopped by SIGTERM', flush=True)")
    launcher_code = ("import os, subprocess, sys\n"
                     f"env = os.environ | {{'{LAUNCHER_PID}': str(os.getpid())}}\n"
                     "child = subprocess.Popen([sys.executable, '-c', sys.argv[1]], env=env, stdout=sys.stdout)\n"
                     "print(child.pid, flush=True)\n"
                     "sys.stdin.readline()\n")  # exits when told to
    launcher = subprocess.Popen([sys.executable, "-c", launcher_code, watcher_code], cwd=ROOT, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                env=os.environ | {"PYTHONPATH": str(ROOT)})
    watcher_pid = None
    try:
        watcher_pid = int(launcher.stdout.readline())
        assert launcher.stdout.readline().strip() == "watching"
        assert alive(watcher_pid)
        launcher.stdin.write("exit\n")
        launcher.stdin.flush()
        assert launcher.wait(timeout=10) == 0
        assert launcher.stdout.readline().strip() == "stopped by SIGTERM"
        assert poll(lambda: not alive(watcher_pid), timeout=10)
    finally:
        launcher.kill()
        if watcher_pid is not None and alive(watcher_pid):
            os.kill(watcher_pid, signal.SIGKILL)


def test_a_peer_started_by_hand_outlives_the_process_that_started_it(tmp_path):
    # No launcher variable: the peer is nobody's, so its parent exiting ends nothing; it runs all its rounds.
    port = free_port_block(1)
    topology_path = tmp_path / "solo.toml"
    topology_path.write_text(dump_topology(build_topology(
        "solo", [PeerSpec("p0", f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port}")], [])))
    out = tmp_path / "p0"
    peer = [sys.executable, "-m", "p2ptrain.peer", "--topology", str(topology_path), "--peer", "p0", "--rounds",
            "300", "--min-compute-seconds", "0.01", "--insecure", "--out", str(out)]
    starter_code = ("import subprocess, sys\n"
                    "child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
                    "print(child.pid, flush=True)\n")
    environment = {k: v for k, v in os.environ.items() if k != LAUNCHER_PID} | {"PYTHONPATH": str(ROOT)}
    starter = subprocess.run([sys.executable, "-c", starter_code, *peer], cwd=ROOT, env=environment,
                             capture_output=True, text=True, timeout=30)
    pid = int(starter.stdout)
    try:
        assert poll(lambda: out.joinpath("result.json").exists(), timeout=120)
        result = json.loads(out.joinpath("result.json").read_text())
        assert (result["status"], result["rounds_completed"]) == ("completed", 300)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
