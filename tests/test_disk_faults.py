"""Disk faults: a checkpoint that cannot be written costs a logged, counted failure and a retry, never the peer;
a final write that fails is one line naming the file and exit code 4, and the last checkpoint still resumes.

The faults are real, two kinds (root ignores file modes, so chmod would not do):
- an unwritable directory: the peer's directory is moved aside and a regular file put at its path, so that
  every file the peer then creates there fails with ENOTDIR. Files the peer has open (its metrics) move with
  the directory and go on being written; moving it back ends the fault.
- a full disk: the peer writes to a small file system of its own (tmpfs, mounted as root), filled up with a
  file until too little is left for a checkpoint or the final model but enough for the metrics lines
  meanwhile (ENOSPC); deleting the file ends the fault."""

from __future__ import annotations

import json
import os
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from p2ptrain.running import EXIT_WRITE_FAILED
from p2ptrain.ports import free_port_block
from p2ptrain.storage import read_json_lines
from p2ptrain.topology import PeerSpec, build_topology, dump_topology

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


class FullDisk:
    """The file system holding ``path`` filled up to ``free`` bytes left, and emptied again."""

    def __init__(self, path: Path, free: int):
        self.path, self.free, self.filler = path, free, path.parent / "filler"

    def break_(self) -> None:
        stats = os.statvfs(self.filler.parent)
        with open(self.filler, "wb") as f:
            f.write(bytes(stats.f_bavail * stats.f_frsize - self.free))

    def mend(self) -> None:
        self.filler.unlink(missing_ok=True)


# What each fault makes the peer say (strerror), and how it is made on a peer directory.
FAULTS = {"unwritable directory": "Not a directory", "full disk": "No space left on device"}


@pytest.fixture
def disk(request, tmp_path):
    """(the directory the faulty peer writes to, a function that makes the fault there given the bytes a full
    disk leaves free)."""
    if request.param == "unwritable directory":
        yield tmp_path, lambda out, free: BrokenDirectory(out)
        return
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("a full disk needs root and tmpfs, to fill a file system of its own")
    try:
        yield mount, FullDisk
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@contextmanager
def peers(*processes: LoggedProcess):
    try:
        yield processes
    finally:
        for process in processes:
            process.kill()  # only those still running: a failed wait must not leave peers behind


def peer_command(tmp_path: Path, name: str, rounds: int, out: Path | None = None) -> list[str]:
    # Rounds padded to 0.1 s so that the test acts between two checkpoints (10 rounds, 1 s) with time to spare.
    return ["--topology", str(solo_topology(tmp_path / f"{name}.toml")), "--peer", "p0", "--rounds", str(rounds),
            "--checkpoint-every", "10", "--log-every", "10", "--min-compute-seconds", "0.1", "--insecure",
            "--out", str(out or tmp_path / name)]


@pytest.mark.parametrize("disk", list(FAULTS), indirect=True)
def test_checkpoints_that_cannot_be_written_are_logged_counted_and_retried_and_the_model_is_unchanged(tmp_path,
                                                                                                      disk, request):
    where, make_fault = disk
    error = FAULTS[request.node.callspec.params["disk"]]
    out = where / "faulty"
    faulty = LoggedProcess.peer(peer_command(tmp_path, "faulty", 100, out))
    fault_free = LoggedProcess.peer(peer_command(tmp_path, "fault-free", 100))
    # A checkpoint of this model takes about 55 KB; 20 metrics lines about 9 KB.
    directory = make_fault(out, 40 * 1024)
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
    assert f"to {out / 'checkpoint.pt'} ({error})" in failures[0]
    assert "(2 failed so far)" in failures[1]
    assert "writing checkpoint at round 90" in faulty.log()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["round"] == 90
    result = json.loads((out / "result.json").read_text())
    assert (result["status"], result["rounds_completed"], result["checkpoint_failures"]) == ("completed", 100, 2)
    # The metrics file was open all along: every round is there, each with the failures counted so far.
    counts = [r["checkpoint_failures"] for r in read_json_lines(out / "metrics.jsonl")]
    assert counts == [0] * 70 + [1] * 10 + [2] * 20  # a round's line is written before its checkpoint
    assert not list((out).glob(".*.tmp"))  # no temporary file left behind

    got = torch.load(out / "model.pt", weights_only=True)
    expected = torch.load(tmp_path / "fault-free" / "model.pt", weights_only=True)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


@pytest.mark.parametrize("disk", list(FAULTS), indirect=True)
def test_a_final_write_that_fails_is_one_line_and_exit_code_4_and_the_last_checkpoint_resumes(tmp_path, disk,
                                                                                              request):
    where, make_fault = disk
    error = FAULTS[request.node.callspec.params["disk"]]
    out = where / "run"
    command = peer_command(tmp_path, "run", 40, out)
    first = LoggedProcess.peer(command)
    directory = make_fault(out, 16 * 1024)  # the final model takes about 21 KB
    with peers(first):
        try:
            first.wait_for_line(r"round 30/40", timeout=120)  # its checkpoint is written: the last good one
            directory.break_()
            assert first.finish(timeout=60) == EXIT_WRITE_FAILED, first.log()
        finally:
            directory.mend()
    (line,) = [line for line in first.lines if "could not write" in line]  # no checkpoint fell due meanwhile
    assert f"could not write {out / 'model.pt'}: {error}" in line
    assert "the last checkpoint written stays usable: rerun with --resume" in line
    assert "Traceback" not in first.log()
    assert not (out / "model.pt").exists() and not (out / "result.json").exists()
    assert not list(out.glob(".*.tmp"))  # the failed write took its temporary file away

    second = LoggedProcess.peer(command + ["--resume"])
    with peers(second):
        assert second.finish(timeout=120) == 0, second.log()
    assert "resumed from the checkpoint of round 30" in second.log()
    result = json.loads((out / "result.json").read_text())
    assert (result["status"], result["rounds_completed"]) == ("completed", 40)
    assert [r["round"] for r in read_json_lines(out / "metrics.jsonl")] == list(range(40))
