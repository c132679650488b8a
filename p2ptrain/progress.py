"""The launcher's live display: how far each peer has got, read from the files it writes as it writes them.

A peer goes through these states, each seen from outside:

    waiting to join   held back by --join until the swarm reaches a round
    starting          launched, nothing written yet (a peer process spends
                      seconds importing torch and building its model)
    listening         its config.json exists: a peer writes it once its port is bound
    running           its metrics.jsonl has a line: it has completed a round
    exit N            its process (or task) ended with code N

Until a peer has completed a round the display says it is starting, and
whether it listens yet, rather than showing it at round 0. On a terminal
the display is a table redrawn in place, elsewhere a line every few
seconds; once every peer has exited it is drawn a last time and then left
alone.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass

from .rundir import PeerDir, RunDir

LINE_EVERY_SECONDS = 5.0  # off a terminal: one line this often, for logs that stay readable


@dataclass(frozen=True)
class PeerState:
    """What the display knows of one peer."""

    id: str
    launched: bool = True  # False while held back for a --join
    begun: bool = False  # its config.json exists: its port is bound
    round: int | None = None  # rounds completed; None before its first metrics line
    loss: float | None = None
    figure: float | None = None  # the task's headline figure (test accuracy, validation loss) when last evaluated
    exit_code: int | None = None

    @property
    def state(self) -> str:
        if self.exit_code is not None:
            return f"exit {self.exit_code}"
        if not self.launched:
            return "waiting to join"
        if not self.begun:
            return "starting"
        return "listening" if self.round is None else "running"


def figure_label(figure: str) -> str:
    """A column title for the task's headline figure: ``accuracy`` for test_accuracy, its name otherwise."""
    return "accuracy" if figure == "test_accuracy" else figure


def headline(peers: list[PeerState], rounds: int, figure: str = "test_accuracy") -> str:
    """The swarm in a few words: how many are listening while they start, then the rounds reached."""
    launched = [p for p in peers if p.launched]
    starting = [p for p in launched if p.round is None and p.exit_code is None]
    waiting = len(peers) - len(launched)
    if all(p.exit_code is not None for p in peers):
        text = f"finished: {_rounds_reached(launched, rounds, figure)}"
    elif len(starting) == len(launched):
        text = f"starting: {sum(p.begun for p in launched)}/{len(launched)} peers listening"
    else:
        text = _rounds_reached(launched, rounds, figure)
        if starting:
            text += f"; {len(starting)} still starting ({sum(p.begun for p in starting)} listening)"
    return text + (f"; {waiting} waiting to join" if waiting else "")


def progress_table(peers: list[PeerState], rounds: int, elapsed: float, figure: str = "test_accuracy") -> list[str]:
    """The terminal display: the headline over a row per peer."""
    lines = [f"{elapsed:7.1f}s  {headline(peers, rounds, figure)}",
             f"{'':9}{'peer':<10} {'round':>9} {'loss':>8} {figure_label(figure):>9}  state"]
    for p in peers:
        done = "-" if p.round is None else p.round
        lines.append(f"{'':9}{p.id:<10} {done:>4}/{rounds:<4} {_fmt(p.loss):>8} {_fmt(p.figure):>9}  {p.state}")
    return lines


def progress_line(peers: list[PeerState], rounds: int, elapsed: float, figure: str = "test_accuracy") -> str:
    """The display in a log: the headline alone."""
    return f"{elapsed:6.1f}s {headline(peers, rounds, figure)}"


def _rounds_reached(peers: list[PeerState], rounds: int, figure: str) -> str:
    reached = [p.round or 0 for p in peers]
    figures = [p.figure for p in peers if p.figure is not None]
    text = f"rounds {min(reached, default=0)}-{max(reached, default=0)}/{rounds}"
    if figures:
        text += f" {figure_label(figure)} {min(figures):.3f}-{max(figures):.3f}"
    return text


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


class PeerReader:
    """Follows one peer's files: whether it has begun, and the metrics lines it added since the last look."""

    def __init__(self, files: PeerDir, figure: str = "test_accuracy"):
        self.files = files
        self.figure_name = figure
        self.begun = False
        self.round: int | None = None
        self.loss: float | None = None
        self.figure: float | None = None
        self._offset = 0
        self._inode = -1

    def read(self) -> None:
        self.begun = self.begun or self.files.config.exists()
        try:
            with open(self.files.metrics, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                if inode != self._inode or not _line_ends_at(f, self._offset):
                    # A resumed peer replaces its metrics file (dropping the rounds it will redo), and a new
                    # file may even get the old one's inode (--overwrite removes it first): start over.
                    self._inode, self._offset = inode, 0
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being written is read next time
        self._offset += len(complete)
        for line in complete.decode().splitlines():
            record = json.loads(line)
            self.round = record["round"] + 1
            self.loss = record["loss"]
            if self.figure_name in record:
                self.figure = record[self.figure_name]

    def state(self, exit_code: int | None, launched: bool) -> PeerState:
        return PeerState(self.files.id, launched, self.begun, self.round, self.loss, self.figure, exit_code)


def _line_ends_at(f, offset: int) -> bool:
    """Whether the file read up to ``offset`` still ends a line there (the file it was read from is this one)."""
    if offset == 0:
        return True
    f.seek(offset - 1)
    return f.read(1) == b"\n"


class Progress:
    """The live display of one run; ``show`` reads what the peers wrote since the last call and draws it."""

    def __init__(self, run_dir: RunDir, peer_ids: tuple[str, ...], rounds: int, figure: str = "test_accuracy"):
        self.rounds = rounds
        self.figure = figure  # the task's headline figure, shown per peer
        self.started = time.monotonic()
        self.readers = {peer_id: PeerReader(run_dir.peer(peer_id), figure) for peer_id in peer_ids}
        self.tty = sys.stdout.isatty()
        self._drawn = 0  # lines of the table on the screen, to move back over
        self._last_line = -math.inf
        self._finished_shown = False

    def rounds_completed(self) -> dict[str, int]:
        return {peer_id: reader.round or 0 for peer_id, reader in self.readers.items()}

    def show(self, exit_codes: dict[str, int | None], waiting: set[str] = frozenset()) -> None:
        """``exit_codes``: each peer's, None while it runs; ``waiting``: peers held back for a --join."""
        for reader in self.readers.values():
            reader.read()
        peers = [reader.state(exit_codes.get(peer_id), peer_id not in waiting)
                 for peer_id, reader in self.readers.items()]
        finished = all(p.exit_code is not None for p in peers)
        if finished and self._finished_shown:
            return  # nothing will change any more: leave the last picture alone
        self._finished_shown = finished
        elapsed = time.monotonic() - self.started
        if self.tty:
            self._redraw(progress_table(peers, self.rounds, elapsed, self.figure))
        elif finished or elapsed - self._last_line >= LINE_EVERY_SECONDS:
            self._last_line = elapsed
            print(progress_line(peers, self.rounds, elapsed, self.figure), flush=True)

    def _redraw(self, table: list[str]) -> None:
        sys.stdout.write(f"\x1b[{self._drawn}F" if self._drawn else "")  # back to the table's first line
        sys.stdout.write("".join(f"\x1b[2K{line}\n" for line in table))
        sys.stdout.flush()
        self._drawn = len(table)
