"""Topology experiments: the same training on several graphs, algorithms, partitions and seeds, compared.

Each combination is one swarm run by the launcher (swarm.py), in one
process per peer or all in this process; its directory holds everything the
peers wrote. From those the runner builds results.csv (a row per run and
round), summary.md and plots. A run whose summary.json exists is done: an
interrupted sweep started again with the same --out skips it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ConfigError, PeerConfig, add_training_options, given_options, new_parser, option_adder
from .choices import ALGORITHMS
from .data import parse_partition
from .plots import save, sweep_figures
from .replica import check_run, resolve_config, resolve_task
from .resume import finished
from .progress import figure_label
from .task import headline_figure
from .results import consensus_of_rows, read_trace
from .rundir import RunDir, SweepDir
from .storage import read_json_lines
from .swarm import LaunchOptions, launch, portable_task, portable_task_args
from .topology import Topology, TopologyError, dump_topology, generate_named, load_topology

PEER_FIELDS = {f.name for f in dataclasses.fields(PeerConfig)}
CSV_COLUMNS = ["topology", "algo", "aggregator", "partition", "seed", "round", "wall_time", "mean_loss", "mean_accuracy",
               "metric", "mean_metric", "consensus_distance", "bytes_sent_per_peer"]
DEFAULT_METRIC = "test_accuracy"


def lower_is_better(metric: str) -> bool:
    """Losses and perplexities fall as training succeeds; accuracies and the like rise."""
    return "loss" in metric or "perplexity" in metric


@dataclass(frozen=True)
class Run:
    topology: str
    algo: str
    partition: str
    seed: int
    aggregator: str = "mean"

    @property
    def name(self) -> str:
        algo = self.algo if self.aggregator == "mean" else f"{self.algo}-{self.aggregator}"
        return f"{self.topology}-{algo}-{self.partition.replace(':', '')}-s{self.seed}"

    @property
    def label(self) -> str:
        algo = self.algo if self.aggregator == "mean" else f"{self.algo}/{self.aggregator}"
        return f"{self.topology} {algo} {self.partition} s{self.seed}"


def resolve_topology(name: str, base_port: int) -> Topology:
    """A topology file, or KIND+PEERS (ring16, one-peer-exponential16, erdos-renyi32) generated here."""
    if name.endswith(".toml"):
        return load_topology(name)
    return generate_named(name, base_port=base_port)


def unsupported(run: Run, topology: Topology, options: PeerConfig) -> str | None:
    """Why this combination cannot run (the peers' own check), or None."""
    try:
        config = dataclasses.replace(options, algo=run.algo, partition=run.partition, seed=run.seed,
                                     aggregator=run.aggregator)
        check_run(config, topology)
        config.validate()
    except ConfigError as error:
        return str(error).split(";")[0]
    return None


# What the launcher sets in the configuration it hands the peers (swarm.prepare), beside the sweep's options.
SET_BY_THE_LAUNCHER = frozenset({"topology", "run_id", "keys", "insecure", "reference", "absent"})


def finished_earlier(run_dir: RunDir, config: PeerConfig, topology: Topology) -> bool:
    """Whether ``run_dir`` holds this very run, made with the same options and finished by every peer: then
    it is not made again. An interrupted or failed run, or one made with other options, is."""
    if not (run_dir.summary.exists() and run_dir.peer_config.exists()):
        return False
    earlier = PeerConfig.from_file(run_dir.peer_config).to_dict()
    now = config.replace(task=portable_task(config.task), task_args=portable_task_args(config.task_args)).to_dict()
    if any(earlier.get(name) != value for name, value in now.items() if name not in SET_BY_THE_LAUNCHER):
        return False
    return all(finished(run_dir.peer(peer_id), config.rounds) for peer_id in topology.ids)


def run_rows(run: Run, run_dir: RunDir, attacker: str = "", metric: str = DEFAULT_METRIC) -> list[dict]:
    """results.csv rows of one finished run, from its peers' metrics and traces. An ``attacker``
    is left out: the figures are those of the honest peers. ``metric``: the task's figure compared
    across runs (mean over peers, in the rounds it was evaluated)."""
    peers = [p for p in run_dir.peer_dirs() if p.id != attacker]
    metrics = {p.id: read_json_lines(p.metrics) for p in peers}
    traces = [read_trace(p) for p in peers if p.trace.exists()]
    consensus = {}
    if traces:
        for r in sorted(set.intersection(*(set(traced) for traced, _ in traces))):
            consensus[r] = consensus_of_rows(np.stack([vectors[traced.index(r)] for traced, vectors in traces]))
    # By round number, not position: an asynchronous peer that jumped ahead has no line for the
    # rounds it skipped. Rows are the rounds every peer ran.
    by_round = [{record["round"]: record for record in m} for m in metrics.values()]
    rounds = sorted(set.intersection(*(set(b) for b in by_round))) if by_round else []
    sent = np.zeros(len(metrics))
    out = []
    for r in rounds:
        records = [b[r] for b in by_round]
        sent += [rec["bytes_sent"] for rec in records]
        losses = [rec["loss"] for rec in records if rec["loss"] is not None]
        accuracies = [rec["test_accuracy"] for rec in records if rec.get("test_accuracy") is not None]
        figures = [rec[metric] for rec in records if rec.get(metric) is not None]
        out.append({
            "topology": run.topology, "algo": run.algo, "aggregator": run.aggregator, "partition": run.partition,
            "seed": run.seed, "round": r,
            "wall_time": max(rec["time"] for rec in records),
            "mean_loss": float(np.mean(losses)) if losses else "",
            "mean_accuracy": float(np.mean(accuracies)) if accuracies else "",
            "metric": metric,
            "mean_metric": float(np.mean(figures)) if figures else "",
            "consensus_distance": consensus.get(r, ""),
            "bytes_sent_per_peer": float(sent.mean()),
        })
    return out


def first_reaching(rows: list[dict], target: float) -> dict | None:
    """The first row whose mean metric reached ``target`` (from above for losses, from below otherwise)."""
    for row in rows:
        value = row["mean_metric"]
        if value != "" and (value <= target if lower_is_better(row["metric"]) else value >= target):
            return row
    return None


def summary_markdown(results: dict[Run, list[dict] | str], rates: dict[str, float], target: float,
                     metric: str = DEFAULT_METRIC) -> str:
    name = figure_label(metric)
    goal = "no target" if math.isnan(target) else f"{target:g}"
    lines = [f"| topology | rho | algo | aggregator | partition | seed | final {name} (mean) | rounds to {goal} | "
             f"seconds to {goal} | final consensus distance | MiB sent per peer |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run, rows in results.items():
        head = (f"| {run.topology} | {rates[run.topology]:.3f} | {run.algo} | {run.aggregator} | {run.partition} "
                f"| {run.seed} |")
        if isinstance(rows, str):  # the reason the run could not be made
            lines.append(f"{head} {rows} | | | | |")
            continue
        figures = [r["mean_metric"] for r in rows if r["mean_metric"] != ""]
        consensus = [r["consensus_distance"] for r in rows if r["consensus_distance"] != ""]
        hit = first_reaching(rows, target)
        final = f"{figures[-1]:.4f}" if figures else "-"
        rounds = str(hit["round"] + 1) if hit else ("-" if math.isnan(target) else "not reached")
        seconds = f"{hit['wall_time']:.1f}" if hit else "-"
        distance = f"{consensus[-1]:.2e}" if consensus else "-"
        megabytes = rows[-1]["bytes_sent_per_peer"] / 2**20
        lines.append(f"{head} {final} | {rounds} | {seconds} | {distance} | {megabytes:.2f} |")
    return "\n".join(lines) + "\n"


# The runner's own defaults for the peers: traces and evaluations often enough to draw curves.
SWEEP_DEFAULTS = {"trace_every": 5, "eval_every": 5, "log_every": 50, "log_level": "WARNING"}
# Options the runner takes as lists (--algos, --seeds, a comma-separated --partition) and sets per run.
PER_RUN = ("algo", "seed", "partition", "aggregator")


def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    parser = new_parser(
        defaults,
        prog="p2ptrain-experiment",
        description="Run the same training on several topologies, algorithms, partitions and seeds; write "
                    "results.csv, summary.md and plots to --out. Interrupted sweeps resume where they stopped. "
                    "Also run as python -m p2ptrain.experiment or scripts/topology_experiment.py.")
    add = option_adder(parser, defaults)
    add("--topologies", default="ring16,torus16,exponential16,one-peer-exponential16,complete16",
        help="comma-separated topology files or KIND+PEERS names (default: %(default)s)")
    add("--algos", default="gossip", help=f"comma-separated: {', '.join(ALGORITHMS)} (default: %(default)s)")
    add("--seeds", default="0", help="comma-separated seeds (default: %(default)s)")
    add("--aggregators", default="mean",
        help="comma-separated gossip aggregators to compare: mean, clipped, trimmed-mean; with "
             "--attack, the figures are the honest peers' (default: %(default)s)")
    add("--launch", choices=["in-process", "processes"], default="in-process",
        help="all peers of a run as tasks of one process (inproc sockets), or one process "
             "per peer over TCP loopback (default: %(default)s)")
    add("--metric", default="",
        help="the task's figure the runs are compared by (test_accuracy, val_loss, ...); lower is better for "
             "losses and perplexities (default: the task's headline, else test_accuracy)")
    add("--target", "--target-accuracy", dest="target", type=float, default=None,
        help="summary.md reports rounds and seconds until the mean metric reaches this (default: 0.95 for "
             "accuracy; none otherwise)")
    add("--base-port", type=int, default=27000,
        help="first TCP port of generated topologies in processes mode (default: %(default)s)")
    add("--out", required=True, help="experiment directory")
    add_training_options(parser, defaults, helps={
        "partition": "comma-separated partitions, e.g. iid,dirichlet:0.1 (default: %(default)s)",
        # --algos and --seeds take lists
        "algo": argparse.SUPPRESS, "seed": argparse.SUPPRESS, "aggregator": argparse.SUPPRESS})
    if defaults:
        parser.set_defaults(**SWEEP_DEFAULTS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args, explicit = given_options(build_parser, argv)
    sweep = SweepDir(Path(args["out"]))
    try:
        partitions = args["partition"].split(",")
        for partition in partitions:
            parse_partition(partition)
        algos = args["algos"].split(",")
        aggregators = args["aggregators"].split(",")
        seeds = [int(s) for s in args["seeds"].split(",")]
        names = args["topologies"].split(",")
        topologies = {name: resolve_topology(name, args["base_port"]) for name in names}
        for algo, aggregator in itertools.product(algos, aggregators):
            PeerConfig(topology="-", algo=algo, aggregator=aggregator).validate()
        # The shared options of every run: the task's defaults where neither the command line nor the
        # runner sets one.
        options = resolve_config(SWEEP_DEFAULTS | {name: value for name, value in explicit.items()
                                                   if name in PEER_FIELDS and name not in PER_RUN})
        metric = args["metric"] or headline_figure(resolve_task(options))
        target = args["target"] if args["target"] is not None else (0.95 if metric == DEFAULT_METRIC else math.nan)
    except (ValueError, ConfigError, TopologyError) as error:
        print(f"topology_experiment: error: {error}", file=sys.stderr)
        return 2

    try:
        sweep.topologies.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        why = error.strerror or error
        print(f"topology_experiment: error: cannot make the experiment directory {sweep.path} ({why}); pass an "
              "--out you can write to", file=sys.stderr)
        return 2
    runs = [Run(t, a, p, s, g) for t, a, g, p, s in itertools.product(names, algos, aggregators, partitions, seeds)]
    try:
        return run_sweep(sweep, runs, topologies, options, args, metric, target)
    except KeyboardInterrupt:  # between the launches' own handling of Ctrl-C: reading or writing a summary
        print(INTERRUPTED, file=sys.stderr)
        return 130


INTERRUPTED = ("topology_experiment: interrupted; run it again with the same --out to go on (the runs that finished "
               "are kept)")


def run_sweep(sweep: SweepDir, runs: list[Run], topologies: dict, options: PeerConfig, args: dict, metric: str,
              target: float) -> int:
    """Launch each run not finished earlier, then write results.csv, summary.md and the plots."""
    results: dict[Run, list[dict] | str] = {}
    started = time.monotonic()
    for k, run in enumerate(runs, 1):
        topology = topologies[run.topology]
        run_dir = sweep.run(run.name)
        reason = unsupported(run, topology, options)
        if reason:
            print(f"[{k}/{len(runs)}] {run.name}: skipped, {reason}", flush=True)
            results[run] = f"n/a ({reason})"
            continue
        config = options.replace(algo=run.algo, partition=run.partition, seed=run.seed, aggregator=run.aggregator)
        if finished_earlier(run_dir, config, topology):
            print(f"[{k}/{len(runs)}] {run.name}: done earlier", flush=True)
        else:
            sweep.topology(run.topology).write_text(dump_topology(topology))
            elapsed = time.monotonic() - started
            again = " again: the earlier one is unfinished or had other options" if run_dir.holds_a_run() else ""
            print(f"[{k}/{len(runs)}] {run.name}{again} ({elapsed:.0f}s so far)", flush=True)
            code = launch(config, topology, LaunchOptions(
                out=str(run_dir.path), overwrite=True, in_process="inproc" if args["launch"] == "in-process" else ""))
            if code >= 128:
                print(INTERRUPTED, file=sys.stderr)
                return code
            if code != 0:
                results[run] = f"failed (exit {code}; see {run_dir.path})"
                continue
        results[run] = run_rows(run, run_dir, attacker=options.attack.split(":")[0], metric=metric)
    write_results(sweep, results, {name: topology.consensus_rate for name, topology in topologies.items()},
                  target, metric)
    return 0


def write_results(sweep: SweepDir, results: dict[Run, list[dict] | str], rates: dict[str, float], target: float,
                  metric: str) -> None:
    """results.csv, summary.md and the plots of a sweep; the summary is printed too."""
    with open(sweep.results, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for rows in results.values():
            if not isinstance(rows, str):
                writer.writerows(rows)
    sweep.summary.write_text(summary_markdown(results, rates, target, metric))
    sweep.plots.mkdir(parents=True, exist_ok=True)
    paths = [save(figure, sweep.plot(name))
             for name, figure in sweep_figures(results, rates, metric, figure_label(metric)).items()]
    print(sweep.summary.read_text())
    print(f"results: {sweep.results}; plots: {', '.join(p.name for p in paths)} in {sweep.plots}")


if __name__ == "__main__":
    sys.exit(main())
