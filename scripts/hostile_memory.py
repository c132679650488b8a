#!/usr/bin/env python3
"""Resident memory and deadlines of a training peer sent hostile multipart messages from a member's key.

Three real peer processes (complete3, CurveZMQ keys, the digits task, seed 3) train; once p0 is
past round 10, a PUSH socket holding p2's own key (so past the handshake, a member) sends p0 one
multipart message of --empty-frames empty frames, then, when p0 has counted it, one of
--large-frames frames of --large-mib MiB each (over p0's frame size limit, ZeroMQ closes the
connection at the first such frame and p0 never reads the message; --large-mib 1.1, just under
the limit of the digits model's peers, shows what ZeroMQ holds before p0 can read anything). For each message the script prints p0's resident
memory (VmRSS) before it and a few rounds after p0 rejected it, and its peak (VmHWM), in MiB; at
the end, whether any peer missed a neighbour in any round (a missed deadline) and whether every
final model equals the lockstep simulation's (the hostile messages changed nothing).

    python scripts/hostile_memory.py [--empty-frames 1000000] [--large-frames 400] [--large-mib 1.9]

What it measures and why it is what it is: docs/security.md, "Memory under hostile messages".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing it

import torch  # noqa: E402
import zmq  # noqa: E402

from p2ptrain import keys  # noqa: E402
from p2ptrain.config import PeerConfig  # noqa: E402
from p2ptrain.ports import free_port_block  # noqa: E402
from p2ptrain.simulate import simulate  # noqa: E402
from p2ptrain.topology import dump_topology, generate, load_topology  # noqa: E402

ROUNDS = 1200  # long enough for both messages to arrive while the peers train
SETTLE_ROUNDS = 3  # rounds p0 runs after a rejection before its memory is read
UNSEEN_ROUNDS = 40  # rounds after which a message never counted is taken as never read
DEADLINE = 180  # seconds any wait of this script may take


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def last_metrics(peer_dir: Path) -> dict:
    lines = (peer_dir / "metrics.jsonl").read_text().splitlines() if (peer_dir / "metrics.jsonl").exists() else []
    return json.loads(lines[-1]) if lines else {}


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up after {DEADLINE}s waiting for {what}")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--empty-frames", type=int, default=1_000_000)
    parser.add_argument("--large-frames", type=int, default=400)
    parser.add_argument("--large-mib", type=float, default=1.9)
    parser.add_argument("--recv-timeout", type=float, default=3.0, help="the peers' deadline (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hostile-memory-") as work:
        run(Path(work), args)


def run(work: Path, args) -> None:
    topology = generate("complete", 3, base_port=free_port_block(3))
    path = work / "complete3.toml"
    path.write_text(dump_topology(topology))
    keys.generate(topology, work / "keys")
    options = ["--topology", str(path), "--run-id", "hostile", "--rounds", str(ROUNDS), "--seed", "3",
               "--eval-every", "50", "--min-compute-seconds", "0.05", "--recv-timeout", str(args.recv_timeout),
               "--keys", str(work / "keys")]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    processes = {}
    for peer in topology.ids:
        with open(work / f"{peer}.log", "wb") as log:
            processes[peer] = subprocess.Popen([sys.executable, "-m", "p2ptrain.peer", *options, "--peer", peer,
                                                "--out", str(work / peer)], stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, cwd=ROOT, env=env)
    context = zmq.Context()
    try:
        target = processes["p0"].pid
        wait_until(lambda: last_metrics(work / "p0").get("round", -1) >= 10, "p0 to reach round 10")
        member = context.socket(zmq.PUSH)
        member.setsockopt(zmq.LINGER, 0)
        member.setsockopt(zmq.SNDTIMEO, 60_000)
        member.curve_publickey = keys.load_public_keys(work / "keys", ["p2"])["p2"].encode()
        member.curve_secretkey = keys.load_secret_key(work / "keys", "p2").encode()
        member.curve_serverkey = keys.load_public_keys(work / "keys", ["p0"])["p0"].encode()
        member.connect(topology.peer("p0").endpoint)
        large = b"\0" * int(args.large_mib * 2**20)
        attacks = [(f"{args.empty_frames:,} empty frames", [b""] * args.empty_frames),
                   (f"{args.large_frames} frames of {args.large_mib:g} MiB", [large] * args.large_frames)]
        print(f"p0 (pid {target}): resident memory in MiB, before a message and {SETTLE_ROUNDS} rounds after "
              "its rejection; peak since start")
        for what, frames in attacks:
            before = memory_mib(target)
            rejected = sum(last_metrics(work / "p0").get("rejected", {}).values())
            sent = time.monotonic()
            member.send_multipart(frames, copy=False)
            del frames
            queued = last_metrics(work / "p0")["round"]

            def rejected_or_run_on() -> bool:
                now = last_metrics(work / "p0")
                return sum(now.get("rejected", {}).values()) > rejected or now["round"] >= queued + UNSEEN_ROUNDS

            wait_until(rejected_or_run_on, f"p0 to reject the message of {what} or run on")
            handled = time.monotonic() - sent
            seen = sum(last_metrics(work / "p0").get("rejected", {}).values()) > rejected
            round_now = last_metrics(work / "p0")["round"]
            wait_until(lambda: last_metrics(work / "p0").get("round", -1) >= round_now + SETTLE_ROUNDS,
                       "p0 to run on")
            after = memory_mib(target)
            fate = (f"rejected {handled:.1f}s after it was sent" if seen else
                    f"never read: not counted within {UNSEEN_ROUNDS} rounds (ZeroMQ closed the connection "
                    "at a frame over the size limit)")
            print(f"{what:<28} before {before['VmRSS']:7.1f}  after {after['VmRSS']:7.1f}  "
                  f"growth {after['VmRSS'] - before['VmRSS']:+7.1f}  peak {after['VmHWM']:7.1f}  ({fate})")
        member.close()
        codes = {peer: process.wait(timeout=DEADLINE) for peer, process in processes.items()}
    finally:
        context.destroy(linger=0)
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    report(work, topology, options, codes)


def report(work: Path, topology, options: list[str], codes: dict[str, int]) -> None:
    print(f"exit codes: {codes}")
    result = json.loads((work / "p0" / "result.json").read_text())
    print(f"p0 rejected: {result['rejected']}")
    for peer in topology.ids:
        lines = [json.loads(line) for line in (work / peer / "metrics.jsonl").read_text().splitlines()]
        missed = [(line["round"], line["missing"]) for line in lines if line["missing"]]
        slowest = max(line["wait_seconds"] for line in lines[5:])
        print(f"{peer}: rounds with a neighbour missing: {missed or 'none'}; longest wait after round 5 "
              f"{slowest:.2f}s")
    config = PeerConfig(topology=options[1], rounds=ROUNDS, run_id="hostile", seed=3, eval_every=50,
                        min_compute_seconds=0.05).validate()
    same = {}
    for peer, state in simulate(config, load_topology(options[1])).items():
        got = torch.load(work / peer / "model.pt", weights_only=True)
        same[peer] = all(torch.equal(got[name], tensor) for name, tensor in state.items())
    print(f"final models equal to the lockstep simulation's: {same}")


if __name__ == "__main__":
    main()
