"""Checkpoints: a resumed peer ends exactly where an uninterrupted one does; a write cut short loses nothing."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from p2ptrain import peer
from p2ptrain.ports import free_port_block
from p2ptrain.storage import read_json_lines
from p2ptrain.topology import PeerSpec, build_topology, dump_topology

from .processes import ROOT, LoggedProcess

pytestmark = pytest.mark.swarm  # every test here runs peers


@pytest.fixture
def solo_topology(tmp_path):
    """One peer and no neighbours: a run that depends on nothing but its own state."""
    port = free_port_block(1)
    path = tmp_path / "solo.toml"
    path.write_text(dump_topology(build_topology(
        "solo", [PeerSpec("p0", f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port}")], [])))
    return path


@pytest.mark.parametrize("algo, task", [("gossip", ""), ("admm", ""), ("gossip", "batchnorm_adam")])
def test_a_resumed_run_ends_exactly_where_an_uninterrupted_one_does(solo_topology, tmp_path, algo, task):
    # The plugin task draws from a DataLoader over dicts, with Adam and BatchNorm: the checkpoint must hold
    # where its sampler stands mid-epoch, Adam's moments and the buffers.
    common = ["--topology", str(solo_topology), "--peer", "p0", "--algo", algo, "--rounds", "30",
              "--local-steps", "3", "--checkpoint-every", "10", "--eval-every", "5", "--insecure"]
    if algo == "admm":
        common += ["--admm-solver", "inexact"]
    if task:
        common += ["--task", f"{ROOT / 'tests' / 'plugin_tasks.py'}:{task}"]
    out = tmp_path / "run"
    assert peer.main(common + ["--out", str(out)]) == 0
    uninterrupted = torch.load(out / "model.pt", weights_only=True)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["round"] == 20

    # As if the peer had died after round 29 with its last checkpoint at round 20, before its result:
    # resuming runs rounds 20 to 29 again from the checkpoint alone.
    (out / "result.json").unlink()
    assert peer.main(common + ["--out", str(out), "--resume"]) == 0
    resumed = torch.load(out / "model.pt", weights_only=True)
    for name in uninterrupted:
        assert torch.equal(uninterrupted[name], resumed[name]), name
    rounds = [r["round"] for r in read_json_lines(out / "metrics.jsonl")]
    assert rounds == list(range(30))  # rounds 20-29 of the first attempt replaced, not duplicated


def test_a_checkpoint_write_killed_midway_leaves_the_previous_one_and_resume_works(solo_topology, tmp_path):
    out = tmp_path / "run"
    common = ["--topology", str(solo_topology), "--peer", "p0", "--rounds", "40", "--checkpoint-every", "10",
              "--out", str(out), "--insecure"]
    first = LoggedProcess.peer(common + ["--checkpoint-write-delay", "5"])
    try:
        first.wait_for_line(r"writing checkpoint at round 10", timeout=60)
        line = first.wait_for_line(r"writing checkpoint at round 20", timeout=60)  # round 10's took 5 s
        # Round 20's temporary file is complete and synced; kill before it is renamed.
        first.wait_for_line(r"pausing 5.0s before putting it in place", timeout=30,
                            after=first.lines.index(line) + 1)
        first.kill(signal.SIGKILL)
        assert first.finish(timeout=30) == -signal.SIGKILL
    finally:
        first.kill()
    assert len(list(out.glob(".checkpoint.pt.*.tmp"))) == 1  # round 20's, synced but never renamed
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["round"] == 10

    second = LoggedProcess.peer(common + ["--resume"])
    assert second.finish(timeout=120) == 0, second.log()
    assert "resumed from the checkpoint of round 10" in second.log()
    assert "left by a write that was interrupted" in second.log()
    assert not list(out.glob(".checkpoint.pt.*.tmp"))
    assert json.loads((out / "result.json").read_text())["rounds_completed"] == 40
    assert [r["round"] for r in read_json_lines(out / "metrics.jsonl")] == list(range(40))


def test_resuming_another_runs_checkpoint_is_refused(solo_topology, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--topology", str(solo_topology), "--peer", "p0", "--rounds", "12", "--checkpoint-every", "5",
            "--out", str(out), "--insecure"]
    assert peer.main(base) == 0
    (out / "result.json").unlink()  # as if it had died before its result
    assert peer.main(base + ["--resume", "--model", "logreg"]) == 2
    assert "belongs to another run" in capsys.readouterr().err


def test_a_resumed_trace_keeps_one_row_per_traced_round(solo_topology, tmp_path):
    from p2ptrain.results import read_trace

    out = tmp_path / "run"
    common = ["--topology", str(solo_topology), "--peer", "p0", "--rounds", "20", "--checkpoint-every", "10",
              "--trace-every", "4", "--out", str(out), "--insecure"]
    assert peer.main(common) == 0
    first_rounds, first_rows = read_trace(out)
    (out / "result.json").unlink()  # as if it had died before its result
    assert peer.main(common + ["--resume"]) == 0
    rounds, rows = read_trace(out)
    assert rounds == first_rounds == [3, 7, 11, 15, 19]
    assert (out / "trace.f32").stat().st_size == rows.nbytes
    assert (rows == first_rows).all()


def test_a_peer_keeps_its_previous_checkpoint_and_resumes_from_it_when_asked(solo_topology, tmp_path, capsys):
    # What the launcher's --resume does when the peers' newest checkpoints differ: it names a round all kept.
    out = tmp_path / "run"
    common = ["--topology", str(solo_topology), "--peer", "p0", "--rounds", "30", "--checkpoint-every", "10",
              "--out", str(out), "--insecure"]
    assert peer.main(common) == 0
    uninterrupted = torch.load(out / "model.pt", weights_only=True)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["round"] == 20
    assert torch.load(out / "checkpoint.previous.pt", weights_only=True)["round"] == 10

    assert peer.main(common + ["--resume", "--resume-round", "15"]) == 2
    assert "--resume-round 15: " in (err := capsys.readouterr().err) and "it has 10, 20" in err
    assert peer.main(common + ["--resume", "--resume-round", "10"]) == 0
    assert "resumed from the checkpoint of round 10" in capsys.readouterr().err
    resumed = torch.load(out / "model.pt", weights_only=True)
    for name in uninterrupted:
        assert torch.equal(uninterrupted[name], resumed[name]), name
    assert [r["round"] for r in read_json_lines(out / "metrics.jsonl")] == list(range(30))


def test_a_damaged_newest_checkpoint_is_kept_aside_and_the_one_before_resumes_exactly(solo_topology, tmp_path,
                                                                                      capsys):
    out = tmp_path / "run"
    common = ["--topology", str(solo_topology), "--peer", "p0", "--rounds", "30", "--checkpoint-every", "10",
              "--out", str(out), "--insecure"]
    assert peer.main(common) == 0
    uninterrupted = torch.load(out / "model.pt", weights_only=True)
    (out / "result.json").unlink()  # as if it had died before its result
    newest = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(newest[:len(newest) // 2])  # cut short by a full disk
    assert peer.main(common + ["--resume"]) == 0
    assert "resumed from the checkpoint of round 10" in capsys.readouterr().err
    assert (out / "checkpoint.damaged.pt").read_bytes() == newest[:len(newest) // 2]  # kept, not overwritten
    resumed = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(uninterrupted[name], resumed[name]) for name in uninterrupted)

    (out / "result.json").unlink()
    (out / "checkpoint.pt").unlink()
    (out / "checkpoint.pt").mkdir()  # there, but it cannot be read: nothing says it is damaged
    assert peer.main(common + ["--resume"]) == 2
    assert "cannot read" in capsys.readouterr().err
