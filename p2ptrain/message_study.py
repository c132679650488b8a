"""How a swarm's messages shape its training: whole-model gossip against model fragments, half-precision
messages and CHOCO's compressed differences, with the centralized baseline beside them
(scripts/compare_messages.py).

Each variant is one in-process swarm run by the launcher with the same task,
topology, seed and options, differing only in --fragments and --wire-dtype,
or running CHOCO with a compressor (int8; top-k and random-k at 1%, with the
steps docs/algorithms.md measured for them);
the baseline is the launcher's --centralized run. The study writes
summary.md (every peer's final metric, its distance from the baseline,
consensus, bytes sent per peer per round and their ratio to whole-model
gossip, wall time) and plots of the metric against rounds and against bytes
sent. A variant whose summary.json exists is not run again.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, PeerConfig, add_training_options, given_options, new_parser, option_adder
from .experiment import PEER_FIELDS, Run, lower_is_better, resolve_topology, run_rows
from .plots import save, study_figures
from .replica import resolve_config, resolve_task
from .rundir import RunDir, StudyDir
from .swarm import LaunchOptions, launch
from .task import headline_figure
from .topology import TopologyError


@dataclass(frozen=True)
class Variant:
    name: str
    fragments: int = 1
    wire_dtype: str = ""
    centralized: bool = False
    compressor: str = ""  # a CHOCO variant's --compressor; "": the run's own --algo
    choco_gamma: float = 0.0

    def config(self, base: PeerConfig) -> PeerConfig:
        config = base.replace(fragments=self.fragments, wire_dtype=self.wire_dtype)
        if self.compressor:
            config = config.replace(algo="choco", compressor=self.compressor, choco_gamma=self.choco_gamma)
        return config


def variants(fragments: int) -> list[Variant]:
    return [Variant("centralized", centralized=True), Variant("gossip"),
            Variant(f"fragments-{fragments}", fragments=fragments), Variant("bfloat16", wire_dtype="bfloat16"),
            Variant(f"fragments-{fragments}-bfloat16", fragments=fragments, wire_dtype="bfloat16"),
            Variant("choco-int8", compressor="int8"),
            Variant("choco-top-k-0.01", compressor="top-k:0.01", choco_gamma=0.1),
            Variant("choco-random-k-0.01", compressor="random-k:0.01", choco_gamma=0.01)]


def build_parser(defaults: bool = True) -> argparse.ArgumentParser:
    parser = new_parser(defaults, prog="scripts/compare_messages.py",
                        description="Train the same task with whole-model, fragment and half-precision gossip, "
                                    "with CHOCO's compressed gossip (int8, top-k, random-k) and alone (the "
                                    "centralized baseline); compare them in a table and plots.")
    add = option_adder(parser, defaults)
    add("--out", required=True, help="study directory")
    add("--topology", default="ring8", help="topology file or KIND+PEERS name (default: %(default)s)")
    add("--only", default="", help="comma-separated variant names to run (default: all)")
    add("--metric", default="", help="the figure compared (default: the task's headline, else test_accuracy)")
    add("--base-port", type=int, default=27500, help="ports of a generated topology (default: %(default)s)")
    add_training_options(parser, defaults, helps={
        "fragments": "K of the fragment variants (default: 4)", "wire_dtype": argparse.SUPPRESS})
    return parser


def main(argv: list[str] | None = None) -> int:
    args, explicit = given_options(build_parser, argv)
    study = StudyDir(Path(args["out"]))
    try:
        topology = resolve_topology(args["topology"], args["base_port"])
        base = resolve_config({k: v for k, v in explicit.items() if k in PEER_FIELDS and k not in ("fragments",
                                                                                                   "wire_dtype")})
        metric = args["metric"] or headline_figure(resolve_task(base))
        fragments = explicit.get("fragments", 4)
        chosen = [v for v in variants(fragments) if not args["only"] or v.name in args["only"].split(",")]
        if not chosen:
            raise ConfigError(f"--only {args['only']}: no such variant; choose from "
                              f"{', '.join(v.name for v in variants(fragments))}")
    except (ValueError, ConfigError, TopologyError) as error:
        print(f"compare_messages: error: {error}", file=sys.stderr)
        return 2
    results = {}
    for variant in chosen:
        run_dir = study.variant(variant.name)
        if not run_dir.summary.exists():
            print(f"== {variant.name}", flush=True)
            code = launch(variant.config(base), topology, LaunchOptions(out=str(run_dir.path), overwrite=True,
                                                                        in_process="inproc",
                                                                        centralized=variant.centralized))
            if code != 0:
                print(f"compare_messages: {variant.name} failed (exit {code}); see {run_dir.path}", file=sys.stderr)
                return code
        results[variant] = study_run(variant, run_dir, metric, base.rounds)
    table = summary_markdown(results, metric)
    study.summary.write_text(table)
    paths = [save(figure, study.plot(name)) for name, figure in study_figures(results, metric).items()]
    print(table)
    print(f"summary: {study.summary}; plots: {', '.join(str(p) for p in paths)}")
    return 0


def study_run(variant: Variant, run_dir: RunDir, metric: str, rounds: int) -> dict:
    summary = json.loads(run_dir.summary.read_text())
    finals = [json.loads(p.result.read_text()).get(metric) for p in run_dir.peer_dirs()]
    rows = run_rows(Run(variant.name, summary["algo"], "iid", 0), run_dir, metric=metric)
    return {"finals": [f for f in finals if f is not None], "rows": rows, "wall": summary["wall_seconds"],
            "consensus": summary["consensus_distance"],
            "bytes_per_round": rows[-1]["bytes_sent_per_peer"] / rounds if rows else 0.0}


def summary_markdown(results: dict[Variant, dict], metric: str) -> str:
    baseline = next((r for v, r in results.items() if v.centralized), None)
    reference = baseline["finals"][0] if baseline and baseline["finals"] else None
    full = next((r for v, r in results.items() if v.name == "gossip"), None)
    lines = [f"| run | final {metric} (min / mean / max over peers) | worst vs centralized | consensus distance | "
             "bytes sent per peer per round | vs whole-model gossip | wall time (s) |",
             "|---|---|---|---|---|---|---|"]
    for variant, result in results.items():
        finals = result["finals"]
        worst = (max if lower_is_better(metric) else min)(finals) if finals else None
        figures = f"{min(finals):.4f} / {sum(finals) / len(finals):.4f} / {max(finals):.4f}" if finals else "-"
        versus = f"{(worst / reference - 1) * 100:+.1f}%" if reference and worst is not None else "-"
        ratio = (f"{result['bytes_per_round'] / full['bytes_per_round']:.3f}"
                 if full and full["bytes_per_round"] and not variant.centralized else "-")
        consensus = "-" if variant.centralized or result["consensus"] is None else f"{result['consensus']:.2e}"
        lines.append(f"| {variant.name} | {figures} | {versus} | {consensus} | {result['bytes_per_round']:,.0f} | "
                     f"{ratio} | {result['wall']:.0f} |")
    return "\n".join(lines) + "\n"
