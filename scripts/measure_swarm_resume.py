#!/usr/bin/env python3
"""A whole swarm resumed after its launcher was SIGKILLed, against the same run uninterrupted.

Runs the swarm through the launcher twice with the same seed: once to the end,
once SIGKILLed (the launcher itself) as soon as every peer has completed
ROUND rounds, then resumed with `launch_swarm.py --resume DIR`. Prints the
round each peer had reached when the launcher died, the round the swarm
resumed from, each peer's final accuracy in both runs and the largest
difference between its two final models (0 when they are equal bit for bit).

    python scripts/measure_swarm_resume.py [--topology topologies/ring8.toml] [--at 60] [--rounds 300]
        [--checkpoint-every 10] [--min-compute-seconds 0.05] [--base-port P] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from p2ptrain.storage import read_json_lines
from p2ptrain.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = str(ROOT / "scripts" / "launch_swarm.py")


def swarm_options(args: argparse.Namespace) -> list[str]:
    return [args.topology, "--rounds", str(args.rounds), "--seed", str(args.seed), "--checkpoint-every",
            str(args.checkpoint_every), "--min-compute-seconds", str(args.min_compute_seconds), "--timeout", "900",
            *(["--base-port", str(args.base_port)] if args.base_port else [])]


def rounds_done(out: Path, peers: tuple[str, ...]) -> dict[str, int]:
    return {p: len(read_json_lines(out / "peers" / p / "metrics.jsonl")) for p in peers}


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie holds neither memory nor ports


def interrupted_run(args: argparse.Namespace, out: Path, peers: tuple[str, ...]) -> dict[str, int]:
    """Launch, SIGKILL the launcher once every peer has completed args.at rounds; returns the rounds reached."""
    command = [sys.executable, LAUNCHER, *swarm_options(args), "--out", str(out)]
    print(f"running: {' '.join(command[1:])}  (SIGKILLed at round {args.at})", flush=True)
    launcher = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not ((out / "launch.json").exists() and min(rounds_done(out, peers).values()) >= args.at):
        if time.monotonic() > deadline or launcher.poll() is not None:
            launcher.kill()
            raise SystemExit("the swarm did not reach the round in time, or finished first: pad rounds more")
        time.sleep(0.02)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    pids = json.loads((out / "launch.json").read_text())["pids"]
    deadline = time.monotonic() + 30
    while not all(gone(pid) for pid in pids.values()):
        if time.monotonic() > deadline:
            raise SystemExit(f"peers still running 30 s after the launcher died: {pids}")
        time.sleep(0.1)
    return rounds_done(out, peers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default=str(ROOT / "topologies" / "ring8.toml"))
    parser.add_argument("--at", type=int, default=60, help="round at which the launcher is SIGKILLed")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--min-compute-seconds", type=float, default=0.05,
                        help="pad rounds, so that the launcher dies mid-run")
    parser.add_argument("--base-port", type=int, default=0, help="move the swarm to ports BASE, BASE+1, ...")
    parser.add_argument("--out", default="", help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()
    peers = load_topology(args.topology).ids

    with tempfile.TemporaryDirectory() as scratch:
        base = Path(args.out or scratch)
        command = [sys.executable, LAUNCHER, *swarm_options(args), "--out", str(base / "uninterrupted")]
        print(f"running: {' '.join(command[1:])}", flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        reached = interrupted_run(args, base / "resumed", peers)
        command = [sys.executable, LAUNCHER, "--resume", str(base / "resumed")]
        print(f"running: {' '.join(command[1:])}", flush=True)
        started = time.monotonic()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        resume_seconds = time.monotonic() - started
        clean = json.loads((base / "uninterrupted" / "summary.json").read_text())
        resumed = json.loads((base / "resumed" / "summary.json").read_text())
        differences = {}
        for p in peers:
            a = torch.load(base / "uninterrupted" / "peers" / p / "model.pt", weights_only=True)
            b = torch.load(base / "resumed" / "peers" / p / "model.pt", weights_only=True)
            differences[p] = max(float((a[name] - b[name]).abs().max()) for name in a)

    print(f"\nlauncher SIGKILLed when every peer had completed {args.at} rounds; resumed from round "
          f"{resumed['resumed']['common_round']} (checkpoints every {args.checkpoint_every}); the resumed "
          f"launch took {resume_seconds:.1f}s")
    print(f"{'peer':<6} {'reached':>7} {'rounds':>6} {'exit':>4} {'uninterrupted acc':>17} {'resumed acc':>11} "
          f"{'max |model diff|':>16}")
    for p in peers:
        a, b = clean["peers"][p], resumed["peers"][p]
        print(f"{p:<6} {reached[p]:>7} {b['rounds_completed']:>6} {b['exit_code']!s:>4} {a['test_accuracy']:>17.4f} "
              f"{b['test_accuracy']:>11.4f} {differences[p]:>16.3g}")
    equal = all(d == 0 for d in differences.values())
    print(f"final models equal bit for bit: {'yes' if equal else 'no'}; consensus distance uninterrupted "
          f"{clean['consensus_distance']:.3e}, resumed {resumed['consensus_distance']:.3e}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
