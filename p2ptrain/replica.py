"""One peer's share of the work, built the same way wherever it runs: its shard, its model, its optimizer, its algorithm.

The peer process and the lockstep simulation (simulate.py) both build
replicas here, so a real swarm and its simulation start from identical state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .algorithms import ADMM, Algorithm, Gossip, exact_solver, inexact_solver
from .attacks import Attack, AttackSpecError, attack_for, parse_attacks
from .config import ConfigError, PeerConfig
from .data import TASKS, Shard, check_partition, load_shard
from .models import Trainer, build_model, resolve_model_name
from .problems import has_reference, local_problem
from .topology import Topology


@dataclass
class Replica:
    peer_id: str
    shard: Shard
    model: torch.nn.Module
    trainer: Trainer
    algorithm: Algorithm
    lr_at: callable
    attack: Attack | None = None  # this peer lies to its neighbours (an experiment's --attack)

    def sent(self, round_: int) -> dict[str, torch.Tensor]:
        """What this peer sends in ``round_``: its outgoing tensors, or the attack's corruption of them."""
        outgoing = self.algorithm.outgoing(round_)
        return self.attack.corrupt(outgoing, round_) if self.attack else outgoing

    def train(self, round_: int) -> float | None:
        """This round's local work (SGD steps or an ADMM local solve); its loss, or None if there was none."""
        self.trainer.set_lr(self.lr_at(round_))
        return self.algorithm.local_step(round_)


def check_run(config: PeerConfig, topology: Topology) -> None:
    """Refuse option combinations that cannot work on this topology, before anything starts."""
    try:
        resolve_model_name(config.model, TASKS[config.dataset])
        check_partition(config.dataset, config.partition)
    except ValueError as error:  # DataError is one
        raise ConfigError(str(error)) from None
    if config.attack:
        try:
            parse_attacks([config.attack], config.seed, topology.ids)
        except AttackSpecError as error:
            raise ConfigError(f"--attack: {error}") from None
    if config.algo != "admm":
        return
    if config.init != "same":
        raise ConfigError("ADMM starts from a common x (every peer's x_j(0) is its own x(0)); use --init same")
    if topology.directed or topology.period > 1:
        kind = "directed" if topology.directed else "time-varying"
        raise ConfigError(f"ADMM needs a static undirected graph, and {topology.name} is {kind}; "
                          "use gossip on it, or a static undirected topology")
    if config.admm_solver == "exact" and not has_reference(config.dataset):
        raise ConfigError(f"--admm-solver exact needs a convex dataset (synthetic-lstsq, breast-cancer), "
                          f"not {config.dataset}; use --admm-solver inexact")
    if not uses_exact_solver(config) and config.local_steps < 1:
        raise ConfigError("the inexact ADMM solver takes --local-steps optimizer steps per round; use at least 1")


def uses_exact_solver(config: PeerConfig) -> bool:
    return config.admm_solver == "exact" or (config.admm_solver == "auto" and has_reference(config.dataset))


def build_replica(config: PeerConfig, topology: Topology, peer_id: str) -> Replica:
    check_run(config, topology)
    index = topology.index(peer_id)
    shard = load_shard(config.dataset, config.partition, topology.size, index, config.seed)
    # per-peer: a seed of the peer's own, apart from the batch seeds below.
    init_seed = config.seed if config.init == "same" else config.seed * 1_000_003 + index + 1
    model = build_model(config.model, shard.n_features, shard.n_classes, task=shard.task,
                        hidden=config.hidden, seed=init_seed)
    trainer = Trainer(model, shard.x, shard.y, task=shard.task, batch_size=config.batch_size, lr=config.lr,
                      momentum=config.momentum, weight_decay=config.weight_decay,
                      # Each peer draws its own batches; a fixed odd multiplier keeps seeds apart.
                      seed=config.seed * 100_003 + index)
    parameters = dict(model.named_parameters())

    def sgd_steps(round_: int) -> float | None:
        return trainer.local_steps(config.local_steps) if config.local_steps else None

    if config.algo == "gossip":
        algorithm: Algorithm = Gossip(peer_id, lambda round_: topology.mixing_row(peer_id, round_), parameters,
                                      sgd_steps, aggregator=config.aggregator, robust_b=config.robust_b)
    else:
        algorithm = ADMM(topology.in_neighbours(peer_id), parameters, config.penalty(),
                         _admm_solver(config, topology, shard, parameters, trainer))
    attack = attack_for(parse_attacks([config.attack] if config.attack else [], config.seed, topology.ids), peer_id)
    return Replica(peer_id, shard, model, trainer, algorithm, config.lr_at, attack)


def _admm_solver(config: PeerConfig, topology: Topology, shard: Shard, parameters, trainer: Trainer):
    if uses_exact_solver(config):
        return exact_solver(local_problem(shard.task, shard.x, shard.y, topology.size))

    def solve_steps(penalty) -> float:
        # Each x-update is a new subproblem (the penalty's centre and the dual moved):
        # momentum from the last one points the wrong way and makes the duals oscillate.
        trainer.reset_optimizer_state()
        return trainer.local_steps(config.local_steps, penalty)

    return inexact_solver(parameters, solve_steps)
