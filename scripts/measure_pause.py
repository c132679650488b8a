#!/usr/bin/env python3
"""What a paused peer costs its neighbours, in synchronous and asynchronous mode, side by side.

Runs the same swarm twice through the launcher, once per --mode, with one
peer SIGSTOPped for a few seconds (--pause). For each in-neighbour of the
paused peer it counts the rounds completed during the pause and during an
equally long window just before it, from the peers' metrics (wall-clock
"unix_time" of each round), and prints the ratio of the two rates. Both runs
happen here, one after the other, so a noisy machine affects them alike.

What the pause cost in all, from its start to the end of the run (after it
too, while the paused peer catches up): the rounds that waited more than half
a deadline and the seconds they waited, and the rounds that waited for the
paused peer until their deadline (`timed_out` in the metrics). --trials runs
each mode that many times, the modes interleaved, and prints the median and
range of the cost in deadlines.

    python scripts/measure_pause.py [--topology topologies/ring8.toml] [--peer p2]
        [--at 120] [--seconds 3] [--rounds 400] [--min-compute-seconds 0.02] [--recv-timeout 1]
        [--modes sync,async] [--trials 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from p2ptrain.storage import read_json_lines
from p2ptrain.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent


def run_swarm(mode: str, args: argparse.Namespace, out: Path) -> dict:
    command = [sys.executable, str(ROOT / "scripts" / "launch_swarm.py"), args.topology, "--out", str(out),
               "--mode", mode, "--rounds", str(args.rounds), "--seed", str(args.seed),
               "--min-compute-seconds", str(args.min_compute_seconds), "--recv-timeout", str(args.recv_timeout),
               "--pause", f"{args.peer}@{args.at}:{args.seconds}", "--timeout", "600"]
    print(f"running {mode}: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def pause_window(summary: dict) -> tuple[float, float]:
    times = {event["event"]: summary["started_unix_time"] + event["time"] for event in summary["faults"]}
    return times["pause"], times["continue"]


def neighbour_rates(out: Path, neighbour: str, start: float, end: float, deadline: float, paused: str) -> dict:
    records = read_json_lines(out / "peers" / neighbour / "metrics.jsonl")
    length = end - start
    before = [r for r in records if start - length <= r["unix_time"] < start]
    during = [r for r in records if start <= r["unix_time"] < end]
    # What the pause cost, wherever it fell: during the pause, or after it, while the paused peer caught
    # up. A round's line is written when it ends, so the round the pause began in is the first after start.
    # Waits of more than half a deadline are counted: shorter ones are a busy machine's noise (they occur
    # before the pause too); a deadline missed is a full one.
    long_waits = [r["wait_seconds"] for r in records if r["unix_time"] >= start and r["wait_seconds"] > deadline / 2]
    return {
        "before": len(before) / length,
        "during": len(during) / length,
        "ratio": len(during) / len(before) if before else float("nan"),
        "max_wait": max((r["wait_seconds"] for r in during), default=0.0),
        # Rounds that waited more than half a deadline, from the pause to the end, and their waits' sum.
        "long_waits": len(long_waits),
        "cost": sum(long_waits),
        # Rounds that waited for the paused peer until their deadline (metrics without the field: "-").
        "timed_out": (sum(1 for r in records if paused in r["timed_out"]) if "timed_out" in records[0] else "-"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", default=str(ROOT / "topologies" / "ring8.toml"))
    parser.add_argument("--peer", default="p2", help="the peer to pause")
    parser.add_argument("--at", type=int, default=120, help="round at which it is paused")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long it stays paused")
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-compute-seconds", type=float, default=0.02,
                        help="pad each round's compute, so rounds last long enough to count")
    parser.add_argument("--recv-timeout", type=float, default=1.0, help="the synchronous round deadline")
    parser.add_argument("--modes", default="sync,async", help="the modes to run, in this order")
    parser.add_argument("--trials", type=int, default=1, help="runs of each mode, interleaved")
    parser.add_argument("--out", default="", help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()
    neighbours = load_topology(args.topology).out_neighbours(args.peer)

    with tempfile.TemporaryDirectory() as scratch:
        base = Path(args.out or scratch)
        rows = []
        for trial in range(args.trials):
            for mode in args.modes.split(","):
                out = base / f"{mode}-{trial}"
                summary = run_swarm(mode, args, out)
                start, end = pause_window(summary)
                accuracies = [p["test_accuracy"] for p in summary["peers"].values()]
                for neighbour in neighbours:
                    rows.append((mode, neighbour, neighbour_rates(out, neighbour, start, end, args.recv_timeout, args.peer),
                                 min(accuracies), summary["consensus_distance"]))

    print(f"\n{args.peer} paused {args.seconds:g}s at round {args.at}; round deadline {args.recv_timeout:g}s")
    print("long waits: rounds from the pause to the end of the run that waited more than half a deadline; "
          "cost: the seconds they waited; timed out: rounds that waited for the paused peer until the deadline")
    print(f"{'mode':<6} {'neighbour':<9} {'rounds/s before':>15} {'during':>8} {'ratio':>6} "
          f"{'max wait (s)':>12} {'cost (s)':>8} {'long waits':>10} {'timed out':>9} {'min acc':>8} {'consensus':>10}")
    for mode, neighbour, rates, accuracy, consensus in rows:
        print(f"{mode:<6} {neighbour:<9} {rates['before']:>15.1f} {rates['during']:>8.1f} {rates['ratio']:>6.2f} "
              f"{rates['max_wait']:>12.3f} {rates['cost']:>8.3f} {rates['long_waits']:>10} {rates['timed_out']!s:>9} "
              f"{accuracy:>8.4f} "
              f"{consensus:>10.2e}")
    for mode in args.modes.split(","):
        costs = [rates["cost"] / args.recv_timeout for m, _, rates, _, _ in rows if m == mode]
        print(f"{mode}: cost in deadlines, every neighbour and trial: median {statistics.median(costs):.2f}, "
              f"range {min(costs):.2f}-{max(costs):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
