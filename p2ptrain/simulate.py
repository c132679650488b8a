"""Every peer of a swarm in one process, in lockstep, with no sockets: the oracle for real swarms.

A synchronous run in which every message arrives in time must end with
exactly these models. Tests compare a real multi-process swarm against it.
"""

from __future__ import annotations

import torch

from typing import Callable

from .config import PeerConfig
from .replica import build_replica
from .topology import Topology


def simulate(config: PeerConfig, topology: Topology,
             observe: Callable[[int, dict], bool | None] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Final state_dict of every peer after ``config.rounds`` rounds with no message lost.

    ``observe(round, replicas)`` is called after each round; returning True stops early.
    """
    torch.set_num_threads(config.threads)
    replicas = {peer_id: build_replica(config, topology, peer_id) for peer_id in topology.ids}
    for round_ in range(config.rounds):
        for replica in replicas.values():
            replica.train(round_)
        # Mixing gives each parameter new storage, so these stay the values sent this round.
        sent = {peer_id: r.sent(round_) for peer_id, r in replicas.items()}
        for peer_id, replica in replicas.items():
            replica.algorithm.update(round_, {j: sent[j] for j in topology.in_neighbours(peer_id, round_)})
        if observe is not None and observe(round_, replicas):
            break
    return {peer_id: r.model.state_dict() for peer_id, r in replicas.items()}
