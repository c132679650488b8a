"""The figures of the topology experiments and the message study, drawn from results.csv-style rows.

A row (experiment.run_rows) holds one round of one run: its round, wall
time, bytes sent per peer so far, mean metric and consensus distance. The
plotting functions return figures by name; the caller saves them where its
directory says (rundir.py), with ``save``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

MIB = 2**-20
# What a metric can be drawn against: the row's key, the figure's name suffix, the axis label, the scale.
X_AXES = {
    "round": ("rounds", "round", 1),
    "wall_time": ("time", "wall time (s)", 1),
    "bytes_sent_per_peer": ("bytes", "MiB sent per peer", MIB),
}


def pyplot():
    """matplotlib's pyplot drawing into files only: imported on first use, as the runs need none of it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def metric_points(rows: list[dict], x_key: str) -> list[tuple[float, float]]:
    """(x, mean metric) of the rounds the metric was measured in, x scaled to its axis."""
    scale = X_AXES[x_key][2]
    return [(r[x_key] * scale, r["mean_metric"]) for r in rows if r["mean_metric"] != ""]


def metric_axes(metric: str, x_key: str):
    fig, ax = pyplot().subplots(figsize=(8, 5))
    ax.set_xlabel(X_AXES[x_key][1])
    ax.set_ylabel(f"mean {metric} over peers")
    return fig, ax


def sweep_figures(results: dict, rates: dict[str, float], metric: str, name: str) -> dict[str, object]:
    """A topology experiment's figures: consensus distance against round with rho^t drawn over it; the
    metric (``name`` in the figures' names) against round, wall time and bytes sent per peer; bytes sent
    per peer. ``results`` maps each run (experiment.Run) to its rows, or to why it did not run."""
    finished = {run: rows for run, rows in results.items() if not isinstance(rows, str)}
    plt = pyplot()
    colours = {topology: plt.cm.tab10(i % 10) for i, topology in enumerate(sorted({r.topology for r in finished}))}
    # Colour: topology; line style: algorithm; width: partition (the first listed widest).
    partitions = list(dict.fromkeys(run.partition for run in finished))
    widths = {p: max(2.4 - 1.2 * i, 0.6) for i, p in enumerate(partitions)}
    styles = {"gossip": "-", "admm": "--", "gradient-tracking": "-.", "push-sum": ":", "choco": (0, (6, 1, 1, 1, 1, 1))}

    def line(run) -> dict:
        return {"color": colours[run.topology], "linewidth": widths[run.partition],
                "linestyle": styles.get(run.algo, "-")}

    figures = {"consensus": _consensus_figure(finished, rates, line)}
    for x_key, (suffix, _, _) in X_AXES.items():
        fig, ax = metric_axes(metric, x_key)
        for run, rows in finished.items():
            points = metric_points(rows, x_key)
            if points:
                ax.plot(*zip(*points), label=run.label, **line(run))
        ax.legend(fontsize=6, ncol=2)
        figures[f"{name}_{suffix}"] = fig

    fig, ax = plt.subplots(figsize=(8, 5))
    ax.barh([run.name for run in finished], [rows[-1]["bytes_sent_per_peer"] * MIB for rows in finished.values()],
            color=[colours[run.topology] for run in finished])
    ax.set_xlabel("MiB sent per peer over the run")
    ax.tick_params(axis="y", labelsize=6)
    figures["bytes_sent"] = fig
    return figures


def _consensus_figure(finished: dict, rates: dict[str, float], line):
    fig, ax = pyplot().subplots(figsize=(8, 5))
    predicted = set()
    lowest = math.inf
    for run, rows in finished.items():
        points = [(r["round"], r["consensus_distance"]) for r in rows if r["consensus_distance"] != ""]
        if not points:
            continue
        x, y = zip(*points)
        lowest = min(lowest, min(v for v in y if v > 0))
        ax.semilogy(x, y, alpha=0.8, label=run.label, **line(run))
        rho = rates[run.topology]
        if run.topology not in predicted and 0 < rho < 1:
            predicted.add(run.topology)
            t = np.arange(x[0], x[-1] + 1)
            ax.semilogy(t, y[0] * rho ** (t - x[0]), ":", color=line(run)["color"], linewidth=1,
                        label=f"{run.topology} rho^t, rho={rho:.3f}")
    if math.isfinite(lowest):
        # With gradient steps disagreement stops shrinking; the prediction is for pure averaging
        # (--local-steps 0) and would otherwise stretch the axis far below every measurement.
        ax.set_ylim(bottom=lowest / 100)
    ax.set_xlabel("round")
    ax.set_ylabel("consensus distance (mean ||x_i - x̄|| / ||x̄||)")
    ax.set_title("Consensus distance; dotted: rho^t from the first measured point")
    ax.legend(fontsize=6, ncol=2)
    return fig


def study_figures(results: dict, metric: str) -> dict[str, object]:
    """A message study's figures: the metric against round and against bytes sent per peer, a line per
    variant. ``results`` maps each variant (message_study.Variant) to its results, rows among them."""
    figures = {}
    for x_key in ("round", "bytes_sent_per_peer"):
        fig, ax = metric_axes(metric, x_key)
        for variant, result in results.items():
            points = metric_points(result["rows"], x_key)
            if not points:
                continue
            if variant.centralized and x_key != "round":
                # Alone, it sends nothing: its final figure is the line to reach.
                ax.axhline(points[-1][1], linestyle=":", color="black", label=f"{variant.name} (final)")
                continue
            ax.plot(*zip(*points), "--" if variant.centralized else "-", label=variant.name)
        ax.legend(fontsize=8)
        figures[f"{metric}_{X_AXES[x_key][0]}"] = fig
    return figures
