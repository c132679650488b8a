"""torchrun as the launcher of a swarm: ranks from $RANK, and a worker SIGKILLed mid-run restarted by torchrun.

torchrun (torch.distributed.run) restarts its whole group of workers when one fails, with
$TORCHELASTIC_RESTART_COUNT = 1; each peer then resumes from its own checkpoint, and every one of them
finishes. The kill waits for the peer's progress line, never for a clock.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from p2ptrain.config import LAUNCHER_RANKS, RESTART_COUNTS
from p2ptrain.keys import generate as generate_keys
from p2ptrain.ports import free_port_block
from p2ptrain.results import consensus_distance, load_model
from p2ptrain.storage import read_json_lines
from p2ptrain.topology import dump_topology, generate

from .processes import ROOT, LoggedProcess

# Four workers importing torch, twice (before and after the restart), on a machine others share.
pytestmark = [pytest.mark.swarm, pytest.mark.timeout(400)]

ROUNDS = 100
KILL_AT = 30  # p1 is SIGKILLed once it has logged this round
CHECKPOINT_EVERY = 10


def workers_of(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the worker processes torchrun started (its children, by their $RANK)."""
    workers = {}
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent != launcher_pid:
                continue
            environ = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except (OSError, ValueError, IndexError):
            continue  # not a process, or one that ended meanwhile
        if "RANK" in environ:
            workers[int(environ["RANK"])] = int(entry.name)
    return workers


def test_a_worker_killed_mid_run_is_restarted_by_torchrun_and_every_peer_finishes(tmp_path):
    topology = generate("ring", 4, base_port=free_port_block(4))
    (tmp_path / "ring4.toml").write_text(dump_topology(topology))
    generate_keys(topology, tmp_path / "keys")
    # Nothing of the test's own environment may pass for a launcher's variable (set to nothing: unset).
    launchers = {name for pair in LAUNCHER_RANKS for name in pair if name} | set(RESTART_COUNTS) | {"LOCAL_RANK"}
    env = {name: "" for name in launchers if name in os.environ}
    torchrun = LoggedProcess(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4", "--max_restarts", "1",
         "-m", "p2ptrain.peer", "--topology", "ring4.toml", "--keys", "keys", "--rounds", str(ROUNDS),
         "--checkpoint-every", str(CHECKPOINT_EVERY), "--log-every", "10", "--min-compute-seconds", "0.05"],
        env=env | {"PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    try:
        torchrun.wait_for_line(rf"p1 INFO round {KILL_AT}/{ROUNDS} ", timeout=240)
        workers = workers_of(torchrun.process.pid)
        assert sorted(workers) == [0, 1, 2, 3], workers
        os.kill(workers[1], 9)
        code = torchrun.finish(timeout=300)
    finally:
        torchrun.kill()
    log = torchrun.log()
    assert code == 0, log[-3000:]

    # Every worker of the second attempt knew it was a restart and resumed from its own checkpoint.
    assert log.count("restart 1 ($TORCHELASTIC_RESTART_COUNT): resuming") == 4, log[-3000:]
    resumed = {peer_id: int(line.rsplit(" ", 1)[1]) for line in torchrun.lines
               if " INFO resumed from the checkpoint of round " in line
               for peer_id in [line.split()[1]]}
    assert set(resumed) == {"p0", "p1", "p2", "p3"}, log[-3000:]
    assert CHECKPOINT_EVERY <= resumed["p1"] <= KILL_AT  # the one killed: its last checkpoint before the kill
    assert all(rounds % CHECKPOINT_EVERY == 0 for rounds in resumed.values())

    out = tmp_path / "runs" / "ring4-gossip-s0"  # the peers' default --out: runs/RUN_ID/PEER
    models = []
    for peer_id in ("p0", "p1", "p2", "p3"):
        records = read_json_lines(out / peer_id / "metrics.jsonl")
        # Each round once: the lines of rounds run again after the checkpoint were dropped.
        assert [r["round"] for r in records] == list(range(ROUNDS)), peer_id
        assert records[-1]["test_accuracy"] >= 0.9, (peer_id, records[-1]["test_accuracy"])
        models.append(load_model(out / peer_id))
    consensus = consensus_distance(models)
    assert consensus <= 1e-2
    print(f"\ntorchrun restart: p1 killed at round {KILL_AT}, resumed from rounds {resumed}; final accuracy "
          f"{[round(read_json_lines(out / p / 'metrics.jsonl')[-1]['test_accuracy'], 4) for p in resumed]}; "
          f"consensus distance {consensus:.3e}")
