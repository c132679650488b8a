"""Where a run keeps its files: one place names them, for the peers that write them and for the launcher,
the experiment runner, the message study and the readers of results.

A peer's directory (``PeerDir``) holds what one peer writes; a launcher's run
directory (``RunDir``) holds the topology and configuration it handed the
peers, one peer directory per peer under ``peers/``, and the summary. A
topology experiment (``SweepDir``) keeps one run directory per combination
under ``runs/`` beside its table, CSV and plots; a message study
(``StudyDir``) one per variant beside its table and plots.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict


class MetricsLine(TypedDict, total=False):
    """One line of a peer's metrics.jsonl: one round. Readers (the launcher's display, the experiment
    runner, results.py) rely on these keys; a peer adds its counters (stats.PeerStats, running
    totals), its algorithm's figures (ADMM: primal_residual, local_objective; ClippedGossip:
    clipping_radius, clipped) and, in the rounds it evaluates, the task's held-out figures
    (test_loss and test_accuracy, or val_loss and val_perplexity for gpt-char)."""

    round: int
    time: float  # seconds since the peer started, on its monotonic clock
    unix_time: float
    lr: float | None  # the first parameter group's learning rate this round
    loss: float | None  # mean training loss of the round's local steps
    neighbour_distance: float | None  # ||x_i - mean of the neighbours heard|| / ||x_i||, before mixing; evaluation rounds only
    bytes_sent: int
    bytes_received: int
    wait_seconds: float
    heard: list[str]
    missing: list[str]
    staleness: dict[str, int]  # async mode: rounds behind, per neighbour mixed
    timed_out: list[str]  # sync mode: in-neighbours the round waited for until its deadline
    traced: int  # values in this round's trace row, when one was written
    rel_error: float  # with --reference: ||x - x*|| / ||x*||


# The statuses in result.json of a peer that went to its last round.
FINISHED = frozenset({"completed", "isolated"})
# The exit code of a peer that ran its rounds but could not write its final model or result (a full or
# unwritable disk): the last checkpoint stays usable with --resume.
EXIT_WRITE_FAILED = 4


@dataclass(frozen=True)
class PeerDir:
    path: Path

    def read_result(self) -> dict | None:
        """result.json (written atomically, so whole), or None before the peer ended."""
        try:
            return json.loads(self.result.read_text())
        except FileNotFoundError:
            return None

    @property
    def id(self) -> str:
        return self.path.name  # the launcher names a peer's directory after the peer

    @property
    def config(self) -> Path:
        return self.path / "config.json"  # the configuration and what the peer was built from

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"  # one JSON line per round

    @property
    def trace(self) -> Path:
        return self.path / "trace.f32"  # float32 parameter rows every --trace-every rounds

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def previous_checkpoint(self) -> Path:
        return self.path / "checkpoint.previous.pt"  # the one before: peers of a swarm resume from a common round

    @property
    def damaged_checkpoint(self) -> Path:
        return self.path / "checkpoint.damaged.pt"  # a newest one that could not be read, kept aside by a resume

    @property
    def result(self) -> Path:
        return self.path / "result.json"  # status and counters, written at the end

    @property
    def model(self) -> Path:
        return self.path / "model.pt"  # the final state_dict

    @property
    def algorithm(self) -> Path:
        return self.path / "algorithm.pt"  # algorithm state beyond the model (ADMM's duals)

    @property
    def sample(self) -> Path:
        return self.path / "sample.txt"  # text generated at the end, for tasks that generate

    @property
    def log(self) -> Path:
        return self.path / "peer.log"  # the launcher's capture of the peer's output

    def outputs(self) -> tuple[Path, ...]:
        """Files a run leaves here: a new run refuses to start over them unless told to overwrite."""
        return (self.metrics, self.result, self.model, self.algorithm, self.config, self.trace, self.sample,
                self.checkpoint, self.previous_checkpoint, self.damaged_checkpoint)


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def fresh(cls, name: str) -> "RunDir":
        return cls(Path("runs") / name)  # where the launcher puts a run not given an --out

    @property
    def peers(self) -> Path:
        return self.path / "peers"

    def peer(self, peer_id: str) -> PeerDir:
        return PeerDir(self.peers / peer_id)

    def peer_dirs(self) -> list[PeerDir]:
        """The directories of the peers that ran, in order of their ids."""
        return [PeerDir(p) for p in sorted(self.peers.iterdir()) if p.is_dir()]

    def holds_a_run(self) -> bool:
        return self.summary.exists() or self.peers.exists()

    @property
    def topology(self) -> Path:
        return self.path / "topology.toml"  # the graph as the launcher gave it to the peers

    @property
    def peer_config(self) -> Path:
        return self.path / "peer-config.json"  # the one configuration every peer reads

    @property
    def launch(self) -> Path:
        return self.path / "launch.json"  # the command and the peers' pids

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def keys(self) -> Path:
        return self.path / "keys"

    @property
    def reference(self) -> Path:
        return self.path / "reference.pt"  # the centralized optimum of a convex task

    @property
    def peers_log(self) -> Path:
        return self.path / "peers.log"  # the log of peers run in the launcher's own process


@dataclass(frozen=True)
class SweepDir:
    """A topology experiment's directory (experiment.py)."""

    path: Path

    def run(self, name: str) -> RunDir:
        return RunDir(self.path / "runs" / name)

    @property
    def topologies(self) -> Path:
        return self.path / "topologies"

    def topology(self, name: str) -> Path:
        return self.topologies / f"{name}.toml"  # a generated graph, written for the runs to read

    @property
    def results(self) -> Path:
        return self.path / "results.csv"  # a row per run and round

    @property
    def summary(self) -> Path:
        return self.path / "summary.md"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    def plot(self, name: str) -> Path:
        return self.plots / f"{name}.png"


@dataclass(frozen=True)
class StudyDir:
    """A message study's directory (message_study.py): its plots sit beside its table."""

    path: Path

    def variant(self, name: str) -> RunDir:
        return RunDir(self.path / name)

    @property
    def summary(self) -> Path:
        return self.path / "summary.md"

    def plot(self, name: str) -> Path:
        return self.path / f"{name}.png"
