#!/usr/bin/env python3
"""Throughput of one parameter exchange: p2ptrain's transport and wire against raw pyzmq, side by side.

Two processes swap a tensor (16 MiB of float32 by default) back and forth.
In the p2ptrain mode each message goes through wire.encode, Transport.send,
Transport.receive and wire.decode with the full validation a peer applies; in
the raw mode the same bytes go through a bare PUSH/PULL pair with copy=False.
Trials of the two modes alternate, so a noisy machine slows both alike, and
the script prints the median throughput of each and their ratio.

    python scripts/bench_exchange.py [--mib 16] [--rounds 20] [--trials 5]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import socket
import statistics
import time

import numpy as np
import torch
import zmq
import zmq.asyncio

from p2ptrain import wire
from p2ptrain.transport import Transport

WARMUP_ROUNDS = 3


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def raw_side(me: str, other: str, elements: int, rounds: int, first: bool, results) -> None:
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.bind(me)
    push = context.socket(zmq.PUSH)
    push.connect(other)
    payload = np.random.default_rng(0).random(elements, dtype=np.float32)
    checksum = 0.0

    def one_round() -> None:
        nonlocal checksum
        if first:
            push.send(memoryview(payload), copy=False)
            frame = pull.recv(copy=False)
        else:
            frame = pull.recv(copy=False)
            push.send(memoryview(payload), copy=False)
        received = np.frombuffer(frame.buffer, dtype=np.float32)
        checksum += float(received[0])  # touch the data, as a consumer would

    for _ in range(WARMUP_ROUNDS):
        one_round()
    started = time.perf_counter()
    for _ in range(rounds):
        one_round()
    results.put(time.perf_counter() - started)
    pull.close(linger=0)
    push.close(linger=1000)
    context.term()


def p2ptrain_side(me: str, other: str, elements: int, rounds: int, first: bool, results) -> None:
    async def run() -> None:
        context = zmq.asyncio.Context()
        my_id, other_id = ("a", "b") if first else ("b", "a")
        transport = Transport(context, me, {other_id: other}, linger_seconds=1.0)
        tensors = {"w": torch.from_numpy(np.random.default_rng(0).random(elements, dtype=np.float32))}
        specs = wire.specs_of(tensors)
        contract = wire.Contract("bench", "fp", frozenset({other_id}), specs)
        checksum = 0.0

        async def one_round(round_: int) -> None:
            nonlocal checksum
            frames = wire.encode(kind="params", sender=my_id, run_id="bench", round=round_,
                                 fingerprint="fp", tensors=tensors)
            if first:
                transport.send(other_id, frames)
                got = await transport.receive(60)
            else:
                got = await transport.receive(60)
                transport.send(other_id, frames)
            message = wire.decode(got, contract)
            checksum += float(message.tensors["w"][0])

        for r in range(WARMUP_ROUNDS):
            await one_round(r)
        started = time.perf_counter()
        for r in range(rounds):
            await one_round(WARMUP_ROUNDS + r)
        results.put(time.perf_counter() - started)
        transport.close()
        context.term()

    asyncio.run(run())


def trial(side, elements: int, rounds: int) -> float:
    """Seconds for ``rounds`` exchanges, measured by the side that starts each one."""
    ports = free_ports(2)
    a, b = (f"tcp://127.0.0.1:{p}" for p in ports)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=side, args=(a, b, elements, rounds, True, results)),
             ctx.Process(target=side, args=(b, a, elements, rounds, False, results))]
    for p in procs:
        p.start()
    times = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RuntimeError(f"benchmark process failed with exit code {p.exitcode}")
    return max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=float, default=16, help="tensor size in MiB (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=20, help="exchanges per trial (default: %(default)s)")
    parser.add_argument("--trials", type=int, default=5, help="trials per mode, alternating (default: %(default)s)")
    args = parser.parse_args()
    elements = int(args.mib * 2**20) // 4
    moved = 2 * args.rounds * elements * 4  # both directions
    throughput = {"raw pyzmq": [], "p2ptrain": []}
    for t in range(args.trials):
        for name, side in (("raw pyzmq", raw_side), ("p2ptrain", p2ptrain_side)):
            seconds = trial(side, elements, args.rounds)
            throughput[name].append(moved / seconds / 2**20)
            print(f"trial {t + 1}/{args.trials} {name:<10} {throughput[name][-1]:9.1f} MiB/s", flush=True)
    raw = statistics.median(throughput["raw pyzmq"])
    ours = statistics.median(throughput["p2ptrain"])
    print(f"\n{args.mib:g} MiB float32 tensor, {args.rounds} exchanges per trial, median of {args.trials} trials")
    print(f"raw pyzmq  {raw:9.1f} MiB/s")
    print(f"p2ptrain   {ours:9.1f} MiB/s")
    print(f"ratio p2ptrain / raw pyzmq = {ours / raw:.3f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
