"""Many peers in one process: the same Peer code over inproc and ipc sockets, checked against the simulation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from p2ptrain.config import PeerConfig
from p2ptrain.inprocess import local_endpoints, remove_socket_directory, run_in_process
from p2ptrain.simulate import simulate
from p2ptrain.storage import read_json_lines
from p2ptrain.topology import generate, load_topology

from .processes import run_launcher

pytestmark = pytest.mark.swarm  # every test here runs peers


def assert_same_models(out, expected):
    for peer_id, state in expected.items():
        got = torch.load(out / peer_id / "model.pt", weights_only=True)
        for name, tensor in state.items():
            assert torch.equal(got[name], tensor), f"{peer_id} {name}"


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["inproc", "ipc"])
@pytest.mark.parametrize("algo, dataset", [("gossip", "digits"), ("admm", "synthetic-lstsq")])
async def test_peers_in_one_process_compute_exactly_the_lockstep_simulation(kind, algo, dataset, tmp_path, caplog):
    topology = local_endpoints(generate("torus", 9), f"t-{kind}-{algo}", kind, tmp_path)
    # ipc sockets are files other local users may reach: without keys a peer must be told it is on purpose.
    config = PeerConfig(topology="-", algo=algo, dataset=dataset, rounds=25, run_id="t", eval_every=5,
                        insecure=kind == "ipc").validate()
    codes = await run_in_process(topology, config, tmp_path / "peers")
    assert codes == {pid: 0 for pid in topology.ids}
    assert_same_models(tmp_path / "peers", simulate(config, topology))
    records = read_json_lines(tmp_path / "peers" / "p4" / "metrics.jsonl")
    assert len(records) == 25 and all(len(r["heard"]) == 4 and not r["missing"] for r in records)
    # Each peer without keys says anyone reaching its endpoint can send it messages; nobody outside the
    # process can reach an inproc endpoint, so there it says nothing.
    unsecured = [r for r in caplog.records if r.getMessage().startswith("no --keys: connections are neither")]
    assert len(unsecured) == (len(topology.ids) if kind == "ipc" else 0)


def test_the_launchers_ipc_socket_directory_is_removed_after_the_run():
    topology = local_endpoints(generate("ring", 3), "t", "ipc")  # a temporary directory of its own
    directory = Path(topology.peer("p0").bind.removeprefix("ipc://")).parent
    assert directory.is_dir() and {spec.bind for spec in topology.peers} == {
        f"ipc://{directory}/{peer_id}.sock" for peer_id in topology.ids}
    remove_socket_directory(topology)
    assert not directory.exists()
    remove_socket_directory(local_endpoints(generate("ring", 3), "t"))  # inproc: nothing to remove, no error


def test_launcher_in_process_mode_matches_the_simulation_like_process_mode(topology_file, tmp_path):
    out = tmp_path / "run"
    result = run_launcher([str(topology_file("ring", 5)), "--in-process", "--out", str(out), "--rounds", "40",
                           "--timeout", "100"], timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert all(p["exit_code"] == 0 and p["rounds_completed"] == 40 for p in summary["peers"].values())
    topology = load_topology(out / "topology.toml")
    assert topology.peer("p0").endpoint.startswith("inproc://")
    config = PeerConfig.from_dict(json.loads((out / "peers" / "p0" / "config.json").read_text())["config"])
    assert_same_models(out / "peers", simulate(config, topology))
    assert "p3 INFO finished 40 rounds" in (out / "peers.log").read_text()
