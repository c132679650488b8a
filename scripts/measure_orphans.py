#!/usr/bin/env python3
"""How long a swarm's peers outlive a SIGKILLed launcher, one of them SIGSTOPped at the time (Linux: reads /proc).

Launches the swarm with --pause PEER@ROUND:3600 (SIGSTOP, no SIGCONT for an
hour), SIGKILLs the launcher once the pause is done, and prints how long
until no peer process is left and every port is free again.

    python scripts/measure_orphans.py [--topology topologies/ring8.toml] [--peer p2] [--at 20] [--base-port P]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from p2ptrain.ports import port_free
from p2ptrain.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent


def state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default=str(ROOT / "topologies" / "ring8.toml"))
    parser.add_argument("--peer", default="p2", help="the peer SIGSTOPped")
    parser.add_argument("--at", type=int, default=20, help="round at which it is SIGSTOPped")
    parser.add_argument("--base-port", type=int, default=0)
    args = parser.parse_args()
    topology = load_topology(args.topology)
    ports = [args.base_port + i if args.base_port else int(spec.endpoint.rsplit(":", 1)[1])
             for i, spec in enumerate(topology.peers)]
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "run"
        command = [sys.executable, str(ROOT / "scripts" / "launch_swarm.py"), args.topology, "--out", str(out),
                   "--rounds", "1000000", "--eval-every", "1000", "--pause", f"{args.peer}@{args.at}:3600",
                   *(["--base-port", str(args.base_port)] if args.base_port else [])]
        print(f"running: {' '.join(command[1:])}", flush=True)
        launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in launcher.stdout:
            if f"pause {args.peer} at round" in line:
                break
        pids = json.loads((out / "launch.json").read_text())["pids"]
        while state(pids[args.peer]) != "T":
            time.sleep(0.01)
        launcher.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        launcher.wait()
        gone_at, free_at = {}, None
        while (len(gone_at) < len(pids) or free_at is None) and time.monotonic() - killed < 60:
            now = time.monotonic() - killed
            for peer, pid in pids.items():
                if peer not in gone_at and state(pid) in (None, "Z", "X"):
                    gone_at[peer] = now
            if free_at is None and all(port_free(port) for port in ports):
                free_at = now
            time.sleep(0.005)
        for pid in pids.values():
            if state(pid) not in (None, "Z", "X"):
                os.kill(pid, signal.SIGKILL)
    print(f"launcher SIGKILLed with {args.peer} SIGSTOPped; seconds until each peer was gone:")
    print("  " + ", ".join(f"{peer} {gone_at.get(peer, float('nan')):.3f}" for peer in pids))
    print(f"every peer gone after {max(gone_at.values(), default=float('nan')):.3f}s"
          f"{'' if len(gone_at) == len(pids) else ' (SOME STILL RUN after 60 s)'}; every port free after "
          f"{free_at if free_at is not None else float('nan'):.3f}s")
    return 0 if len(gone_at) == len(pids) and free_at is not None else 1


if __name__ == "__main__":
    sys.exit(main())
