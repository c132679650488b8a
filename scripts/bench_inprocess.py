#!/usr/bin/env python3
"""Many peers in one process against the lockstep simulation of the same math, side by side.

Both run the same swarm (ring of --peers peers, logistic regression on digits, seed 0, --rounds
rounds, one local step per round): ``inprocess.run_in_process`` runs every peer as a task of one
event loop over inproc sockets, exactly the code of a peer process; ``simulate.simulate`` runs
the same replicas in lockstep without sockets (the test oracle). Each trial runs in a fresh
process, so its peak resident memory (ru_maxrss) is its own; trials of the two alternate. The time
per round leaves out the start (building the replicas, binding) and the first --warmup rounds:
it is the time from the end of round --warmup to the end of the last round, divided by the
rounds in between (for the in-process run, as the last peer to finish each round saw it).

The in-process run's last round also holds the end of the run: the peers that finish it first
write their final model and result (each file synced to disk) on the event loop the others still
need for that round. A second figure, "before the last round", stops at the end of the round
before it: the cost of a round in a run that goes on.

    python scripts/bench_inprocess.py [--peers 256] [--rounds 30] [--trials 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing it


def swarm(peers: int, rounds: int, out: str):
    from p2ptrain.config import PeerConfig
    from p2ptrain.inprocess import local_endpoints
    from p2ptrain.topology import generate

    topology = local_endpoints(generate("ring", peers), "bench-inprocess")
    config = PeerConfig(topology=topology.name, model="logreg", rounds=rounds, run_id="bench-inprocess", seed=0,
                        insecure=True, log_level="WARNING", recv_timeout=120, startup_timeout=120,
                        out=out).validate()
    return config, topology


def per_round(ends: list[float], warmup: int) -> dict[str, float]:
    """Seconds per round after the warm-up: to the end of the last round, and to the end of the one before."""
    return {"seconds": (ends[-1] - ends[warmup]) / (len(ends) - 1 - warmup),
            "before_last": (ends[-2] - ends[warmup]) / (len(ends) - 2 - warmup)}


def run_inprocess(peers: int, rounds: int, warmup: int) -> dict[str, float]:
    from p2ptrain.inprocess import run_in_process

    with tempfile.TemporaryDirectory(prefix="bench-inprocess-") as out:
        config, topology = swarm(peers, rounds, out)
        codes = asyncio.run(run_in_process(topology, config, Path(out)))
        if set(codes.values()) != {0}:
            raise RuntimeError(f"peers failed: {codes}")
        # Each round ends when the last peer has finished it.
        ends = [0.0] * rounds
        for peer_id in topology.ids:
            for line in (Path(out) / peer_id / "metrics.jsonl").read_text().splitlines():
                record = json.loads(line)
                ends[record["round"]] = max(ends[record["round"]], record["unix_time"])
    return per_round(ends, warmup)


def run_simulation(peers: int, rounds: int, warmup: int) -> dict[str, float]:
    from p2ptrain.simulate import simulate

    config, topology = swarm(peers, rounds, "")
    ends: list[float] = []
    simulate(config, topology, observe=lambda round_, replicas: ends.append(time.time()))
    return per_round(ends, warmup)


MODES = {"inprocess": run_inprocess, "simulation": run_simulation}
LABELS = {"inprocess": "in-process peers (inproc)", "simulation": "lockstep simulation"}


def one_trial(mode: str, peers: int, rounds: int, warmup: int) -> dict:
    """A trial in a fresh interpreter: seconds per round and peak resident MiB."""
    completed = subprocess.run([sys.executable, __file__, "--trial", mode, "--peers", str(peers),
                                "--rounds", str(rounds), "--warmup", str(warmup)],
                               capture_output=True, text=True, timeout=1800, cwd=ROOT)
    if completed.returncode != 0:
        raise RuntimeError(f"{mode} trial failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--trial", choices=MODES, help=argparse.SUPPRESS)  # one trial, in this process
    args = parser.parse_args()
    if args.rounds < args.warmup + 3:
        parser.error(f"--rounds {args.rounds}: need at least --warmup + 3 = {args.warmup + 3} to time two figures")
    if args.trial:
        figures = MODES[args.trial](args.peers, args.rounds, args.warmup)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(figures | {"peak_mib": peak}))
        return
    results: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for trial in range(args.trials):
        for mode in MODES:
            result = one_trial(mode, args.peers, args.rounds, args.warmup)
            results[mode].append(result)
            print(f"trial {trial + 1}/{args.trials} {LABELS[mode]:<26} {1000 * result['seconds']:8.1f} ms/round  "
                  f"({1000 * result['before_last']:.1f} before the last round)  "
                  f"peak {result['peak_mib']:6.0f} MiB", flush=True)
    print(f"\nring{args.peers}, logistic regression on digits, {args.rounds} rounds ({args.warmup} not timed), "
          f"median [range] of {args.trials} trials")
    median: dict[tuple[str, str], float] = {}
    for mode, trials in results.items():
        peaks = [t["peak_mib"] for t in trials]
        for figure, label in (("seconds", "to the end"), ("before_last", "before the last round")):
            ms = [1000 * t[figure] for t in trials]
            median[mode, figure] = statistics.median(ms)
            print(f"{LABELS[mode]:<26} {label:<22} {median[mode, figure]:8.1f} ms/round [{min(ms):.1f} .. {max(ms):.1f}]")
        print(f"{LABELS[mode]:<26} peak {statistics.median(peaks):6.0f} MiB [{min(peaks):.0f} .. {max(peaks):.0f}]")
    for figure, label in (("seconds", "to the end"), ("before_last", "before the last round")):
        print(f"ratio in-process / simulation, {label}: "
              f"{median['inprocess', figure] / median['simulation', figure]:.2f}")


if __name__ == "__main__":
    main()
