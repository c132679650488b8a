#!/usr/bin/env python3
"""One synchronous gossip round through real peer processes, against torch.distributed's gloo
all_reduce of the same tensors among as many processes, side by side.

Every peer is a process of its own running a ``p2ptrain.Peer`` (the Node every peer runs, over
ZeroMQ on TCP loopback) on a model of --mib MiB of float32 (one linear layer: a weight and a
bias); a round is ``Peer.exchange()``: pure averaging, no local steps. The gloo side starts as many
processes, each all-reducing the same tensors and dividing by the number of processes (the mean:
what one round of all-reduce training computes). A trial of a configuration runs --rounds rounds
after --warmup ones; its figure is the slowest process's time per round. Trials of all
configurations alternate (A, B, C, A, B, C, ...), so a noisy machine slows them alike; the script
prints each configuration's median and range and the ratios of the medians.

    python scripts/bench_round.py [--mib 16] [--graphs ring4 ring8 one-peer-exponential8]
                                  [--security plain curve] [--rounds 10] [--trials 5]

Gossip is compared with gloo at the same number of processes (ring4 with gloo among 4).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing it

import torch  # noqa: E402

from p2ptrain import keys, topology as topologies  # noqa: E402

from bench_exchange import free_ports  # noqa: E402  (this script's folder is on the path)

DEFAULT_GRAPHS = ["ring4", "ring8", "one-peer-exponential8"]
SECURITY = ("plain", "curve")
PROCESS_DEADLINE = 600  # seconds a trial may take before it is abandoned


def model_of(mib: float) -> torch.nn.Module:
    """A linear layer of about ``mib`` MiB of float32: 1024 inputs, as many outputs as fit."""
    outputs = max(1, round(mib * 2**20 / 4 / 1025))
    torch.manual_seed(0)
    return torch.nn.Linear(1024, outputs)


def placed(graph: str, ports: list[int]) -> topologies.Topology:
    topology = topologies.generate_named(graph)
    return topologies.relocate(topology, [f"tcp://127.0.0.1:{port}" for port in ports])


def gossip_process(graph: str, ports: list[int], rank: int, mib: float, rounds: int, warmup: int,
                   keys_dir: str | None, out: str, results) -> None:
    import p2ptrain

    torch.set_num_threads(1)
    topology = placed(graph, ports)
    model = model_of(mib)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(rank)  # peers start apart, so every round really mixes
    security = {"keys": keys_dir} if keys_dir else {"insecure": True}
    peer = p2ptrain.Peer(topology, model, peer=f"p{rank}", rounds=warmup + rounds, log_level="ERROR",
                         out=out, run_id="bench-round", recv_timeout=60, startup_timeout=120, **security)
    try:
        for _ in range(warmup):  # the first rounds also wait for every neighbour to start
            peer.exchange()
        started = time.perf_counter()
        for _ in range(rounds):
            peer.exchange()
        elapsed = time.perf_counter() - started
        heard = peer.node.last["heard"]
    finally:
        peer.close()
    if len(heard) != len(topology.in_neighbours(f"p{rank}", warmup + rounds - 1)):
        raise RuntimeError(f"p{rank} missed a neighbour in its last round (heard {heard}): not a full round")
    results.put(elapsed / rounds)


def gloo_process(size: int, port: int, rank: int, mib: float, rounds: int, warmup: int, results) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    tensors = [p.detach().clone() for p in model_of(mib).parameters()]

    def one_round() -> None:
        for tensor in tensors:
            dist.all_reduce(tensor)
            tensor.div_(size)

    try:
        for _ in range(warmup):
            one_round()
        dist.barrier()
        started = time.perf_counter()
        for _ in range(rounds):
            one_round()
        elapsed = time.perf_counter() - started
    finally:
        dist.destroy_process_group()
    results.put(elapsed / rounds)


def run_processes(targets: list[tuple]) -> float:
    """Start one process per (function, args); the slowest one's seconds per round."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=function, args=(*args, results)) for function, args in targets]
    for p in procs:
        p.start()
    times: list[float] = []
    deadline = time.monotonic() + PROCESS_DEADLINE
    while len(times) < len(procs):
        try:
            times.append(results.get(timeout=1))
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in procs) or time.monotonic() > deadline:
                break
    for p in procs:
        p.join(timeout=30)
        if p.exitcode is None:
            p.kill()
            p.join()
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    if failed or len(times) < len(procs):
        raise RuntimeError(f"a benchmark process failed (exit codes {[p.exitcode for p in procs]})")
    return max(times)


def gossip_trial(graph: str, security: str, mib: float, rounds: int, warmup: int, keys_dir: str) -> float:
    size = topologies.generate_named(graph).size
    ports = free_ports(size)
    with tempfile.TemporaryDirectory(prefix="bench-round-") as out:
        return run_processes([(gossip_process, (graph, ports, rank, mib, rounds, warmup,
                                                keys_dir if security == "curve" else None,
                                                os.path.join(out, f"p{rank}")))
                              for rank in range(size)])


def gloo_trial(size: int, mib: float, rounds: int, warmup: int) -> float:
    port = free_ports(1)[0]
    return run_processes([(gloo_process, (size, port, rank, mib, rounds, warmup)) for rank in range(size)])


def describe(times: list[float]) -> str:
    ms = [1000 * t for t in times]
    return f"{statistics.median(ms):9.1f} ms  [{min(ms):.1f} .. {max(ms):.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=float, default=16, help="model size in MiB of float32 (default: %(default)s)")
    parser.add_argument("--graphs", nargs="+", default=DEFAULT_GRAPHS,
                        help="topologies by name, KIND+PEERS (default: %(default)s)")
    parser.add_argument("--security", nargs="+", choices=SECURITY, default=["plain"],
                        help="plain (--insecure) and/or curve (CurveZMQ keys) (default: plain)")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per trial (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default: %(default)s)")
    parser.add_argument("--trials", type=int, default=5, help="trials per configuration (default: %(default)s)")
    args = parser.parse_args()
    sizes = {graph: topologies.generate_named(graph).size for graph in args.graphs}
    configurations = [("gossip", graph, security) for graph in args.graphs for security in args.security]
    configurations += [("gloo", size, None) for size in sorted(set(sizes.values()))]
    times: dict[tuple, list[float]] = {c: [] for c in configurations}
    model = model_of(args.mib)
    parameters = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory(prefix="bench-round-keys-") as keys_dir:
        for graph in args.graphs:
            if "curve" in args.security:
                keys.generate(topologies.generate_named(graph), os.path.join(keys_dir, graph))
        for trial in range(args.trials):
            for configuration in configurations:
                kind, what, security = configuration
                if kind == "gossip":
                    seconds = gossip_trial(what, security, args.mib, args.rounds, args.warmup,
                                           os.path.join(keys_dir, what))
                else:
                    seconds = gloo_trial(what, args.mib, args.rounds, args.warmup)
                times[configuration].append(seconds)
                print(f"trial {trial + 1}/{args.trials} {label(configuration):<34} {1000 * seconds:9.1f} ms",
                      flush=True)
    print(f"\none round, {parameters:,} float32 parameters ({parameters * 4 / 2**20:.2f} MiB), "
          f"{args.rounds} rounds per trial, median [range] of {args.trials} trials per configuration")
    for configuration in configurations:
        print(f"{label(configuration):<34} {describe(times[configuration])}")
    median = {c: statistics.median(t) for c, t in times.items()}
    print()
    for configuration in configurations:
        kind, graph, security = configuration
        if kind == "gossip":
            gloo = ("gloo", sizes[graph], None)
            print(f"ratio {label(configuration)} / {label(gloo)} = {median[configuration] / median[gloo]:.2f}")
    for graph in args.graphs:
        if set(SECURITY) <= set(args.security):
            curve, plain = ("gossip", graph, "curve"), ("gossip", graph, "plain")
            print(f"ratio {graph} curve / plain = {median[curve] / median[plain]:.2f}")


def label(configuration: tuple) -> str:
    kind, what, security = configuration
    if kind == "gloo":
        return f"gloo all_reduce, {what} processes"
    return f"{what} ({security})"


if __name__ == "__main__":
    main()
