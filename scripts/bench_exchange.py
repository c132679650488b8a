#!/usr/bin/env python3
"""Throughput of one parameter exchange: p2ptrain's transport and wire, with and without
CurveZMQ, against raw pyzmq, side by side.

Two processes swap a tensor (16 MiB of float32 by default) back and forth.
In the p2ptrain mode each message goes through wire.encode, Transport.send,
Transport.receive and wire.decode with the full validation a peer applies; the
curve mode is the same with CurveZMQ on both transports (a fresh key pair per
peer, written to a temporary keys directory and loaded as a peer loads it); in
the raw mode the same bytes go through a bare PUSH/PULL pair with copy=False.
Trials of the modes alternate, so a noisy machine slows all of them alike, and
the script prints the median throughput of each and their ratios.

    python scripts/bench_exchange.py [--mib 16] [--rounds N] [--trials 5] [--modes raw p2ptrain curve]

By default a trial has as many exchanges as move 320 MiB each way (20 at 16 MiB, 320 at 1 MiB,
5120 at 64 KiB): short trials flatter the small sizes, as raw pyzmq is faster over long ones.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import queue
import statistics
import tempfile
import time

import numpy as np
import torch
import zmq
import zmq.asyncio

from p2ptrain import keys, topology, wire
from p2ptrain.ports import free_port_block
from p2ptrain.transport import ZmqTransport

WARMUP_ROUNDS = 3
# A trial's exchanges by default move this much each way: enough for every mode to reach its pace.
TRIAL_MIB = 320


def free_ports(count: int) -> list[int]:
    base = free_port_block(count)
    return list(range(base, base + count))


def pair() -> topology.Topology:
    # Only its peer ids matter (they name the key files); the endpoints come from free_ports.
    return topology.generate("complete", 2)


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


def p2ptrain_side(me: str, other: str, elements: int, rounds: int, first: bool, results,
                  keys_dir: str | None = None) -> None:
    torch.set_num_threads(1)  # as a peer runs by default (--threads 1)

    async def run() -> None:
        context = zmq.asyncio.Context()
        my_id, other_id = ("p0", "p1") if first else ("p1", "p0")
        security = keys.load_security(pair(), my_id, keys_dir) if keys_dir else None
        transport = ZmqTransport(context, me, {other_id: other}, linger_seconds=1.0, security=security,
                                 alone_on_loop=True)  # as in a peer process
        tensors = {"w": torch.from_numpy(np.random.default_rng(0).random(elements, dtype=np.float32))}
        specs = wire.specs_of(tensors)
        contract = wire.Contract("bench", "fp", frozenset({other_id}), specs)
        checksum = 0.0

        async def one_round(round_: int) -> None:
            nonlocal checksum
            frames = wire.encode(kind="params", sender=my_id, run_id="bench", round=round_,
                                 fingerprint="fp", tensors=tensors,
                                 chunk=wire.SECURE_CHUNK_BYTES if security else None)
            if first:
                transport.send(other_id, frames)
                got = await transport.receive(60)
            else:
                got = await transport.receive(60)
                transport.send(other_id, frames)
            message = wire.decode(got.frames, contract)
            if round_ == 0:
                # A secure number is worth something only if the path was secure: the handshake
                # must have proved the sender's key (and the plain mode must prove nothing).
                proved = got.sender
                if proved != (other_id if security else None) or message.sender != other_id:
                    raise RuntimeError(f"secure={security is not None}: message from {message.sender!r} "
                                       f"arrived with authenticated sender {proved!r}")
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


def trial(side, elements: int, rounds: int, *extra) -> float:
    """Seconds for ``rounds`` exchanges, measured by the side that starts each one."""
    ports = free_ports(2)
    a, b = (f"tcp://127.0.0.1:{p}" for p in ports)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=side, args=(a, b, elements, rounds, True, results, *extra)),
             ctx.Process(target=side, args=(b, a, elements, rounds, False, results, *extra))]
    for p in procs:
        p.start()
    times: list[float] = []
    deadline = time.monotonic() + 300
    while len(times) < len(procs):
        try:
            times.append(results.get(timeout=1))
        except queue.Empty:
            # A side that failed (say, the authentication check) ends the trial now rather
            # than leaving the other side waiting out its receive deadline.
            if any(p.exitcode not in (None, 0) for p in procs) or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                break
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RuntimeError(f"benchmark process failed with exit code {p.exitcode}")
    return max(times)


# --modes name: (printed name, side, needs keys)
MODES = {"raw": ("raw pyzmq", raw_side, False),
         "p2ptrain": ("p2ptrain", p2ptrain_side, False),
         "curve": ("p2ptrain+curve", p2ptrain_side, True)}
# (label, numerator, denominator, note): printed when both modes ran
RATIOS = [("p2ptrain / raw pyzmq", "p2ptrain", "raw", "(target >= {plain_target})"),
          ("curve / raw pyzmq", "curve", "raw", ""),
          ("curve / plain p2ptrain", "curve", "p2ptrain", "(the cost of CurveZMQ; target >= 0.4 at 16 MiB)")]


def plain_target(mib: float) -> float:
    """The share of raw pyzmq's throughput p2ptrain aims for: 0.9 at 16 MiB, 0.8 at 1 MiB, 0.5 below."""
    return 0.9 if mib >= 16 else 0.8 if mib >= 1 else 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=float, default=16, help="tensor size in MiB (default: %(default)s)")
    parser.add_argument("--rounds", type=int,
                        help=f"exchanges per trial (default: as many as move {TRIAL_MIB} MiB each way, at least 20)")
    parser.add_argument("--trials", type=int, default=5, help="trials per mode, alternating (default: %(default)s)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                        help="modes to measure (default: all)")
    args = parser.parse_args()
    modes = [m for m in MODES if m in args.modes]
    if args.mib <= 0 or (args.rounds is not None and args.rounds < 1) or args.trials < 1:
        parser.error("--mib must be positive, and --rounds and --trials at least 1")
    if args.rounds is None:
        args.rounds = max(20, round(TRIAL_MIB / args.mib))
    elements = int(args.mib * 2**20) // 4
    moved = 2 * args.rounds * elements * 4  # both directions
    throughput: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as keys_dir:
        if "curve" in modes:
            keys.generate(pair(), keys_dir)  # fresh for this run, gone with it
        for t in range(args.trials):
            for m in modes:
                name, side, secure = MODES[m]
                seconds = trial(side, elements, args.rounds, *([keys_dir] if secure else []))
                throughput[m].append(moved / seconds / 2**20)
                print(f"trial {t + 1}/{args.trials} {name:<14} {throughput[m][-1]:9.1f} MiB/s", flush=True)
    median = {m: statistics.median(v) for m, v in throughput.items()}
    print(f"\n{args.mib:g} MiB float32 tensor, {args.rounds} exchanges per trial, median [range] of {args.trials} trials")
    for m in modes:
        print(f"{MODES[m][0]:<14} {median[m]:9.1f} MiB/s  [{min(throughput[m]):.1f} .. {max(throughput[m]):.1f}]")
    for label, top, bottom, note in RATIOS:
        if top in median and bottom in median:
            note = note.format(plain_target=plain_target(args.mib))
            print(f"ratio {label:<22} = {median[top] / median[bottom]:.3f}  {note}".rstrip())


if __name__ == "__main__":
    main()
