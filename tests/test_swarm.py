"""Real swarms: separate peer processes over TCP loopback, checked against a lockstep simulation."""

from __future__ import annotations

import json
import os
import re
import signal

import msgpack
import numpy as np
import pytest
import torch
import zmq

from p2ptrain.config import PeerConfig
from p2ptrain.data import load_dataset
from p2ptrain.simulate import simulate
from p2ptrain.storage import read_json_lines
from p2ptrain.topology import load_topology

from .processes import LoggedProcess, run_launcher

pytestmark = pytest.mark.swarm


def test_four_peer_swarm_trains_and_ends_exactly_where_the_simulation_does(topology_file, tmp_path):
    topology_path = topology_file("ring", 4)
    out = tmp_path / "run"
    result = run_launcher([str(topology_path), "--out", str(out), "--rounds", "60", "--eval-every", "20",
                           "--timeout", "100"], timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["topology"] == "ring4" and summary["algo"] == "gossip"
    assert set(summary["peers"]) == {"p0", "p1", "p2", "p3"}
    for peer in summary["peers"].values():
        assert peer["rounds_completed"] == 60 and peer["exit_code"] == 0
        assert peer["test_accuracy"] >= 0.9
    assert summary["consensus_distance"] <= 1e-2
    assert summary["wall_seconds"] > 0

    # The oracle: with every message on time, a synchronous swarm is a deterministic
    # computation, and the lockstep simulation of it must give the same models.
    config = PeerConfig.from_dict(json.loads((out / "peers" / "p0" / "config.json").read_text())["config"])
    expected = simulate(config, load_topology(out / "topology.toml"))
    for peer_id, state in expected.items():
        got = torch.load(out / "peers" / peer_id / "model.pt", weights_only=True)
        for name, tensor in state.items():
            torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6)

    records = read_json_lines(out / "peers" / "p1" / "metrics.jsonl")
    assert [r["round"] for r in records] == list(range(60))
    assert all(set(r["heard"]) == {"p0", "p2"} and not r["missing"] for r in records)
    # Every round p1 sends one message to each of its two neighbours and gets one from each;
    # all messages are the same size, and none was lost.
    message_bytes = records[0]["bytes_sent"] // 2
    assert message_bytes > 4 * sum(p.numel() for p in expected["p1"].values())
    assert sum(r["bytes_sent"] for r in records) == sum(r["bytes_received"] for r in records) == 60 * 2 * message_bytes
    assert [r["round"] for r in records if "test_accuracy" in r] == [19, 39, 59]


def test_a_peer_whose_neighbour_is_killed_logs_it_and_finishes_its_rounds(topology_file, tmp_path):
    topology_path = topology_file("complete", 2)
    common = ["--topology", str(topology_path), "--rounds", "300", "--recv-timeout", "1", "--log-every", "10",
              "--insecure"]
    p0 = LoggedProcess.peer(common + ["--peer", "p0", "--out", str(tmp_path / "p0")])
    p1 = LoggedProcess.peer(common + ["--peer", "p1", "--out", str(tmp_path / "p1")])
    try:
        p1.wait_for_line(r"round 20/300", timeout=60)
        p1.kill(signal.SIGKILL)
        assert p0.finish(timeout=60) == 0, p0.log()
    finally:
        p0.kill()
        p1.kill()
        p1.finish(timeout=10)
    assert "no parameters from p1 within 1.0s; going on without it" in p0.log()
    records = read_json_lines(tmp_path / "p0" / "metrics.jsonl")
    assert len(records) == 300
    lost = [r for r in records if r["missing"] == ["p1"]]
    assert lost and lost[-1]["round"] == 299  # p1 never came back
    # The first round without p1 waits out the deadline; after that p1 is suspected
    # and no round waits for it again, so the rest run at full speed.
    assert 0.9 <= lost[0]["wait_seconds"] <= 1.5
    assert sum(r["wait_seconds"] for r in lost[1:]) < 1.0
    result = json.loads((tmp_path / "p0" / "result.json").read_text())
    assert result["status"] == "completed" and result["rounds_completed"] == 300


def test_peers_from_rank_variables_reject_garbage_and_stop_cleanly_on_sigterm(topology_file, tmp_path):
    topology_path = topology_file("complete", 2)
    topology = load_topology(topology_path)
    # Without keys, on purpose: the garbage below comes from a stranger a secured peer would not even admit.
    common = ["--topology", str(topology_path), "--rounds", "1000000", "--log-every", "50", "--eval-every", "1000",
              "--insecure"]
    p0 = LoggedProcess.peer(common + ["--out", str(tmp_path / "p0")], env={"RANK": "0"})
    p1 = LoggedProcess.peer(common + ["--out", str(tmp_path / "p1")], env={"SLURM_PROCID": "1"})
    context = zmq.Context()
    attacker = context.socket(zmq.PUSH)
    attacker.setsockopt(zmq.LINGER, 0)
    try:
        p0.wait_for_line(r"round 50/", timeout=60)
        attacker.connect(topology.peer("p0").endpoint)
        header = {"version": 1, "kind": "params", "run_id": "complete2-gossip-s0", "round": 10**9,
                  "fingerprint": "0" * 16, "tensors": []}
        attacker.send_multipart([b"\xc1 not msgpack"])
        attacker.send_multipart([msgpack.packb(header | {"sender": "intruder"})])
        attacker.send_multipart([msgpack.packb(header | {"sender": "p1"})])
        p0.wait_for_line(r"rejected message #3 from unauthenticated \(fingerprint\)", timeout=30)
        p0.wait_for_line(r"round \d+/", timeout=30)  # still training after the garbage
        p0.kill(signal.SIGTERM)
        p1.kill(signal.SIGTERM)
        assert p0.finish(timeout=30) == 128 + signal.SIGTERM
        assert p1.finish(timeout=30) == 128 + signal.SIGTERM
    finally:
        attacker.close()
        context.term()
        p0.kill()
        p1.kill()
    # Without --keys the sender cannot be known: the log says so instead of trusting the header.
    assert "rejected message #1 from unauthenticated (malformed_header)" in p0.log()
    assert "rejected message #2 from unauthenticated (unknown_sender)" in p0.log()
    for peer_id in ("p0", "p1"):
        config = json.loads((tmp_path / peer_id / "config.json").read_text())
        assert config["config"]["peer"] == peer_id
        result = json.loads((tmp_path / peer_id / "result.json").read_text())
        assert result["status"] == "interrupted"
        assert 50 <= result["rounds_completed"] < 1000000
        assert torch.load(tmp_path / peer_id / "model.pt", weights_only=True)
    rejected = json.loads((tmp_path / "p0" / "result.json").read_text())["rejected"]
    assert rejected == {"malformed_header": 1, "unknown_sender": 1, "fingerprint": 1}


def test_ctrl_c_on_the_launcher_stops_every_peer_and_still_writes_a_summary(topology_file, tmp_path):
    out = tmp_path / "run"
    launcher = LoggedProcess.launcher([str(topology_file("ring", 3)), "--out", str(out), "--rounds", "1000000",
                                       "--eval-every", "1000"])
    try:
        launcher.wait_for_line(r"rounds [1-9]\d*-", timeout=60)  # every peer is past round 0
        launcher.kill(signal.SIGINT)
        assert launcher.finish(timeout=60) == 128 + signal.SIGINT
    finally:
        launcher.kill()
    pids = json.loads((out / "launch.json").read_text())["pids"]
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    summary = json.loads((out / "summary.json").read_text())
    for peer in summary["peers"].values():
        assert peer["status"] == "interrupted" and peer["exit_code"] == 128 + signal.SIGTERM
        assert peer["rounds_completed"] >= 1
    assert "stopping every peer" in launcher.log()


def test_admm_swarm_reaches_least_squares_of_the_stacked_data(topology_file, tmp_path):
    out = tmp_path / "run"
    result = run_launcher([str(topology_file("ring", 4)), "--out", str(out), "--algo", "admm",
                           "--dataset", "synthetic-lstsq", "--rounds", "300", "--timeout", "100"], timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["max_rel_error_to_optimum"] <= 1e-8
    reference = torch.load(out / "reference.pt", weights_only=True)
    stacked = load_dataset("synthetic-lstsq", 4)
    expected, *_ = np.linalg.lstsq(stacked.x_train, stacked.y_train, rcond=None)
    np.testing.assert_allclose(reference.numpy(), expected, rtol=1e-12)
    for peer_id in summary["peers"]:
        x = torch.load(out / "peers" / peer_id / "model.pt", weights_only=True)["x"].numpy()
        assert np.linalg.norm(x - expected) / np.linalg.norm(expected) <= 1e-8
        records = read_json_lines(out / "peers" / peer_id / "metrics.jsonl")
        assert records[-1]["rel_error"] <= 1e-8 and records[-1]["primal_residual"] <= 1e-6
        duals = torch.load(out / "peers" / peer_id / "algorithm.pt", weights_only=True)
        assert set(duals["edge_dual"]) == set(load_topology(out / "topology.toml").in_neighbours(peer_id))


def test_a_diverging_peer_stops_with_exit_code_3_and_names_the_cause(topology_file, tmp_path):
    topology_path = topology_file("complete", 2)
    common = ["--topology", str(topology_path), "--algo", "admm", "--admm-solver", "inexact", "--local-steps", "5",
              "--lr", "50", "--admm-penalty", "1", "--lr-schedule", "constant", "--rounds", "200", "--insecure"]
    peers = [LoggedProcess.peer(common + ["--peer", p, "--out", str(tmp_path / p)]) for p in ("p0", "p1")]
    try:
        codes = [p.finish(timeout=60) for p in peers]
    finally:
        for p in peers:
            p.kill()
    assert codes == [3, 3]
    for p, peer_id in zip(peers, ("p0", "p1")):
        assert "holds NaN or Inf; the ADMM penalty (--admm-penalty) is probably too small" in p.log()
        result = json.loads((tmp_path / peer_id / "result.json").read_text())
        assert result["status"] == "diverged" and result["rounds_completed"] < 200


def test_a_time_varying_swarm_follows_its_schedule_and_the_simulation(topology_file, tmp_path):
    out = tmp_path / "run"
    result = run_launcher([str(topology_file("one-peer-exponential", 4)), "--out", str(out), "--rounds", "30",
                           "--timeout", "100"], timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    topology = load_topology(out / "topology.toml")
    config = PeerConfig.from_dict(json.loads((out / "peers" / "p0" / "config.json").read_text())["config"])
    for peer_id, state in simulate(config, topology).items():
        got = torch.load(out / "peers" / peer_id / "model.pt", weights_only=True)
        for name, tensor in state.items():
            assert torch.equal(got[name], tensor)
    records = read_json_lines(out / "peers" / "p0" / "metrics.jsonl")
    # Round r: p0 hears from p0 - 2^(r mod 2) only: p3, then p2, then p3 again...
    assert [r["heard"] for r in records[:4]] == [["p3"], ["p2"], ["p3"], ["p2"]]


def test_a_peer_killed_and_restarted_by_the_launcher_resumes_and_every_peer_finishes(topology_file, tmp_path):
    out = tmp_path / "run"
    # Rounds long enough (40 local steps) that the others are still running when p1 is back.
    result = run_launcher([str(topology_file("ring", 4)), "--out", str(out), "--rounds", "400", "--local-steps", "40",
                           "--checkpoint-every", "5", "--recv-timeout", "1", "--kill", "p1@20",
                           "--restart", "p1@+1", "--timeout", "150"], timeout=160)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    kill, restart = summary["faults"]
    assert (kill["peer"], kill["event"]) == ("p1", "kill") and kill["round"] >= 20
    assert (restart["event"], restart["peer"]) == ("restart", "p1") and restart["time"] >= kill["time"] + 1
    for peer in summary["peers"].values():
        assert peer["exit_code"] == 0 and peer["rounds_completed"] == 400
    assert summary["consensus_distance"] <= 1e-2  # p1 caught up and mixed with the others again
    log = (out / "peers" / "p1" / "peer.log").read_text()
    resumed = int(re.search(r"resumed from the checkpoint of round (\d+)", log)[1])
    assert resumed >= kill["round"] - 5  # at most one checkpoint interval lost
    records = read_json_lines(out / "peers" / "p1" / "metrics.jsonl")
    rounds = [r["round"] for r in records]
    assert rounds[0] == 0 and rounds[-1] == 399 and rounds == sorted(set(rounds))
    # Back more than --catch-up rounds behind its neighbours, it took a neighbour's state rather than run
    # the rounds it missed alone: the rounds it skipped are the ones a state answer moved it past.
    for before, after in [(a, b) for a, b in zip(rounds, rounds[1:]) if b != a + 1]:
        assert f"continuing from round {after} instead of {before + 1}" in log
    assert records[-1]["heard"] == ["p0", "p2"]
    # Its neighbours noticed it was gone and heard from it again.
    neighbour_log = (out / "peers" / "p0" / "peer.log").read_text()
    assert "no parameters from p1" in neighbour_log and "heard from p1 again" in neighbour_log
