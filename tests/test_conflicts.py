"""Swarms whose peers disagree on who is who or on the graph, over real sockets and processes.

Two processes running as one peer id (a copied command line): the real
peer's neighbours receive two different messages for one round from that id,
log the conflict and count it, and the launcher's summary flags it. A peer
started with another topology file (lazy weights where the others use
Metropolis): every message it sends is rejected for its topology digest,
and each side's log names the file it runs with.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from p2ptrain import keys
from p2ptrain.ports import free_port_block
from p2ptrain.topology import dump_topology, load_topology, topology_digest

from .processes import LoggedProcess

pytestmark = pytest.mark.swarm


def with_bind(path: Path, peer_id: str, bind: str, out: Path) -> Path:
    """A copy of a topology file in which ``peer_id`` listens elsewhere: another host's copy of the file,
    where the same port is free. Its graph and weights, and so its digest, are the same."""
    topology = load_topology(path)
    peers = tuple(dataclasses.replace(p, bind=bind) if p.id == peer_id else p for p in topology.peers)
    out.write_text(dump_topology(dataclasses.replace(topology, peers=peers)))
    return out


def test_two_processes_running_as_one_peer_are_reported_by_its_neighbours_and_the_summary(topology_file, tmp_path):
    path = topology_file("ring", 4)
    impostor_file = with_bind(path, "p3", f"tcp://127.0.0.1:{free_port_block(1)}", tmp_path / "impostor.toml")
    assert topology_digest(load_topology(impostor_file), 0) == topology_digest(load_topology(path), 0)
    common = ["--run-id", "twins", "--insecure", "--recv-timeout", "2", "--eval-every", "1000", "--rounds", "300"]
    out = tmp_path / "run"
    launcher = LoggedProcess.launcher([str(path), "--out", str(out), "--min-compute-seconds", "0.1",
                                       "--timeout", "150", *common])
    impostor = None
    try:
        launcher.wait_for_line(r"rounds \d+-\d+/300", timeout=90)  # the swarm is training
        # The impostor starts behind and runs alone, four times faster than the swarm, so its rounds
        # cross the real p3's: some round of p3 reaches p0 and p2 from both.
        impostor = LoggedProcess.peer(["--topology", str(impostor_file), "--peer", "p3", "--out",
                                       str(tmp_path / "twin"), "--min-compute-seconds", "0.025",
                                       "--startup-timeout", "1", *common])
        assert launcher.finish(timeout=160) == 0, launcher.log()[-3000:]
        assert impostor.finish(timeout=60) == 0, impostor.log()[-3000:]
    finally:
        launcher.kill()
        if impostor is not None:
            impostor.kill()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["identity_conflicts"] == {"p3": ["p0", "p2"]}  # p3's neighbours, and only they
    for neighbour in ("p0", "p2"):
        result = json.loads((out / "peers" / neighbour / "result.json").read_text())
        assert set(result["identity_conflicts"]) == {"p3"} and result["identity_conflicts"]["p3"] >= 1
        assert summary["peers"][neighbour]["identity_conflicts"] == result["identity_conflicts"]
        log = (out / "peers" / neighbour / "peer.log").read_text()
        # Logged once, naming the id; counted after that.
        assert len(re.findall(r"identity conflict: two different messages from p3 for round \d+", log)) == 1
    # The impostor heard from nobody (its neighbours send to the real p3's endpoint), and says so.
    assert json.loads((tmp_path / "twin" / "result.json").read_text())["status"] == "isolated"
    assert "launch_swarm: warning: two processes sent as p3: p0, p2 received" in launcher.log()


def test_a_peer_started_with_lazy_weights_is_rejected_for_its_topology_and_each_log_names_its_file(
        topology_file, tmp_path):
    path = topology_file("ring", 4)
    lazy_file = tmp_path / "ring4-lazy.toml"
    text = path.read_text()
    assert text.count('mixing = "metropolis"') == 1
    lazy_file.write_text(text.replace('mixing = "metropolis"', 'mixing = "lazy"'))
    ours, theirs = topology_digest(load_topology(path), 0), topology_digest(load_topology(lazy_file), 0)
    assert ours != theirs
    keys.generate(load_topology(path), tmp_path / "keys")
    rounds = 40
    common = ["--run-id", "lazy", "--rounds", str(rounds), "--recv-timeout", "1", "--startup-timeout", "10",
              "--min-compute-seconds", "0.02", "--keys", str(tmp_path / "keys")]
    files = {"p0": path, "p1": path, "p2": path, "p3": lazy_file}
    peers = {p: LoggedProcess.peer(["--topology", str(f), "--peer", p, "--out", str(tmp_path / p), *common])
             for p, f in files.items()}
    try:
        codes = {p: process.finish(timeout=120) for p, process in peers.items()}
    finally:
        for process in peers.values():
            process.kill()
    assert codes == dict.fromkeys(files, 0), {p: peers[p].log()[-1500:] for p in peers}
    for neighbour in ("p0", "p2"):
        result = json.loads((tmp_path / neighbour / "result.json").read_text())
        rejected = result["rejected_from"].get("p3", 0)
        assert result["rejected"] == {"topology": rejected} and rejected >= 1 and "p3" not in result["accepted_from"]
        assert (f"topology digest {theirs} from 'p3' for round 0, this peer's is {ours}: 'p3' was likely started "
                f"with a different topology file") in peers[neighbour].log()
        assert f"this peer uses {path}: start every peer with the same topology file" in peers[neighbour].log()
    # The lazy peer rejects its neighbours likewise, and its log names the file to fix: its own.
    lazy = json.loads((tmp_path / "p3" / "result.json").read_text())
    assert set(lazy["rejected"]) == {"topology"} and lazy["status"] == "isolated"
    assert f"this peer uses {lazy_file}: start every peer with the same topology file" in peers["p3"].log()
    assert f"topology digest {ours} from 'p0' for round 0, this peer's is {theirs}" in peers["p3"].log()
    # p1, which p3 does not reach, never saw a foreign message.
    assert json.loads((tmp_path / "p1" / "result.json").read_text())["rejected"] == {}
