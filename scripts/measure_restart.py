#!/usr/bin/env python3
"""A peer killed and restarted from its checkpoint, against the same run without the fault.

Runs the swarm twice through the launcher with the same seed: once without
faults, once with --kill PEER@ROUND --restart PEER@+SECONDS. Prints each
surviving peer's final accuracy in both runs, the rounds the killed peer
lost (killed at, resumed from), and every peer's longest wait in any round
against the round deadline.

    python scripts/measure_restart.py [--topology topologies/ring8.toml] [--peer p3] [--at 20]
        [--after 5] [--rounds 100] [--checkpoint-every 10] [--recv-timeout 5] [--min-compute-seconds 0]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from p2ptrain.storage import read_json_lines

ROOT = Path(__file__).resolve().parent.parent


def run_swarm(args: argparse.Namespace, out: Path, faults: list[str]) -> dict:
    command = [sys.executable, str(ROOT / "scripts" / "launch_swarm.py"), args.topology, "--out", str(out),
               "--rounds", str(args.rounds), "--seed", str(args.seed), "--recv-timeout", str(args.recv_timeout),
               "--checkpoint-every", str(args.checkpoint_every),
               "--min-compute-seconds", str(args.min_compute_seconds), "--timeout", "900", *faults]
    print(f"running: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def longest_waits(out: Path, peers: list[str]) -> dict[str, float]:
    return {p: max(r["wait_seconds"] for r in read_json_lines(out / "peers" / p / "metrics.jsonl")) for p in peers}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default=str(ROOT / "topologies" / "ring8.toml"))
    parser.add_argument("--peer", default="p3")
    parser.add_argument("--at", type=int, default=20, help="round at which it is killed")
    parser.add_argument("--after", type=float, default=5.0, help="seconds until it is restarted")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--recv-timeout", type=float, default=5.0, help="the round deadline")
    parser.add_argument("--min-compute-seconds", type=float, default=0.0,
                        help="pad rounds, so that the others are still running when the peer comes back")
    parser.add_argument("--out", default="", help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        base = Path(args.out or scratch)
        clean = run_swarm(args, base / "fault-free", [])
        faulty = run_swarm(args, base / "faulty", ["--kill", f"{args.peer}@{args.at}",
                                                   "--restart", f"{args.peer}@+{args.after}"])
        peers = list(clean["peers"])
        waits = longest_waits(base / "faulty", peers)
        log = (base / "faulty" / "peers" / args.peer / "peer.log").read_text()
        resumed = re.search(r"resumed from the checkpoint of round (\d+)", log)
        caught_up = re.search(r"caught up: .*", log)
        records = read_json_lines(base / "faulty" / "peers" / args.peer / "metrics.jsonl")
        # Rounds after its restart in which it mixed with at least one neighbour, and the last one's.
        after = [r for r in records if resumed and r["round"] >= int(resumed[1])]
        mixed = [r for r in after if r["heard"]]

    killed = next(e["round"] for e in faulty["faults"] if e["event"] == "kill")
    print(f"\n{args.peer} killed at round {killed}, resumed from round {resumed[1] if resumed else '-'} "
          f"(checkpoint every {args.checkpoint_every}); round deadline {args.recv_timeout:g}s")
    print(f"{'peer':<6} {'fault-free acc':>14} {'with fault':>10} {'diff (pts)':>10} {'longest wait (s)':>16} {'exit':>5}")
    for p in peers:
        a, b = clean["peers"][p]["test_accuracy"], faulty["peers"][p]["test_accuracy"]
        print(f"{p:<6} {a:>14.4f} {b:>10.4f} {100 * (b - a):>10.2f} {waits[p]:>16.3f} "
              f"{faulty['peers'][p]['exit_code']!s:>5}")
    print(f"consensus distance: fault-free {clean['consensus_distance']:.2e}, "
          f"with fault {faulty['consensus_distance']:.2e} "
          f"({faulty['consensus_distance'] / clean['consensus_distance']:.2f}x)")
    print(f"{args.peer} after its restart: {caught_up[0] if caught_up else 'did not catch up by a state'}; ran "
          f"{len(after)} rounds, mixed with a neighbour in {len(mixed)}"
          + (f", the last in round {mixed[-1]['round']} (heard {','.join(mixed[-1]['heard'])})" if mixed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
