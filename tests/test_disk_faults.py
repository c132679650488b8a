"""Disk faults: a checkpoint that cannot be written costs a logged, counted failure and a retry, never the peer;
a final write that fails is one line naming the file and exit code 4, and the last checkpoint still resumes.

The fault is real: the peer's directory is moved aside and a regular file put at its path, so that every
file the peer then creates there fails with ENOTDIR (root ignores file modes, so chmod would not do). Files
the peer has open (its metrics) move with the directory and go on being written; moving it back ends the
fault."""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from p2ptrain.node import EXIT_WRITE_FAILED
from p2ptrain.storage import read_json_lines
from p2ptrain.topology import PeerSpec, build_topology, dump_topology

from .conftest import free_port_block
from .processes import LoggedProcess

pytestmark = pytest.mark.swarm  # every test here runs peers


def solo_topology(path: Path) -> Path:
    """One peer and no neighbours: its model depends on nothing but its own state."""
    port = free_port_block(1)
    path.write_text(dump_topology(build_topology(
        "solo", [PeerSpec("p0", f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port}")], [])))
    return path


class BrokenDirectory:
    """A peer's directory made unwritable by putting a regular file at its path, and mended by moving it back."""

    def __init__(self, path: Path):
        self.path, self.aside = path, path.with_name(path.name + ".aside")

    def break_(self) -> None:
        self.path.rename(self.aside)
        self.path.write_text("not a directory\n")

    def mend(self) -> None:
        if self.aside.exists():
            self.path.unlink()
            self.aside.rename(self.path)


@contextmanager
def peers(*processes: LoggedProcess):
    try:
        yield processes
    finally:
        for process in processes:
            process.kill()  # only those still running: a failed wait must not leave peers behind


def peer_command(tmp_path: Path, name: str, rounds: int) -> list[str]:
    # Rounds padded to 0.1 s so that the test acts between two checkpoints (10 rounds, 1 s) with time to spare.
    return ["--topology", str(solo_topology(tmp_path / f"{name}.toml")), "--peer", "p0", "--rounds", str(rounds),
            "--checkpoint-every", "10", "--log-every", "10", "--min-compute-seconds", "0.1", "--insecure",
            "--out", str(tmp_path / name)]


def test_checkpoints_that_cannot_be_written_are_logged_counted_and_retried_and_the_model_is_unchanged(tmp_path):
    faulty = LoggedProcess.peer(peer_command(tmp_path, "faulty", 100))
    fault_free = LoggedProcess.peer(peer_command(tmp_path, "fault-free", 100))
    directory = BrokenDirectory(tmp_path / "faulty")
    with peers(faulty, fault_free):
        try:
            # The line of round 60 comes after its checkpoint: the ones of rounds 70 and 80 will fail.
            faulty.wait_for_line(r"round 60/100", timeout=120)
            directory.break_()
            faulty.wait_for_line(r"round 80/100", timeout=60)
        finally:
            directory.mend()  # before round 90's checkpoint, a second away
        assert faulty.finish(timeout=120) == 0, faulty.log()
        assert fault_free.finish(timeout=120) == 0, fault_free.log()

    failures = [line for line in faulty.lines if "could not write the checkpoint" in line]
    assert [int(re.search(r"of round (\d+)", line)[1]) for line in failures] == [70, 80]
    assert f"to {tmp_path / 'faulty' / 'checkpoint.pt'} (Not a directory)" in failures[0]
    assert "(2 failed so far)" in failures[1]
    assert "writing checkpoint at round 90" in faulty.log()
    assert torch.load(tmp_path / "faulty" / "checkpoint.pt", weights_only=True)["round"] == 90
    result = json.loads((tmp_path / "faulty" / "result.json").read_text())
    assert (result["status"], result["rounds_completed"], result["checkpoint_failures"]) == ("completed", 100, 2)
    # The metrics file was open all along: every round is there, each with the failures counted so far.
    counts = [r["checkpoint_failures"] for r in read_json_lines(tmp_path / "faulty" / "metrics.jsonl")]
    assert counts == [0] * 70 + [1] * 10 + [2] * 20  # a round's line is written before its checkpoint
    assert not list((tmp_path / "faulty").glob(".*.tmp"))  # no temporary file left behind

    got = torch.load(tmp_path / "faulty" / "model.pt", weights_only=True)
    expected = torch.load(tmp_path / "fault-free" / "model.pt", weights_only=True)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_a_final_write_that_fails_is_one_line_and_exit_code_4_and_the_last_checkpoint_resumes(tmp_path):
    command = peer_command(tmp_path, "run", 40)
    first = LoggedProcess.peer(command)
    directory = BrokenDirectory(tmp_path / "run")
    with peers(first):
        try:
            first.wait_for_line(r"round 30/40", timeout=120)  # its checkpoint is written: the last good one
            directory.break_()
            assert first.finish(timeout=60) == EXIT_WRITE_FAILED, first.log()
        finally:
            directory.mend()
    (error,) = [line for line in first.lines if "could not write" in line]  # no checkpoint fell due meanwhile
    assert f"could not write {tmp_path / 'run' / 'model.pt'}: Not a directory" in error
    assert "the last checkpoint written stays usable: rerun with --resume" in error
    assert "Traceback" not in first.log()
    assert not (tmp_path / "run" / "model.pt").exists() and not (tmp_path / "run" / "result.json").exists()

    second = LoggedProcess.peer(command + ["--resume"])
    with peers(second):
        assert second.finish(timeout=120) == 0, second.log()
    assert "resumed from the checkpoint of round 30" in second.log()
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert (result["status"], result["rounds_completed"]) == ("completed", 40)
    assert [r["round"] for r in read_json_lines(tmp_path / "run" / "metrics.jsonl")] == list(range(40))
