"""Reading what peers wrote: their final models, results and metrics, and the swarm-wide numbers made from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .rundir import PeerDir
from .storage import read_json_lines


def flat_parameters(state_dict: dict[str, torch.Tensor]) -> torch.Tensor:
    """All floating-point entries of a state_dict as one float64 vector, in key order."""
    return torch.cat([t.reshape(-1).double() for _, t in sorted(state_dict.items()) if t.is_floating_point()])


def consensus_distance(models: list[dict[str, torch.Tensor]]) -> float:
    """Mean over peers of ||x_i - x_mean|| / ||x_mean||: 0 when every replica is identical."""
    if not models:
        raise ValueError("no models to compare")
    return consensus_of_rows(torch.stack([flat_parameters(m).cpu() for m in models]).numpy())


def consensus_of_rows(rows: np.ndarray) -> float:
    """consensus_distance of parameter vectors given as the rows of a matrix."""
    rows = np.asarray(rows, dtype=np.float64)
    mean = rows.mean(axis=0)
    return float(np.linalg.norm(rows - mean, axis=1).mean() / max(float(np.linalg.norm(mean)), 1e-30))


def relative_error(state_dict: dict[str, torch.Tensor], reference: torch.Tensor) -> float:
    """||x - x*|| / ||x*|| for a model whose parameters, flattened in key order, are x."""
    x = flat_parameters(state_dict)
    return float(torch.linalg.vector_norm(x - reference.double()) / torch.linalg.vector_norm(reference.double()))


def _files(peer_dir: Path | PeerDir) -> PeerDir:
    """Readers take a peer's directory as a path too, as scripts and tests hand it over."""
    return peer_dir if isinstance(peer_dir, PeerDir) else PeerDir(Path(peer_dir))


def load_model(peer_dir: Path | PeerDir) -> dict[str, torch.Tensor] | None:
    path = _files(peer_dir).model
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def read_trace(peer_dir: Path | PeerDir) -> tuple[list[int], np.ndarray]:
    """(rounds, one row of float32 parameters per traced round) of a peer run with --trace-every."""
    files = _files(peer_dir)
    traced = [r for r in read_json_lines(files.metrics) if r.get("traced")]
    if not traced:
        return [], np.zeros((0, 0), dtype=np.float32)
    size = traced[0]["traced"]
    # A row written just before the peer died has no metrics line yet: leave it out.
    flat = np.fromfile(files.trace, dtype=np.float32)[: len(traced) * size]
    return [r["round"] for r in traced], flat.reshape(len(traced), size)


def peer_outcome(peer_dir: Path | PeerDir, figure: str = "test_accuracy") -> dict:
    """Rounds completed, final accuracy and loss of one peer, from result.json or, failing that, its metrics.
    The status is the peer's own word (completed, interrupted, diverged, failed, isolated) when it wrote one."""
    files = _files(peer_dir)
    result = files.read_result()
    if result is not None:
        return {
            "rounds_completed": result["rounds_completed"],
            "test_accuracy": result["test_accuracy"],
            figure: result.get(figure),
            "train_loss": result["train_loss"],
            "status": result["status"],
            "start_round": result.get("start_round", 0),
            "identity_conflicts": result.get("identity_conflicts", {}),
        }
    # Killed before it could write a result: its metrics say how far it got.
    records = read_json_lines(files.metrics)
    accuracies = [r["test_accuracy"] for r in records if "test_accuracy" in r]
    figures = [r[figure] for r in records if figure in r]
    return {
        "rounds_completed": records[-1]["round"] + 1 if records else 0,
        "test_accuracy": accuracies[-1] if accuracies else None,
        figure: figures[-1] if figures else None,
        "train_loss": records[-1]["loss"] if records else None,
        # Killed, or never started (a --join that did not come due).
        "status": "killed" if files.metrics.exists() else "not started",
        "start_round": records[0]["round"] if records else 0,
        "identity_conflicts": records[-1].get("identity_conflicts", {}) if records else {},
    }
