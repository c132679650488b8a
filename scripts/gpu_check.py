#!/usr/bin/env python3
"""Check the GPU path end to end: a ring of 8 peers training the digits MLP on CUDA, in one process.

Every peer keeps its model on the GPU and stages its parameters through host
memory for the wire (p2ptrain.staging). The run passes when every peer
reaches ACCURACY test accuracy and the replicas agree within CONSENSUS
(relative consensus distance); the exit code is 1 otherwise. On a machine
without CUDA it says so and exits 0, so it can sit in any test run.

    python scripts/gpu_check.py [--rounds 200] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys

import torch

ACCURACY = 0.9
CONSENSUS = 1e-2
PEERS = 8


def main(rounds: int, out_dir: str | None) -> int:
    # Imported only here: a machine without CUDA skips before paying for them.
    import asyncio
    import json
    import tempfile
    from pathlib import Path

    from p2ptrain.config import PeerConfig
    from p2ptrain.inprocess import local_endpoints, run_in_process
    from p2ptrain.results import consensus_distance, load_model
    from p2ptrain.topology import generate

    out = Path(out_dir or tempfile.mkdtemp(prefix="p2ptrain-gpu-check-"))
    run_id = "gpu-check"
    # One process, so the generated TCP ports are never used: every peer moves to inproc.
    topology = local_endpoints(generate("ring", PEERS), run_id)
    config = PeerConfig(topology="-", rounds=rounds, dataset="digits", model="mlp", device="cuda",
                        run_id=run_id, log_level="WARNING").validate()
    print(f"ring of {PEERS} peers, digits MLP on {torch.cuda.get_device_name()}, {rounds} rounds; output in {out}")
    codes = asyncio.run(run_in_process(topology, config, out))
    failed = [peer_id for peer_id, code in codes.items() if code != 0]
    if failed:
        print(f"FAIL: peers {', '.join(failed)} exited with an error; see their logs under {out}")
        return 1

    accuracies = {peer_id: json.loads((out / peer_id / "result.json").read_text())["test_accuracy"]
                  for peer_id in topology.ids}
    for peer_id, accuracy in accuracies.items():
        print(f"{peer_id}  test accuracy {accuracy:.4f}")
    consensus = consensus_distance([load_model(out / peer_id) for peer_id in topology.ids])
    print(f"consensus distance {consensus:.2e}")

    problems = [f"{peer_id} test accuracy {accuracy:.4f} < {ACCURACY}"
                for peer_id, accuracy in accuracies.items() if accuracy < ACCURACY]
    if consensus > CONSENSUS:
        problems.append(f"consensus distance {consensus:.2e} > {CONSENSUS:.0e}")
    for problem in problems:
        print(f"FAIL: {problem}")
    if not problems:
        print("OK")
    return 1 if problems else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--out", help="where the peers write (default: a new temporary directory)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: skipped: no CUDA device here; this script checks the GPU path on a machine that has one")
        sys.exit(0)
    sys.exit(main(args.rounds, args.out))
