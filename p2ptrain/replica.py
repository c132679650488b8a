"""One peer's share of the work, built the same way wherever it runs: its shard, its model, its optimizer, its algorithm.

The peer process and the lockstep simulation (simulate.py) both build
replicas here, so a real swarm and its simulation start from identical state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .algorithms import Algorithm, Gossip
from .config import PeerConfig
from .data import Shard, load_shard
from .models import Trainer, build_model
from .topology import Topology


@dataclass
class Replica:
    peer_id: str
    shard: Shard
    model: torch.nn.Module
    trainer: Trainer
    algorithm: Algorithm

    def train(self, config: PeerConfig, round_: int) -> float | None:
        """This round's local steps; the mean loss, or None for pure averaging (no steps)."""
        if not config.local_steps:
            return None
        self.trainer.set_lr(config.lr_at(round_))
        return self.trainer.local_steps(config.local_steps)


def build_replica(config: PeerConfig, topology: Topology, peer_id: str) -> Replica:
    index = topology.index(peer_id)
    shard = load_shard(config.dataset, config.partition, topology.size, index, config.seed)
    model = build_model(config.model, shard.n_features, shard.n_classes, hidden=config.hidden, seed=config.seed)
    trainer = Trainer(model, shard.x, shard.y, batch_size=config.batch_size, lr=config.lr,
                      momentum=config.momentum, weight_decay=config.weight_decay,
                      # Each peer draws its own batches; a fixed odd multiplier keeps seeds apart.
                      seed=config.seed * 100_003 + index)
    algorithm = Gossip(peer_id, topology.mixing_row(peer_id), dict(model.named_parameters()))
    return Replica(peer_id, shard, model, trainer, algorithm)
