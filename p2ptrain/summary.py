"""The end of a launch: what every peer achieved, from the files it left, as summary.json and a table.

The summary is made from the run directory alone (and the exit codes the
launcher saw), so it is the same whether the peers ran as processes or in
the launcher's own process.
"""

from __future__ import annotations

import sys

import torch

from .progress import figure_label
from .results import consensus_distance, load_model, peer_outcome, relative_error
from .rundir import EXIT_WRITE_FAILED, RunDir
from .topology import Topology

# A peer that heard from no neighbour in the whole run ends with this status: its model trained alone.
ISOLATED = "isolated"


def _status(written: str, exit_code: int | None) -> str:
    """The peer's own word for how it ended, or, where it wrote none, what its exit code tells."""
    if written == "not started" and exit_code is not None:
        return "stopped before its first round"  # it ran: stopped while it still imported torch
    if written == "killed" and exit_code == EXIT_WRITE_FAILED:
        return "could not write its outputs"
    return written


def summarise(topology: Topology, algo: str, run_dir: RunDir, exit_codes: dict[str, int | None],
              wall_seconds: float, reference: torch.Tensor | None = None, figure: str = "test_accuracy") -> dict:
    """What RUN/summary.json holds: each peer's outcome (with the task's headline ``figure``) and exit
    code, and the swarm-wide figures."""
    models = [m for m in (load_model(run_dir.peer(peer_id)) for peer_id in topology.ids) if m is not None]
    peers = {}
    for peer_id in topology.ids:
        outcome = peer_outcome(run_dir.peer(peer_id), figure)
        peers[peer_id] = {
            "rounds_completed": outcome["rounds_completed"],
            "test_accuracy": outcome["test_accuracy"],
            figure: outcome[figure],
            "train_loss": outcome["train_loss"],
            "exit_code": exit_codes.get(peer_id),
            # A peer with an exit code ran, even if it was stopped before it wrote anything (importing torch).
            "status": _status(outcome["status"], exit_codes.get(peer_id)),
        }
        if outcome["start_round"]:
            peers[peer_id]["start_round"] = outcome["start_round"]  # it joined the run late
        if outcome["identity_conflicts"]:
            peers[peer_id]["identity_conflicts"] = outcome["identity_conflicts"]
    summary = {
        "topology": topology.name,
        "algo": algo,
        "wall_seconds": wall_seconds,
        # From the final models of the peers that wrote one; None if none did.
        "consensus_distance": consensus_distance(models) if models else None,
        "figure": figure,
        "peers": peers,
    }
    conflicts = identity_conflicts(peers)
    if conflicts:
        summary["identity_conflicts"] = conflicts
    if reference is not None and models:
        summary["max_rel_error_to_optimum"] = max(relative_error(m, reference) for m in models)
    return summary


def summary_table(summary: dict) -> str:
    figure = summary.get("figure", "test_accuracy")
    label = figure_label(figure)
    lines = [f"{'peer':<10} {'rounds':>6} {label:>9} {'loss':>8} {'exit':>5}  status"]
    for peer_id, p in summary["peers"].items():
        lines.append(f"{peer_id:<10} {p['rounds_completed']:>6} {_fmt(p[figure]):>9} "
                     f"{_fmt(p['train_loss']):>8} {p['exit_code']!s:>5}  {p['status']}")
    values = [p[figure] for p in summary["peers"].values() if p[figure] is not None]
    if values:
        lines.append(f"{label} min {min(values):.4f} mean {sum(values) / len(values):.4f} max {max(values):.4f}")
    if "max_rel_error_to_optimum" in summary:
        lines.append(f"max relative error to the centralized optimum {summary['max_rel_error_to_optimum']:.3e}")
    lines.append(f"consensus distance {_fmt(summary['consensus_distance'], '.3e')}; "
                 f"wall time {summary['wall_seconds']:.1f}s ({summary['topology']}, {summary['algo']})")
    return "\n".join(lines)


def failed_peers(summary: dict) -> list[str]:
    """Peers that did not finish: a non-zero exit, or never started (a --join that did not come due)."""
    return [peer_id for peer_id, p in summary["peers"].items() if p["exit_code"] != 0]


def isolated_peers(summary: dict) -> list[str]:
    return [peer_id for peer_id, p in summary["peers"].items() if p["status"] == ISOLATED]


def identity_conflicts(peers: dict[str, dict]) -> dict[str, list[str]]:
    """Each peer id that two processes sent as, with the peers that received two different messages
    of one round from it."""
    claimed: dict[str, list[str]] = {}
    for receiver, p in peers.items():
        for sender in p.get("identity_conflicts", {}):
            claimed.setdefault(sender, []).append(receiver)
    return {sender: sorted(receivers) for sender, receivers in sorted(claimed.items())}


def generated_sample(run_dir: RunDir, peer_ids: tuple[str, ...]) -> str | None:
    """The text the first peer's model generated at the end, for tasks that generate (gpt-char), headed
    by where it is; None for tasks that do not."""
    for peer_id in peer_ids:
        path = run_dir.peer(peer_id).sample
        if path.exists():
            return f"--- text generated by {peer_id}'s model ({path}):\n{path.read_text(encoding='utf-8')}\n---"
    return None


def print_summary(summary: dict, run_dir: RunDir, logs: str) -> None:
    """The table, a generated sample, and warnings naming the peers that failed (see ``logs``) or
    trained alone."""
    print(summary_table(summary))
    sample = generated_sample(run_dir, tuple(summary["peers"]))
    if sample is not None:
        print(sample)
    failed = failed_peers(summary)
    if failed:
        print(f"launch_swarm: peers {', '.join(failed)} did not finish; see {logs}", file=sys.stderr)
    isolated = isolated_peers(summary)
    if isolated:
        print(f"launch_swarm: warning: peers {', '.join(isolated)} heard from no neighbour in the whole run, "
              "so their models trained alone; check that their neighbours' endpoints (and keys) reach them",
              file=sys.stderr)
    for sender, receivers in summary.get("identity_conflicts", {}).items():
        print(f"launch_swarm: warning: two processes sent as {sender}: {', '.join(receivers)} received two different "
              f"messages from {sender} for one round; find and stop the process that should not run as {sender}",
              file=sys.stderr)
    print(f"summary: {run_dir.summary}")


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)
