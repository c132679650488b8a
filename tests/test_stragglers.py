"""Slow, paused and late peers in real swarms: asynchronous gossip, deadlines, and joining a running swarm.

Rounds are padded to 20 ms of compute (--min-compute-seconds) so that a pause
of a second or two spans many of the neighbours' rounds. How long a round
waits is checked exactly, on a clock the test moves, in test_peer.py; these
runs show the same rules end to end.
"""

from __future__ import annotations

import json

import pytest

from p2ptrain.storage import read_json_lines

from .processes import run_launcher

pytestmark = pytest.mark.swarm

PAUSE_SECONDS = 2.0
RECV_TIMEOUT = 1.5


def run_with_a_pause(topology_file, tmp_path, mode: str) -> tuple[dict, tuple[float, float]]:
    out = tmp_path / "run"
    result = run_launcher([str(topology_file("ring", 4)), "--out", str(out), "--mode", mode, "--rounds", "300",
                           "--min-compute-seconds", "0.02", "--recv-timeout", str(RECV_TIMEOUT),
                           "--pause", f"p1@40:{PAUSE_SECONDS}", "--timeout", "100"], timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    pause, resume = (summary["started_unix_time"] + event["time"] for event in summary["faults"])
    assert resume - pause >= PAUSE_SECONDS
    for peer in summary["peers"].values():
        assert peer["exit_code"] == 0 and peer["rounds_completed"] == 300
    assert summary["consensus_distance"] <= 1e-2  # the paused peer mixes with the others again
    return summary, (pause, resume)


def rounds_between(out, peer_id: str, start: float, end: float) -> list[dict]:
    return [r for r in read_json_lines(out / "peers" / peer_id / "metrics.jsonl") if start <= r["unix_time"] < end]


def test_async_neighbours_of_a_paused_peer_never_wait_for_it(topology_file, tmp_path):
    summary, (pause, resume) = run_with_a_pause(topology_file, tmp_path, "async")
    out = tmp_path / "run"
    for neighbour in ("p0", "p2"):
        records = read_json_lines(out / "peers" / neighbour / "metrics.jsonl")
        during = rounds_between(out, neighbour, pause, resume)
        # Rounds went on while p1 was stopped (100 at full speed); its parameters aged out of the mix.
        assert len(during) >= 10
        assert during[-1]["staleness"].get("p1") is None
        assert records[-1]["staleness"].keys() == {"p1", "p3"}  # both neighbours in the mix again
    # Back from the pause, p1 was far behind its neighbours and jumped to their round.
    assert "jumping to round" in (out / "peers" / "p1" / "peer.log").read_text()


def test_sync_neighbours_of_a_paused_peer_wait_one_deadline_then_go_on(topology_file, tmp_path):
    summary, (pause, resume) = run_with_a_pause(topology_file, tmp_path, "sync")
    out = tmp_path / "run"
    for neighbour in ("p0", "p2"):
        records = read_json_lines(out / "peers" / neighbour / "metrics.jsonl")
        # Rounds went on without p1 while it was stopped: after one deadline, nobody waited for it.
        assert [r for r in records if "p1" in r["missing"]]
        assert len(rounds_between(out, neighbour, pause, resume)) >= 5
        assert records[-1]["missing"] == []
        # One round waited for p1 until its deadline, then none: not while it was stopped, nor while it
        # caught up (it took a neighbour's state; its stale messages did not make anyone wait for it).
        assert len([r for r in records if "p1" in r["timed_out"]]) == 1
    assert "caught up: took the state of" in (out / "peers" / "p1" / "peer.log").read_text()


def test_a_new_peer_joins_a_running_swarm_with_a_neighbours_state(topology_file, tmp_path):
    out = tmp_path / "run"
    result = run_launcher([str(topology_file("ring", 4)), "--out", str(out), "--rounds", "700",
                           "--min-compute-seconds", "0.02", "--recv-timeout", "1", "--eval-every", "1",
                           "--join", "p3@20", "--timeout", "100"], timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    joined = summary["peers"]["p3"]
    assert joined["exit_code"] == 0 and joined["rounds_completed"] == 700
    assert joined["start_round"] >= 20
    log = (out / "peers" / "p3" / "peer.log").read_text()
    assert f"continuing from round {joined['start_round']}" in log
    # Its first evaluation, after one round of its own, is already the swarm's accuracy at that round.
    first = read_json_lines(out / "peers" / "p3" / "metrics.jsonl")[0]
    assert first["round"] == joined["start_round"]
    swarm = [r["test_accuracy"] for peer in ("p0", "p1", "p2")
             for r in read_json_lines(out / "peers" / peer / "metrics.jsonl") if r["round"] == first["round"]]
    assert len(swarm) == 3 and abs(first["test_accuracy"] - sum(swarm) / 3) <= 0.02
    assert summary["consensus_distance"] <= 1e-2
    # launch.json names every process the launch started, the latecomer's too (a resume reads it).
    assert set(json.loads((out / "launch.json").read_text())["pids"]) == {"p0", "p1", "p2", "p3"}
