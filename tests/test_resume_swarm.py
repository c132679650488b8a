"""The launcher's --resume: a swarm whose launcher was SIGKILLed continues, every peer from one common round,
and ends exactly where the lockstep simulation of the uninterrupted run does."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from p2ptrain.config import PeerConfig
from p2ptrain.simulate import simulate
from p2ptrain.storage import read_json_lines
from p2ptrain.topology import load_topology

from .processes import LoggedProcess, alive, poll, run_launcher

pytestmark = pytest.mark.swarm

ROUNDS = 60


def rounds_done(out: Path, peer_ids) -> list[int]:
    return [len(read_json_lines(out / "peers" / p / "metrics.jsonl")) for p in peer_ids]


def test_a_swarm_whose_launcher_was_sigkilled_resumes_from_one_round_and_ends_as_uninterrupted(topology_file,
                                                                                               tmp_path):
    topology_path = topology_file("ring", 4)
    ids = load_topology(topology_path).ids
    out = tmp_path / "run"
    # Rounds padded to 50 ms, so that the launcher dies mid-run; checkpoints every 5 rounds.
    launcher = LoggedProcess.launcher([str(topology_path), "--out", str(out), "--rounds", str(ROUNDS),
                                       "--checkpoint-every", "5", "--min-compute-seconds", "0.05",
                                       "--eval-every", "20"])
    pids: dict[str, int] = {}
    try:
        assert poll(lambda: out.joinpath("launch.json").exists() and min(rounds_done(out, ids)) >= 20, timeout=120)
        pids = json.loads((out / "launch.json").read_text())["pids"]
        launcher.kill(signal.SIGKILL)
        launcher.finish(timeout=10)
        assert poll(lambda: not any(alive(pid) for pid in pids.values()), timeout=30)
    finally:
        launcher.kill()
        for pid in pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    reached = rounds_done(out, ids)
    assert max(reached) < ROUNDS and not any((out / "peers" / p / "result.json").exists() for p in ids)
    assert not (out / "summary.json").exists()

    started = time.time()
    result = run_launcher(["--resume", str(out), "--timeout", "150"], timeout=170)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    resumed = summary["resumed"]
    common = resumed["common_round"]
    assert common is not None and 15 <= common <= min(reached)  # at most two checkpoint intervals lost
    assert f"every peer from the checkpoint of round {common}" in result.stdout
    assert resumed["from_round"] == {p: common for p in ids} and resumed["finished"] == resumed["joining"] == []
    (interrupted,) = resumed["interrupted_launches"]
    assert interrupted["pids"] == pids and interrupted["started_unix_time"] < started
    for peer_id, peer in summary["peers"].items():
        assert (peer["rounds_completed"], peer["exit_code"], peer["status"]) == (ROUNDS, 0, "completed"), peer_id
        log = (out / "peers" / peer_id / "peer.log").read_text()
        assert f"resumed from the checkpoint of round {common}" in log
        assert [r["round"] for r in read_json_lines(out / "peers" / peer_id / "metrics.jsonl")] == list(range(ROUNDS))

    # The oracle: with every message on time a synchronous swarm is a deterministic computation, and the
    # lockstep simulation of the uninterrupted run gives its models.
    config = PeerConfig.from_dict(json.loads((out / "peers" / "p0" / "config.json").read_text())["config"])
    assert (config.resume, config.resume_round) == (True, common)
    expected = simulate(config.replace(resume=False, resume_round=-1), load_topology(out / "topology.toml"))
    for peer_id, state in expected.items():
        got = torch.load(out / "peers" / peer_id / "model.pt", weights_only=True)
        for name, tensor in state.items():
            torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6)
