"""A peer's whole configuration: one dataclass, one parser, logged with the run as config.json.

It imports no torch (choices.py holds the names options may use), so a command
line is checked, or refused, before the seconds that loading torch takes."""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .choices import (AGGREGATORS, ALGORITHMS, DATASETS, MODELS, AggregatorError, AttackSpecError, CompressorError,
                      DataError, check_aggregator, parse_compressor, parse_partition, read_attack)

LR_SCHEDULES = ("constant", "cosine")
INITS = ("same", "per-peer")
ADMM_SOLVERS = ("auto", "exact", "inexact")
MODES = ("sync", "async")
STAGING = ("auto", "always")
WIRE_DTYPES = ("", "bfloat16", "float16")  # "": the model's own precision
# The rounds of a run nobody fixed in advance (a Python API peer trains as long as its loop does):
# claims of rounds beyond this are still not believed.
UNBOUNDED_ROUNDS = 2**31 - 1
# Built-in tasks beyond the datasets' (builtin_tasks.py); --dataset names the others.
NAMED_TASKS = ("gpt-char",)


class ConfigError(ValueError):
    pass


# Examples per local step where neither --batch-size nor the task (a DataLoader, its defaults) says.
DEFAULT_BATCH_SIZE = 32


@dataclass
class PeerConfig:
    topology: str = ""
    peer: str = ""
    rounds: int = 200
    local_steps: int = 1
    lr: float = 0.1
    lr_schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 0  # 0: the task's (its DataLoader's batch size, else DEFAULT_BATCH_SIZE)
    algo: str = "gossip"
    mode: str = "sync"
    fragments: int = 1  # exchange one of K fragments of the model per round
    wire_dtype: str = ""  # bfloat16 or float16: the precision messages travel in; "": the model's
    aggregator: str = "mean"
    compressor: str = "int8"  # CHOCO: what a peer sends of x - x_hat (compressors.py)
    choco_gamma: float = 0.0  # CHOCO's consensus step; 0: 1 for identity and int8 (sparsifiers need one chosen)
    choco_refresh_every: int = 100  # CHOCO: a full copy every N rounds resynchronises the public copies
    robust_b: int = 1
    attack: str = ""  # PEER:KIND[:VALUE], an experiment's misbehaving peer
    max_staleness: int = 10
    catch_up: int = 10  # sync gossip: a peer this many rounds behind a neighbour takes its state; 0: never
    task: str = ""  # a built-in task's name, MODULE:ATTR or FILE.py:ATTR; empty: --dataset with --model
    task_args: str = ""  # KEY=VALUE,... for the task's constructor or factory
    dataset: str = "digits"
    partition: str = "iid"
    model: str = "auto"
    hidden: int = 64
    device: str = "auto"
    staging: str = "auto"  # always: stage tensors through host buffers even on the CPU (tests that path)
    admm_penalty: float = 0.0  # 0: the task's default
    admm_solver: str = "auto"
    reference: str = ""
    seed: int = 0
    init: str = "same"
    out: str = ""
    run_id: str = ""
    recv_timeout: float = 5.0
    startup_timeout: float = 60.0
    eval_every: int = 10
    log_every: int = 10
    trace_every: int = 0
    checkpoint_every: int = 0
    checkpoint_write_delay: float = 0.0
    min_compute_seconds: float = 0.0
    resume: bool = False
    resume_round: int = -1  # with resume: the checkpoint of this round (the newest or the one before); -1: newest
    join: bool = False
    keys: str = ""  # directory of CurveZMQ keys; empty: no security (NULL), which needs insecure
    insecure: bool = False  # run without keys on purpose: plain, unauthenticated connections
    absent: str = ""  # comma-separated peer ids not running at the start
    threads: int = 1
    overwrite: bool = False
    log_level: str = "INFO"

    def validate(self) -> "PeerConfig":
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(self.rounds >= 1, f"--rounds {self.rounds}: run at least one round")
        need(self.seed >= 0, f"--seed {self.seed}: a seed is 0 or more")
        need(self.local_steps >= 0, f"--local-steps {self.local_steps}: must be 0 (pure averaging) or more")
        need(self.lr > 0 and math.isfinite(self.lr), f"--lr {self.lr}: use a positive learning rate, e.g. 0.1")
        need(0 <= self.momentum < 1, f"--momentum {self.momentum}: use a value in [0, 1)")
        need(self.weight_decay >= 0, f"--weight-decay {self.weight_decay}: must be >= 0")
        need(self.batch_size >= 0, f"--batch-size {self.batch_size}: must be >= 1 (or 0: the task's own)")
        need(self.hidden >= 1, f"--hidden {self.hidden}: must be >= 1")
        need(self.recv_timeout > 0, f"--recv-timeout {self.recv_timeout}: must be > 0 seconds")
        need(self.startup_timeout > 0, f"--startup-timeout {self.startup_timeout}: must be > 0 seconds")
        need(self.eval_every >= 1, f"--eval-every {self.eval_every}: must be >= 1")
        need(self.log_every >= 1, f"--log-every {self.log_every}: must be >= 1")
        need(self.trace_every >= 0, f"--trace-every {self.trace_every}: must be 0 (off) or more")
        need(self.checkpoint_every >= 0, f"--checkpoint-every {self.checkpoint_every}: must be 0 (off) or more")
        need(self.checkpoint_write_delay >= 0, "--checkpoint-write-delay must be >= 0 seconds")
        need(self.min_compute_seconds >= 0, "--min-compute-seconds must be >= 0 seconds")
        need(self.mode in MODES, f"--mode {self.mode}: choose from {', '.join(MODES)}")
        need(self.max_staleness >= 0, f"--max-staleness {self.max_staleness}: must be 0 or more rounds")
        need(self.mode == "sync" or self.algo != "choco",
             "--mode async does not work with --algo choco: a peer's public copy of a neighbour is only right if "
             "it adds that neighbour's every difference; use --mode sync with choco")
        need(0 <= self.choco_gamma <= 1, f"--choco-gamma {self.choco_gamma}: use a step in (0, 1] (1 for int8 and "
             "the identity; smaller, e.g. 0.1, for top-k and random-k at 1%), or 0 for the compressor's default")
        need(self.choco_refresh_every >= 0, f"--choco-refresh-every {self.choco_refresh_every}: use 0 (never) or a "
             "number of rounds, e.g. 100")
        try:
            kind, _ = parse_compressor(self.compressor)
        except CompressorError as error:
            raise ConfigError(f"--compressor: {error}") from None
        need(self.algo != "choco" or self.choco_gamma or kind in ("identity", "int8"),
             f"--compressor {self.compressor} needs a CHOCO step chosen for its fraction and the graph: pass "
             "--choco-gamma, e.g. 0.1 for top-k:0.01 or 0.01 for random-k:0.01 on a ring of 16 (docs/algorithms.md "
             "has the measured table); too large a step trains nothing")
        need(self.catch_up >= 0, f"--catch-up {self.catch_up}: must be 0 (never) or more rounds")
        need(self.mode == "sync" or self.algo == "gossip",
             "--mode async works with --algo gossip only: ADMM's edge duals need both ends of an edge in the "
             "same round, and gradient tracking and push-sum have been checked in lockstep rounds only; use "
             "--mode sync with them")
        need(not self.join or self.algo == "gossip",
             "--join works with --algo gossip only: a new peer's running sums (ADMM, gradient tracking, push-sum) "
             "would not match its neighbours'; start such peers together, or restart one with --resume")
        need(not (self.insecure and self.keys), "--insecure and --keys contradict each other: --keys secures "
             "the connections, --insecure runs without; pick one")
        need(self.resume_round >= -1 and (self.resume or self.resume_round == -1),
             f"--resume-round {self.resume_round}: give a checkpoint's round (0 or more) together with --resume")
        need(not (self.join and self.resume), "--join and --resume exclude each other: --resume continues from "
             "this peer's own checkpoint, --join takes a neighbour's state; pick one")
        need(self.aggregator == "mean" or self.algo == "gossip",
             f"--aggregator {self.aggregator} works with --algo gossip only; drop it with --algo {self.algo}")
        try:
            check_aggregator(self.aggregator, self.robust_b)
            if self.attack:
                read_attack(self.attack)
        except (AggregatorError, AttackSpecError) as error:
            raise ConfigError(str(error)) from None
        need(self.threads >= 1, f"--threads {self.threads}: must be >= 1")
        need(self.algo in ALGORITHMS, f"--algo {self.algo}: choose from {', '.join(ALGORITHMS)}")
        need(self.dataset in DATASETS, f"--dataset {self.dataset}: choose from {', '.join(DATASETS)}")
        need(self.model in MODELS, f"--model {self.model}: choose from {', '.join(MODELS)}")
        need(not self.task or self.task in DATASETS + NAMED_TASKS or ":" in self.task,
             f"--task {self.task}: name a built-in task ({', '.join(DATASETS + NAMED_TASKS)}) or your own as "
             "package.module:attribute or path/to/file.py:attribute")
        parse_task_args(self.task_args)
        need(self.staging in STAGING, f"--staging {self.staging}: choose from {', '.join(STAGING)}")
        need(self.fragments >= 1, f"--fragments {self.fragments}: 1 (the whole model every round) or more")
        need(self.wire_dtype in WIRE_DTYPES, f"--wire-dtype {self.wire_dtype}: choose from bfloat16, float16, or "
             "leave it out for the model's own precision")
        need((self.fragments == 1 and not self.wire_dtype) or self.algo == "gossip",
             "--fragments and --wire-dtype work with --algo gossip: ADMM, gradient tracking and push-sum need "
             "the exact running sums of every neighbour every round; drop them, or use gossip")
        need(self.fragments == 1 or self.mode == "sync",
             "--fragments works with --mode sync: every peer must mix the same fragment in the same round; "
             "use --mode sync, or drop --fragments")
        need(self.admm_penalty >= 0 and math.isfinite(self.admm_penalty),
             f"--admm-penalty {self.admm_penalty}: use a positive penalty, or 0 for the task's default "
             "(docs/admm.md shows how to pick it)")
        need(self.admm_solver in ADMM_SOLVERS, f"--admm-solver {self.admm_solver}: choose from {', '.join(ADMM_SOLVERS)}")
        need(self.init in INITS, f"--init {self.init}: choose from {', '.join(INITS)}")
        need(self.lr_schedule in LR_SCHEDULES, f"--lr-schedule {self.lr_schedule}: choose from {', '.join(LR_SCHEDULES)}")
        try:
            parse_partition(self.partition)
        except DataError as error:
            raise ConfigError(f"--partition: {error}") from None
        return self

    def choco_step(self) -> float:
        """CHOCO's gamma: --choco-gamma, or 1 (the identity's and int8's) when it is left at 0."""
        return self.choco_gamma or 1.0

    def absent_peers(self, ids: tuple[str, ...] | None = None) -> frozenset[str]:
        """--absent as a set; given the topology's peer ``ids``, each must be one of them."""
        absent = frozenset(peer for peer in self.absent.split(",") if peer)
        if ids is not None and absent - set(ids):
            raise ConfigError(f"--absent {self.absent}: {', '.join(sorted(absent - set(ids)))} not in the topology "
                              f"(peers: {', '.join(ids)})")
        return absent

    def for_peer(self, topology_name: str, peer_id: str) -> "PeerConfig":
        """This configuration with the peer's id and the run id settled (by default TOPOLOGY-ALGO-sSEED)."""
        return self.replace(peer=peer_id, run_id=self.run_id or f"{topology_name}-{self.algo}-s{self.seed}")

    def run_directory(self, peer_id: str) -> Path:
        """Where the peer writes: --out, or by default runs/RUN_ID/PEER."""
        return Path(self.out) if self.out else Path("runs") / self.run_id / peer_id

    def lr_at(self, round_: int, base: float | None = None) -> float:
        """The learning rate of ``round_`` for a rate of ``base`` (--lr if None) at the start."""
        base = self.lr if base is None else base
        if self.lr_schedule == "constant":
            return base
        # Cosine decay to zero over the run: the last rounds take tiny steps, so
        # the peers' replicas settle onto each other instead of jittering apart.
        return 0.5 * base * (1 + math.cos(math.pi * round_ / self.rounds))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "PeerConfig":
        unknown = set(values) - OPTION_NAMES
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown_options(unknown)}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> "PeerConfig":
        """The configuration a --config file gives, the defaults for what it leaves out."""
        return cls.from_dict(read_config_file(path))

    def replace(self, **changes) -> "PeerConfig":
        """A copy with ``changes``; unknown names are refused with the list of the known ones."""
        return PeerConfig.from_dict(self.to_dict() | changes)


OPTION_NAMES = frozenset(f.name for f in fields(PeerConfig))


def unknown_options(names) -> str:
    """Unknown option names, each with the known one it is closest to, if any."""
    described = []
    for name in sorted(names):
        close = difflib.get_close_matches(name, OPTION_NAMES, n=1)
        described.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return ", ".join(described)


def read_config_file(path: str | Path) -> dict:
    """The options a --config file sets: TOML (a run.toml written by hand, ``local_steps = 5`` or
    ``local-steps = 5``) or JSON (the launcher's peer-config.json), each value of its option's type."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"--config {path}: cannot read it ({error.strerror or error})") from None
    if path.suffix == ".json":
        try:
            values = json.loads(text)
        except ValueError as error:
            raise ConfigError(f"--config {path}: not valid JSON ({error})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"--config {path}: not a JSON object of options")
    else:
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            hint = "; name a launcher's configuration peer-config.json" if text.lstrip().startswith("{") else ""
            raise ConfigError(f"--config {path}: not valid TOML ({error}){hint}") from None
    values = {name.replace("-", "_"): value for name, value in values.items()}
    unknown = set(values) - OPTION_NAMES
    if unknown:
        raise ConfigError(f"--config {path}: unknown option(s) {unknown_options(unknown)}; the options are "
                          "those of python -m p2ptrain.peer --help, without the leading --")
    defaults = PeerConfig()
    for name, value in values.items():
        values[name] = _typed(name, value, type(getattr(defaults, name)), path)
    return values


def _typed(name: str, value, kind: type, path: Path):
    """``value`` as an option of ``kind`` (an integer for a float option becomes a float), or a ConfigError."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    examples = {bool: "true or false", int: "a whole number", float: "a number", str: 'a string in quotes'}
    raise ConfigError(f"--config {path}: {name} = {value!r} must be {examples[kind]}")


def task_args_as_written(text: str) -> dict[str, str]:
    """--task-args "layers=4,text=corpus.txt" as KEY -> the value's text (task.load_task gives a parameter
    annotated ``str`` that text: a file named 007 stays 007)."""
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key.strip().isidentifier():
            raise ConfigError(f"--task-args {text!r}: {item!r} is not KEY=VALUE; write e.g. layers=4,width=128")
        values[key.strip()] = value
    return values


def parse_task_args(text: str) -> dict[str, bool | int | float | str]:
    """--task-args "layers=4,text=corpus.txt,bias=false": true and false (any case) as booleans, integers
    and floats as numbers, anything else as text."""
    return {key: _task_arg_value(value) for key, value in task_args_as_written(text).items()}


def _task_arg_value(value: str) -> bool | int | float | str:
    if value.lower() in ("true", "false"):  # the text "false" would be true
        return value.lower() == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def option_adder(parser: argparse.ArgumentParser, defaults: bool = True):
    """``parser.add_argument``, dropping each option's default when ``defaults`` is False: parsed by
    such a parser (made with argument_default=SUPPRESS) a command line yields only what it sets."""

    def add(*names, **kwargs):
        if not defaults:
            kwargs.pop("default", None)
        return parser.add_argument(*names, **kwargs)

    return add


def new_parser(defaults: bool = True, **kwargs) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(argument_default=None if defaults else argparse.SUPPRESS, **kwargs)


def add_training_options(parser: argparse.ArgumentParser, defaults: bool = True,
                         helps: dict[str, str] | None = None) -> None:
    """Options shared by a single peer, the swarm launcher and the experiment runner (``helps``
    replaces the help of the options it names, by their Python names)."""
    d = PeerConfig()
    plain = option_adder(parser, defaults)

    def add(*names, **kwargs):
        name = names[0].lstrip("-").replace("-", "_")
        if helps and name in helps:
            kwargs["help"] = helps[name]
        return plain(*names, **kwargs)
    add("--rounds", type=int, default=d.rounds, help="communication rounds to run (default: %(default)s)")
    add("--local-steps", type=int, default=d.local_steps,
        help="SGD steps on the local shard before each exchange; 0 = pure gossip averaging (default: %(default)s)")
    add("--lr", type=float, default=d.lr, help="peak learning rate (default: %(default)s)")
    add("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
        help="constant, or cosine decay to 0 over the rounds (default: %(default)s)")
    add("--momentum", type=float, default=d.momentum, help="SGD momentum (default: %(default)s)")
    add("--weight-decay", type=float, default=d.weight_decay, help="L2 weight decay (default: %(default)s)")
    add("--batch-size", type=int, default=d.batch_size,
        help="examples per local SGD step; over a task's DataLoader too (default: the task's own: its DataLoader's "
             f"batch size, else {DEFAULT_BATCH_SIZE})")
    add("--algo", choices=ALGORITHMS, default=d.algo, help="how peers combine parameters (default: %(default)s)")
    add("--mode", choices=MODES, default=d.mode,
        help="sync: each round waits for the neighbours' parameters of that round (up to --recv-timeout); "
             "async: never wait, mix with the newest parameters each neighbour has sent, at most "
             "--max-staleness rounds old, so a slow or paused peer does not slow the others (default: %(default)s)")
    add("--fragments", type=int, default=d.fragments, metavar="K",
        help="cut the model into K fragments of about equal size and exchange one per round, in turn: about "
             "K times fewer bytes per round, every value still mixed every K rounds (gossip, sync) (default: "
             "%(default)s)")
    add("--wire-dtype", default=d.wire_dtype, choices=[t for t in WIRE_DTYPES if t],
        help="send the parameters in bfloat16 or float16 (half the bytes of float32); they are mixed in the "
             "model's precision and the local copy is never rounded (default: the model's precision)")
    add("--compressor", default=d.compressor, metavar="identity|int8[:CHUNK]|top-k:F|random-k:F",
        help="choco: what a peer sends of the difference between its model and its public copy: identity (all "
             "of it), int8 (one byte per value, a scale per tensor, or per CHUNK values with int8:CHUNK), top-k:F "
             "(the fraction F of largest entries, with their indices) or random-k:F (F of the entries, drawn "
             "from a seed both ends know, without indices) (default: %(default)s)")
    add("--choco-gamma", type=float, default=d.choco_gamma,
        help="choco: the consensus step gamma in x <- x + gamma sum_j W_ij (x_hat_j - x_hat_i), in (0, 1]; top-k "
             "and random-k need one chosen (about 0.1 for top-k:0.01, 0.01 for random-k:0.01 on ring16) "
             "(default: 1 for identity and int8)")
    add("--choco-refresh-every", type=int, default=d.choco_refresh_every, metavar="N",
        help="choco: every N-th round (round 0 included) sends the whole model, which resynchronises the "
             "neighbours' public copies after a lost message; 0 = never (default: %(default)s)")
    add("--aggregator", choices=AGGREGATORS, default=d.aggregator,
        help="how gossip combines the neighbours' parameters: mean (the weighted average of W), clipped "
             "(ClippedGossip: each neighbour's difference clipped to an adaptive radius) or trimmed-mean "
             "(coordinate-wise, over itself and the neighbours); the robust ones tolerate --robust-b bad "
             "neighbours (default: %(default)s)")
    add("--robust-b", type=int, default=d.robust_b,
        help="bad neighbours the clipped and trimmed-mean aggregators tolerate (default: %(default)s)")
    add("--attack", default=d.attack, metavar="PEER:KIND[:VALUE]",
        help="experiment: make PEER send corrupted parameters: PEER:scale:F (times F), PEER:noise:SIGMA "
             "(plus Gaussian noise), PEER:random[:M] (random values); every peer gets the option, only PEER "
             "acts on it (default: none)")
    add("--max-staleness", type=int, default=d.max_staleness,
        help="async mode: a neighbour's parameters more than this many rounds old are left out of the mix, and "
             "a peer this far behind its neighbours jumps to their round (default: %(default)s)")
    add("--catch-up", type=int, default=d.catch_up, metavar="ROUNDS",
        help="sync mode, gossip: a peer more than ROUNDS rounds behind a neighbour (back from a restart or a "
             "pause) takes that neighbour's state, as --join does, instead of running the missed rounds alone; "
             "0: never (ADMM never does: it runs them alone) (default: %(default)s)")
    add("--absent", default=d.absent, metavar="PEER[,PEER...]",
        help="peers of the topology that are not running at the start (they join later with --join): the "
             "first round does not wait for them (default: none)")
    add("--task", default=d.task, metavar="NAME|MODULE:ATTR|FILE.py:ATTR",
        help="what to train: a built-in task (the --dataset names), or your own task object as "
             "package.module:attribute or path/to/file.py:attribute (docs/api.md); default: --dataset "
             "with --model")
    add("--task-args", default=d.task_args, metavar="KEY=VALUE,...",
        help="arguments of the task: gpt-char takes layers, heads, width, context, text (a UTF-8 file), "
             "validation (the held-out fraction), seed_text (the prompt of its sample); a "
             "plugin named by a class or function gets them as keyword arguments (default: none)")
    add("--dataset", choices=DATASETS, default=d.dataset,
        help="digits (scikit-learn, 8x8 images, 10 classes), synthetic (softmax of a known linear model), "
             "synthetic-lstsq (least squares, a different A_i, b_i per peer), breast-cancer (scikit-learn, "
             "L2 logistic regression) (default: %(default)s)")
    add("--partition", default=d.partition,
        help="how the training set is split: iid, or dirichlet:ALPHA for label skew, smaller ALPHA = more skew "
             "(default: %(default)s)")
    add("--model", choices=MODELS, default=d.model,
        help="logreg (linear classifier) or mlp (one hidden layer) for classification; linear (the vector x) "
             "for the convex datasets; auto picks mlp or linear (default: %(default)s)")
    add("--hidden", type=int, default=d.hidden, help="hidden units of the mlp (default: %(default)s)")
    add("--device", default=d.device,
        help="where the model trains: cpu, cuda, cuda:N, or auto = the GPU of $LOCAL_RANK when CUDA is "
             "present, else the CPU (default: %(default)s)")
    add("--staging", choices=STAGING, default=d.staging,
        help="auto: tensors off the CPU are copied through reusable host buffers for the wire; always: do "
             "that on the CPU too, to test that path (default: %(default)s)")
    add("--admm-penalty", type=float, default=d.admm_penalty,
        help="ADMM penalty c; 0 = the dataset's default (synthetic-lstsq 100, breast-cancer 1, digits and "
             "synthetic 0.1); docs/admm.md shows how to choose it (default: %(default)s)")
    add("--admm-solver", choices=ADMM_SOLVERS, default=d.admm_solver,
        help="ADMM local solve: exact (closed form or Newton, convex datasets only), inexact (--local-steps "
             "optimizer steps on the augmented loss, any model), auto = exact where possible (default: %(default)s)")
    add("--seed", type=int, default=d.seed,
        help="seed of the partition, the initial model (the same on every peer) and each peer's batches "
             "(default: %(default)s)")
    add("--init", choices=INITS, default=d.init,
        help="same: every peer starts from the same model (what decentralized SGD assumes); per-peer: each "
             "from its own, to watch pure averaging (--local-steps 0) reach consensus (default: %(default)s)")
    add("--recv-timeout", type=float, default=d.recv_timeout,
        help="seconds a round waits for its neighbours before mixing without the missing ones (default: %(default)s)")
    add("--startup-timeout", type=float, default=d.startup_timeout,
        help="deadline of the first rounds, as many as the graph's diameter (from round 0, or from a resumed "
             "checkpoint), while neighbours may still be starting; also how long --join waits for a neighbour's "
             "state (default: %(default)s)")
    add("--eval-every", type=int, default=d.eval_every,
        help="evaluate test accuracy every N rounds, and after the last (default: %(default)s)")
    add("--trace-every", type=int, default=d.trace_every,
        help="append the parameters, as float32, to OUT/trace.f32 every N rounds and after the last, so "
             "consensus with all peers can be measured afterwards; 0 = off (default: %(default)s)")
    add("--checkpoint-every", type=int, default=d.checkpoint_every,
        help="write OUT/checkpoint.pt (model, optimizer, algorithm state, RNG, round) every N rounds, "
             "atomically; 0 = off (default: %(default)s)")
    add("--checkpoint-write-delay", type=float, default=d.checkpoint_write_delay,
        help="fault injection: pause this many seconds between writing a checkpoint and putting it in place, "
             "to test crashes mid-write (default: %(default)s)")
    add("--min-compute-seconds", type=float, default=d.min_compute_seconds,
        help="pad each round's local computation to at least this many seconds, to emulate a larger model "
             "or a slower machine (fault and straggler experiments need rounds that last) (default: %(default)s)")
    add("--log-every", type=int, default=d.log_every, help="print a progress line every N rounds (default: %(default)s)")
    add("--threads", type=int, default=d.threads,
        help="PyTorch threads per peer; keep 1 when several peers share a machine (default: %(default)s)")
    add("--log-level", default=d.log_level, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity (default: %(default)s)")


def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    parser = new_parser(
        defaults,
        prog="python -m p2ptrain.peer",
        description="Run one peer of a p2ptrain swarm: train on this peer's shard, exchange parameters "
                    "with the neighbours named in the topology file, and mix.",
    )
    add = option_adder(parser, defaults)
    add("--config", default="", metavar="FILE",
        help="options from a file: TOML (run.toml: local_steps = 5, algo = \"admm\", ...: every option, by its "
             "name without the leading --) or JSON (the launcher writes RUN/peer-config.json); options given on "
             "the command line override it, and it overrides a task's defaults")
    add("--topology", default="", help="topology file (TOML), e.g. topologies/ring8.toml")
    add("--peer", default="",
        help="this peer's id in the topology; if omitted, the n-th peer of the file for n = the rank its "
             "launcher gives it: $RANK (torchrun), $OMPI_COMM_WORLD_RANK, $PMI_RANK (mpirun), $SLURM_PROCID "
             "(srun), $JOB_COMPLETION_INDEX (a Kubernetes Indexed Job)")
    add("--out", default="", help="output directory (default: runs/RUN_ID/PEER)")
    add("--run-id", default="",
        help="name shared by all peers of one run; messages of other runs are rejected "
                             "(default: TOPOLOGY-ALGO-sSEED)")
    add("--reference", default="",
        help="file with the centralized optimum x* (a tensor saved with PyTorch's save); adds rel_error to the "
                             "metrics (the launcher writes one for the convex datasets)")
    add("--overwrite", action="store_true",
        help="replace the outputs of an earlier run in --out instead of refusing")
    add("--resume", action="store_true",
        help="continue from OUT/checkpoint.pt (written with --checkpoint-every); without one, "
                             "start from round 0")
    add("--resume-round", type=int, default=-1, metavar="N",
        help="with --resume: continue from the checkpoint of round N, the newest or the one before it (a peer "
             "keeps both), so that every peer of a swarm restarts from the same round; the launcher's --resume "
             "picks it (default: the newest)")
    add("--keys", default="", metavar="DIR",
        help="CurveZMQ: encrypt and authenticate every connection with the keys in DIR (this "
                             "peer's ID.secret, every peer's ID.public unless the topology pins them); made by "
                             "python -m p2ptrain.keys generate. Without it traffic is plain and unauthenticated")
    add("--insecure", action="store_true",
        help="run without --keys on purpose: connections are neither encrypted nor authenticated, so "
                             "anyone who reaches the port can send this peer parameters")
    add("--join", action="store_true",
        help="join a running swarm: ask the neighbours for their state (a state request) and "
                             "continue from the round and parameters of the first that answers (gossip only)")
    add_training_options(parser, defaults)
    return parser


# Each launcher's rank variable and the variable holding its world size, the innermost launcher first:
# torchrun or mpirun inside a Slurm step set their own ranks, while SLURM_PROCID there numbers the nodes.
LAUNCHER_RANKS = (
    ("RANK", "WORLD_SIZE"),  # torchrun
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),  # Open MPI's mpirun
    ("PMI_RANK", "PMI_SIZE"),  # MPICH and Intel MPI (hydra), srun --mpi=pmi2
    ("SLURM_PROCID", "SLURM_NTASKS"),  # srun
    ("JOB_COMPLETION_INDEX", None),  # a Kubernetes Indexed Job (the completions are in the manifest only)
)
# Launchers that start a failed process again count the restarts here (torchrun --max-restarts, sbatch --requeue).
RESTART_COUNTS = ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT")
# What names one launch across its restarts, for each launcher that counts them (RESTART_COUNTS): torchrun's
# rendezvous id (a new one per torchrun --standalone), Slurm's job id (kept when the job is requeued).
LAUNCH_IDS = {"TORCHELASTIC_RESTART_COUNT": "TORCHELASTIC_RUN_ID", "SLURM_RESTART_COUNT": "SLURM_JOB_ID"}


def launch_identity(environ=os.environ) -> dict[str, str]:
    """The launchers' names for this launch (LAUNCH_IDS' values that are set); empty for a peer started by hand."""
    return {variable: environ[variable] for variable in LAUNCH_IDS.values() if environ.get(variable)}


def restarting_launches(environ=os.environ) -> dict[str, str]:
    """The names of the launches that count this process as a restart (restart count > 0): what a restart
    may resume is what the same launch wrote (a Slurm requeue keeps its job id, while a torchrun inside it
    gets a new rendezvous id: only Slurm's restart is compared then)."""
    return {name: environ.get(name, "") for count, name in LAUNCH_IDS.items()
            if (environ.get(count) or "0") not in ("", "0")}


def resolve_peer_id(requested: str, ids: tuple[str, ...], environ=os.environ) -> str:
    """--peer if given, else the n-th peer for n = the rank a launcher gave this process (LAUNCHER_RANKS),
    whose world size, if the launcher says it, must be the topology's peer count."""
    if requested:
        return requested
    for rank_variable, size_variable in LAUNCHER_RANKS:
        value = environ.get(rank_variable)
        if not value:  # unset, or set to nothing
            continue
        if not value.isdigit() or int(value) >= len(ids):
            raise ConfigError(
                f"${rank_variable}={value!r} does not name a peer: the topology has {len(ids)} peers "
                f"(ranks 0..{len(ids) - 1}); start as many processes as peers"
            )
        size = environ.get(size_variable) if size_variable else None
        if size and size != str(len(ids)):
            raise ConfigError(
                f"${size_variable}={size} processes, but the topology has {len(ids)} peers: start "
                f"{len(ids)} processes (one per peer), or use a topology of {size} peers (python -m "
                "p2ptrain.topology generate KIND --hosts ... --per-host K)"
            )
        return ids[int(value)]
    raise ConfigError("no peer id: pass --peer ID, or start the peer with a launcher that sets its rank ("
                      f"{', '.join(variable for variable, _ in LAUNCHER_RANKS)}): the n-th peer of the topology")


def after_launcher_restart(options: dict, environ=os.environ) -> tuple[dict, str]:
    """``options`` with resume on when a launcher counts this process as a restart (RESTART_COUNTS > 0), so
    that it continues from its checkpoint instead of refusing its own earlier outputs; left as they are
    for a peer that joins, or whose options already say whether to resume. The second value says why
    (empty when nothing changed), for the log."""
    for variable in RESTART_COUNTS:
        value = environ.get(variable) or "0"
        if not value.isdigit():
            raise ConfigError(f"${variable}={value!r} is not a restart count (a whole number)")
        if int(value) > 0 and not options.get("join") and "resume" not in options:
            # The whole group restarts: without a checkpoint every peer runs again from round 0, over its
            # own earlier outputs even if it had finished (--resume alone refuses that).
            return options | {"resume": True, "overwrite": True}, (
                f"restart {value} (${variable}): resuming from this peer's checkpoint (--resume); without "
                "one (no --checkpoint-every) it starts again from round 0")
    return options, ""


def given_options(make_parser, argv: list[str] | None) -> tuple[dict, dict]:
    # make_parser(defaults=False) must build the same parser with no defaults (new_parser, option_adder).
    """(every option, the options the command line really sets). The second, without the parser's
    defaults, overrides a --config file and a task's defaults, which plain defaults must not do."""
    everything = vars(make_parser().parse_args(argv))  # errors and --help, with the defaults shown
    return everything, vars(make_parser(defaults=False).parse_args(argv))
