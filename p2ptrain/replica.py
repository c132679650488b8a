"""One peer's share of the work, built the same way wherever it runs: from a task, its model, shard,
optimizer and algorithm.

The peer process, the in-process runner and the lockstep simulation
(simulate.py) all build replicas here, so a real swarm and its simulation
start from identical state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

import torch

from .algorithms import ADMM, Algorithm, Choco, Gossip, GradientTracking, PushSum
from .choices import parse_compressor
from .attacks import Attack, AttackSpecError, attack_for, parse_attacks
from .builtin_tasks import task_from_options
from .config import DEFAULT_BATCH_SIZE, ConfigError, PeerConfig
from .task import TaskError, build_optimizer, evaluate, in_eval_mode, task_defaults
from .topology import Topology
from .training import Batches, LocalTrainer, as_dataset, resolve_device


@dataclass
class Replica:
    peer_id: str
    task: Any  # None under the Python API: the user's own loop trains
    model: torch.nn.Module
    trainer: LocalTrainer | None  # None under the Python API
    algorithm: Algorithm
    device: torch.device
    lr_at: Callable[[int, float], float]  # (round, a group's base rate) -> its rate this round
    local_steps: int
    # What every peer of the swarm must share for their messages to mix (wire.fingerprint).
    agreement: dict = field(default_factory=dict)
    attack: Attack | None = None  # this peer lies to its neighbours (an experiment's --attack)
    _held_buffers: list[str] | None = field(default=None, init=False, repr=False)  # follow_reassigned_buffers'

    @property
    def shard_size(self) -> int | None:
        return len(self.trainer.batches) if self.trainer is not None else None

    @property
    def batch_size(self) -> int | None:
        """Examples per local step as drawn: --batch-size, else the task's (its DataLoader's), else 32."""
        return self.trainer.batches.batch_size if self.trainer is not None else None

    def sent(self, round_: int) -> dict[str, torch.Tensor]:
        """What this peer sends in ``round_``: its outgoing tensors, or the attack's corruption of them."""
        return self.as_sent(self.algorithm.outgoing(round_), round_)

    def as_sent(self, outgoing: dict[str, torch.Tensor], round_: int) -> dict[str, torch.Tensor]:
        """``outgoing``, this round's tensors, as this peer sends them: corrupted if it attacks."""
        return self.attack.corrupt(outgoing, round_) if self.attack else outgoing

    def follow_reassigned_buffers(self) -> None:
        """A module may give a buffer a new tensor rather than change it in place (``self.mean = 0.9 *
        self.mean + ...``); the algorithm would go on sending and mixing the old one. Point it at the
        module's current tensor, of the same shape and dtype (the messages' layout is fixed for the run)."""
        held = self.algorithm.parameters
        if self._held_buffers is None:  # the algorithm's tensors are fixed at its start: their names once
            self._held_buffers = [name for name, _ in self.model.named_buffers() if name in held]
        for name in self._held_buffers:
            kept, current = held[name], self.model.get_buffer(name)
            if kept is current:
                continue
            if current.shape != kept.shape or current.dtype != kept.dtype:
                raise ConfigError(f"the model's buffer {name!r} became {tuple(current.shape)} {current.dtype}, it was "
                                  f"{tuple(kept.shape)} {kept.dtype}: every peer's messages keep one layout, so a "
                                  "buffer keeps its shape and dtype (assign with .copy_() to be sure)")
            held[name] = current

    def train(self, round_: int) -> float | None:
        """This round's local work (optimizer steps, or ADMM's exact solve); its loss, or None if there was none."""
        self.trainer.set_lr(lambda base: self.lr_at(round_, base))
        self.algorithm.begin_local(round_)
        loss = None
        if self.algorithm.takes_steps and self.local_steps:
            if self.algorithm.restarts_optimizer:
                self.trainer.reset_optimizer_state()
            loss = self.trainer.steps(self.local_steps)
        self.follow_reassigned_buffers()
        return self.algorithm.end_local(round_, loss)

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.task, self.model) if self.task is not None else {}

    def sample(self) -> str | None:
        """Text the model generates, for tasks that can (a language model's ``sample``); None for others."""
        generate = getattr(self.task, "sample", None)
        return None if generate is None else in_eval_mode(self.model, lambda: generate(self.model))


def exchanged_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What gossip mixes: every floating-point parameter and buffer (BatchNorm's running statistics).
    Integer ones (num_batches_tracked, a counter kept as a parameter) count this peer's own steps and stay
    local: an average of them would be neither an integer nor this peer's count."""
    tensors: dict[str, torch.Tensor] = {name: p for name, p in model.named_parameters() if p.is_floating_point()}
    tensors.update((name, b) for name, b in model.named_buffers() if b.is_floating_point())
    return tensors


@lru_cache(maxsize=16)
def _task(task: str, dataset: str, model: str, hidden: int, partition: str, task_args: str):
    # One task object per process and configuration: an in-process swarm loads its data once.
    return task_from_options(task, dataset, model, hidden, partition, task_args)


def resolve_task(config: PeerConfig):
    try:
        return _task(config.task, config.dataset, config.model, config.hidden, config.partition, config.task_args)
    except (TaskError, ValueError) as error:
        raise ConfigError(str(error)) from None


def check_run(config: PeerConfig, topology: Topology, task=None) -> None:
    """Refuse option combinations that cannot work on this topology and task, before anything starts."""
    task = task if task is not None else resolve_task(config)
    if config.attack:
        try:
            parse_attacks([config.attack], config.seed, topology.ids)
        except AttackSpecError as error:
            raise ConfigError(f"--attack: {error}") from None
    check_weights(config.algo, topology)
    if config.algo == "gradient-tracking" and config.local_steps < 1:
        raise ConfigError("gradient tracking takes its gradient from the round's optimizer steps; use "
                          "--local-steps 1 (or more)")
    if config.algo == "choco":
        check_choco(config, topology)
    if config.algo != "admm":
        return
    if config.init != "same":
        raise ConfigError("ADMM starts from a common x (every peer's x_j(0) is its own x(0)); use --init same")
    if topology.directed or topology.period > 1:
        kind = "directed" if topology.directed else "time-varying"
        raise ConfigError(f"ADMM needs a static undirected graph, and {topology.name} is {kind}; "
                          "use gossip on it, or a static undirected topology")
    if config.admm_solver == "exact" and not hasattr(task, "local_problem"):
        raise ConfigError(f"--admm-solver exact needs a convex task with a closed-form local problem "
                          f"(synthetic-lstsq, breast-cancer), not {getattr(task, 'name', task)}; use --admm-solver inexact")
    if not uses_exact_solver(config, task) and config.local_steps < 1:
        raise ConfigError("the inexact ADMM solver takes --local-steps optimizer steps per round; use at least 1")
    admm_penalty(config, task)


def check_weights(algo: str, topology: Topology) -> None:
    """Refuse mixing weights the algorithm cannot use: gossip and gradient tracking keep the mean only
    with doubly stochastic W; push-sum needs column-stochastic W, one share per sender, a static graph."""
    if algo in ("gossip", "gradient-tracking") and not topology.doubly_stochastic:
        raise ConfigError(
            f"the mixing weights of {topology.name} are not doubly stochastic, so {algo} would not keep the mean "
            "of the peers' values and would settle on a biased point; use --algo push-sum, made for such graphs "
            '(with column-stochastic weights: mixing = "push" in the topology file), or doubly stochastic '
            'weights (mixing = "metropolis" on an undirected graph, "uniform" on a regular directed one)')
    if algo in ("gradient-tracking", "push-sum") and topology.period > 1:
        raise ConfigError(f"{algo} keeps one running sum per peer, right only while each peer's neighbours and "
                          f"weights stay the same, and {topology.name} changes every round; use a static topology, "
                          "or gossip on this one")
    if algo != "push-sum":
        return
    if not topology.column_stochastic:
        raise ConfigError(f"push-sum needs column-stochastic weights (what each peer sends out and keeps sums "
                          f"to 1), and those of {topology.name} are not; set mixing = \"push\" in the topology file")
    for peer_id in topology.ids:
        push_share(topology, peer_id)


def push_share(topology: Topology, peer_id: str) -> float:
    """The one share of its x and p that ``peer_id`` sends to each of its out-neighbours under push-sum."""
    sending = topology.sending_weights(peer_id)
    shares = {sending[j] for j in topology.out_neighbours(peer_id)}
    if len(shares) != 1:
        raise ConfigError(f"push-sum: {peer_id} gives its out-neighbours different weights "
                          f"({', '.join(f'{j}: {sending[j]:g}' for j in topology.out_neighbours(peer_id))}); a peer "
                          'sends one message to all of them, so set mixing = "push" (an even split)')
    return shares.pop()


def check_choco(config: PeerConfig, topology: Topology) -> None:
    """CHOCO keeps the swarm's mean only with one doubly stochastic W, and its messages are not parameters."""
    if topology.period > 1:
        raise ConfigError(f"CHOCO needs a static graph, and {topology.name} is time-varying: a public copy of a "
                          "neighbour must see its every difference; use gossip on it, or a static topology")
    if not topology.doubly_stochastic:
        raise ConfigError(f"CHOCO keeps the peers' mean only with doubly stochastic weights, and {topology.name}'s "
                          "are not; use a topology with Metropolis or symmetric weights")
    if config.attack:
        raise ConfigError("--attack corrupts parameters, and CHOCO messages carry compressed differences; "
                          "use it with gossip or ADMM")


def uses_exact_solver(config: PeerConfig, task) -> bool:
    """ADMM with the closed-form local solve; other algorithms ignore --admm-solver, as any ADMM option."""
    return config.algo == "admm" and (config.admm_solver == "exact" or
                                      (config.admm_solver == "auto" and hasattr(task, "local_problem")))


def admm_penalty(config: PeerConfig, task) -> float:
    """ADMM's c: --admm-penalty if given, else the task's default."""
    penalty = config.admm_penalty or getattr(task, "admm_penalty", 0.0)
    if not penalty:
        raise ConfigError("ADMM needs its penalty c and this task sets none: pass --admm-penalty C (admm_penalty=C "
                          "in the Python API; docs/admm.md shows how to choose it), or give the task an "
                          "admm_penalty attribute")
    return float(penalty)


def agreement(config: PeerConfig, task) -> dict:
    """The settings every peer's algorithm must share (hashed into the fingerprint with the tensors'
    layout), and what the task says its peers must share beyond the tensors' shapes (``Task.agreement``:
    a language model's vocabulary); learning rates, local steps and the like may differ between peers."""
    shared = getattr(task, "agreement", None)
    of_task = shared() if callable(shared) else {}
    if not isinstance(of_task, dict) or not all(
            isinstance(k, str) and type(v) in (str, int, float, bool) for k, v in of_task.items()):
        raise ConfigError(f"the task's agreement() gave {of_task!r}: it must be a dict of names to strings, integers, "
                          "floats or booleans (what every peer of the swarm must share)")
    return of_task | _algorithm_agreement(config, task)


def _algorithm_agreement(config: PeerConfig, task) -> dict:
    if config.algo == "admm":
        return {"algorithm": "admm", "admm_penalty": admm_penalty(config, task)}
    if config.algo == "choco":
        # random-k's indices come from the seed: peers with different seeds would add values at different places.
        seeded = {"compressor_seed": config.seed} if parse_compressor(config.compressor)[0] == "random-k" else {}
        return {"algorithm": "choco", "compressor": config.compressor, "choco_gamma": config.choco_step(),
                "choco_refresh_every": config.choco_refresh_every} | seeded
    # How the model travels, where it is not the plain default (so the default's fingerprint stays put).
    layout = {"fragments": config.fragments} if config.fragments > 1 else {}
    return {"algorithm": config.algo} | layout | ({"wire_dtype": config.wire_dtype} if config.wire_dtype else {})


def build_algorithm(config: PeerConfig, topology: Topology, peer_id: str, model: torch.nn.Module,
                    penalty: float = 0.0, problem=None) -> Algorithm:
    """The algorithm of ``config.algo`` over ``model``'s tensors (ADMM: ``penalty`` c, and ``problem``
    for exact local solves)."""
    if config.algo == "gossip":
        try:
            return Gossip(peer_id, lambda round_: topology.mixing_row(peer_id, round_), exchanged_tensors(model),
                          aggregator=config.aggregator, robust_b=config.robust_b, fragments=config.fragments,
                          period=topology.period,
                          wire_dtype=getattr(torch, config.wire_dtype) if config.wire_dtype else None)
        except ValueError as error:  # a fragment count the model cannot be cut into
            raise ConfigError(f"--fragments {config.fragments}: {error}") from None
    if config.algo == "gradient-tracking":
        # The parameters only: floating buffers (BatchNorm's statistics) have no gradient to track.
        return GradientTracking(peer_id, topology.mixing_row(peer_id), dict(model.named_parameters()))
    if config.algo == "push-sum":
        return PushSum(topology.in_neighbours(peer_id), len(topology.out_neighbours(peer_id)),
                       push_share(topology, peer_id), exchanged_tensors(model))
    if config.algo == "choco":
        return Choco(peer_id, topology.mixing_row(peer_id), exchanged_tensors(model), compressor=config.compressor,
                     gamma=config.choco_step(), refresh_every=config.choco_refresh_every, seed=config.seed)
    return ADMM(topology.in_neighbours(peer_id), dict(model.named_parameters()), penalty, problem)


def task_batch_size(config: PeerConfig, topology: Topology, task) -> int:
    """The examples per local step of ``topology``'s peers: --batch-size, else the one of the first peer's
    DataLoader, else DEFAULT_BATCH_SIZE (a peer's own Batches decide so too)."""
    if config.batch_size:
        return config.batch_size
    _, _, loader_batch_size = shard_of(task, 0, topology.size, config.seed)
    return loader_batch_size or DEFAULT_BATCH_SIZE


def shard_of(task, index: int, count: int, seed: int) -> tuple:
    """(dataset, collate_fn, batch size) of peer ``index``'s shard; a shard a peer cannot draw batches from
    is a ConfigError that says why."""
    try:
        return as_dataset(task.shard(index, count, seed))
    except (TaskError, TypeError) as error:
        raise ConfigError(str(error)) from None


def build_replica(config: PeerConfig, topology: Topology, peer_id: str, task=None) -> Replica:
    task = task if task is not None else resolve_task(config)
    check_run(config, topology, task)
    index = topology.index(peer_id)
    try:
        device = resolve_device(config.device)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    # per-peer: a seed of the peer's own, apart from the batch seeds below.
    torch.manual_seed(config.seed if config.init == "same" else config.seed * 1_000_003 + index + 1)
    model = task.build_model().to(device)
    dataset, collate, loader_batch_size = shard_of(task, index, topology.size, config.seed)
    # Each peer draws its own batches; a fixed odd multiplier keeps seeds apart.
    batches = Batches(dataset, config.batch_size or loader_batch_size or DEFAULT_BATCH_SIZE,
                      config.seed * 100_003 + index, collate)
    optimizer = build_optimizer(task, model.parameters(), config.lr, config.momentum, config.weight_decay)
    problem = task.local_problem(dataset, topology.size) if uses_exact_solver(config, task) else None
    algorithm = build_algorithm(config, topology, peer_id, model, admm_penalty(config, task) if config.algo == "admm"
                                else 0.0, problem)
    trainer = LocalTrainer(model, task, batches, optimizer, device, algorithm.before_step)
    attack = attack_for(parse_attacks([config.attack] if config.attack else [], config.seed, topology.ids), peer_id)
    return Replica(peer_id, task, model, trainer, algorithm, device, config.lr_at, config.local_steps,
                   agreement(config, task), attack)


def resolve_config(explicit: dict, base: PeerConfig | None = None) -> PeerConfig:
    """A run's configuration. From a --config file (``base``, complete, as the launcher writes it) with
    the command line's ``explicit`` options over it; or from the defaults, then the task's own defaults
    (``Task.defaults``) for the options the command line does not set, then the command line."""
    if base is not None:
        return base.replace(**explicit).validate()
    config = PeerConfig.from_dict(explicit).validate()
    defaults = {name: value for name, value in task_defaults(resolve_task(config)).items() if name not in explicit}
    try:
        return config.replace(**defaults).validate()
    except ConfigError as error:
        raise ConfigError(f"the defaults of the task {config.task}: {error}") from None
