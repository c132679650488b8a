"""A training script of a user's own, for tests/test_api.py: the plugin task's model, data and optimizer
driven by a plain loop, with p2ptrain.Peer hooking the optimizer.

    python -m tests.api_peer TOPOLOGY OUT ROUNDS LOCAL_STEPS ALGO   (the peer id from $RANK)

It draws its batches with p2ptrain.training.Batches from the seed, as a command-line peer does, so a
swarm of these scripts must end exactly where the lockstep simulation of the task does.
"""

import sys

import torch

import p2ptrain
from p2ptrain.training import Batches, as_dataset
from tests.plugin_tasks import BatchNormAdam


def main(topology: str, out: str, rounds: int, local_steps: int, algo: str) -> None:
    task = BatchNormAdam()
    torch.manual_seed(0)  # the same initial model on every peer
    model = task.build_model()
    optimizer = task.optimizer(model.parameters(), lr=0.01, momentum=0.0, weight_decay=0.0)
    extra = {"admm_penalty": 0.5} if algo == "admm" else {}
    with p2ptrain.Peer(topology, model, optimizer, local_steps=local_steps, rounds=rounds, out=out, run_id="api",
                       algo=algo, recv_timeout=20, log_level="INFO", insecure=True, threads=1,  # as the simulation
                       **extra) as peer:
        dataset, collate, batch_size = as_dataset(task.shard(peer.index, peer.count, seed=0))
        batches = Batches(dataset, batch_size, seed=peer.index, collate=collate)  # seed 0 * 100_003 + index
        while not peer.done:
            optimizer.zero_grad()
            task.loss(model, batches.next()).backward()
            optimizer.step()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
