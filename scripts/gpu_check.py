#!/usr/bin/env python3
"""Check the GPU path end to end, with every peer of a swarm in one process on CUDA.

1. A ring of 8 peers training the digits MLP: every peer keeps its model on
   the GPU and stages its parameters through host memory for the wire
   (p2ptrain.staging). It passes when every peer reaches ACCURACY test
   accuracy and the replicas agree within CONSENSUS (relative consensus
   distance).
2. Exact ADMM on least squares (a ring of 4): the local problem is solved in
   host memory, where the shard is, and x lives on the GPU. It passes when
   every peer ends within ADMM_AGREEMENT (relative) of the same run in the
   lockstep simulation on the CPU.

The exit code is 1 if a check fails. On a machine without CUDA it says so and
exits 0, so it can sit in any test run; `--device cpu` runs the same checks
on the CPU, to try the script itself.

    python scripts/gpu_check.py [--rounds 200] [--out DIR] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys

import torch

ACCURACY = 0.9
CONSENSUS = 1e-2
PEERS = 8
ADMM_PEERS, ADMM_ROUNDS, ADMM_AGREEMENT = 4, 60, 1e-9


def run_swarm(peers: int, out, run_id: str, **options) -> tuple[object, object, list[str]]:
    """Every peer of a ring of ``peers`` in this process (inproc sockets); the topology, the configuration and
    the peers that failed."""
    import asyncio

    from p2ptrain.config import PeerConfig
    from p2ptrain.inprocess import local_endpoints, run_in_process
    from p2ptrain.topology import generate

    # One process, so the generated TCP ports are never used: every peer moves to inproc.
    topology = local_endpoints(generate("ring", peers), run_id)
    config = PeerConfig(topology="-", run_id=run_id, log_level="WARNING", **options).validate()
    codes = asyncio.run(run_in_process(topology, config, out))
    return topology, config, [peer_id for peer_id, code in codes.items() if code != 0]


def check_training(rounds: int, device: str, out) -> list[str]:
    import json

    from p2ptrain.results import consensus_distance, load_model

    print(f"ring of {PEERS} peers, digits MLP on {device}, {rounds} rounds; output in {out}")
    topology, _, failed = run_swarm(PEERS, out, "gpu-check", rounds=rounds, dataset="digits", model="mlp",
                                    device=device)
    if failed:
        return [f"peers {', '.join(failed)} exited with an error; see their logs under {out}"]
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
    return problems


def check_exact_admm(device: str, out) -> list[str]:
    from p2ptrain.results import load_model
    from p2ptrain.simulate import simulate

    print(f"ring of {ADMM_PEERS} peers, exact ADMM on synthetic-lstsq on {device}, {ADMM_ROUNDS} rounds; "
          f"output in {out}")
    topology, config, failed = run_swarm(ADMM_PEERS, out, "gpu-check-admm", rounds=ADMM_ROUNDS, algo="admm",
                                         dataset="synthetic-lstsq", device=device)
    if failed:
        return [f"exact ADMM: peers {', '.join(failed)} exited with an error; see their logs under {out}"]
    on_cpu = simulate(config.replace(device="cpu"), topology)
    problems = []
    for peer_id in topology.ids:
        x, expected = load_model(out / peer_id)["x"].cpu(), on_cpu[peer_id]["x"]
        difference = float((x - expected).norm() / expected.norm())
        print(f"{peer_id}  x relative to the CPU simulation's: {difference:.1e}")
        if difference > ADMM_AGREEMENT:
            problems.append(f"exact ADMM: {peer_id}'s x is {difference:.1e} from the CPU simulation's "
                            f"(> {ADMM_AGREEMENT:.0e})")
    return problems


def main(rounds: int, out_dir: str | None, device: str) -> int:
    import tempfile
    from pathlib import Path

    out = Path(out_dir or tempfile.mkdtemp(prefix="p2ptrain-gpu-check-"))
    if device == "cuda":
        print(f"device: {torch.cuda.get_device_name()}")
    problems = check_training(rounds, device, out / "training") + check_exact_admm(device, out / "exact-admm")
    for problem in problems:
        print(f"FAIL: {problem}")
    if not problems:
        print("OK")
    return 1 if problems else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--out", help="where the peers write (default: a new temporary directory)")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu to try the script itself")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: skipped: no CUDA device here; this script checks the GPU path on a machine that has one")
        sys.exit(0)
    sys.exit(main(args.rounds, args.out, args.device))
