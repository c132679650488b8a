"""Multi-host runs without a swarm: topology files for clusters, ranks and world sizes from every
launcher's variables, restarts counted by a launcher, and run configuration files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import networkx as nx
import numpy as np
import pytest
import torch

from p2ptrain import peer, swarm
from p2ptrain.config import (LAUNCHER_RANKS, RESTART_COUNTS, ConfigError, PeerConfig, after_launcher_restart,
                             build_parser, given_options, resolve_peer_id)
from p2ptrain.peer import given_with_file
from p2ptrain.replica import resolve_config
from p2ptrain.storage import read_json_lines
from p2ptrain.topology import Topology, TopologyError, generate, load_topology
from p2ptrain.topology.__main__ import main as topology_main

from .processes import ROOT


def generated(tmp_path, *args) -> Topology:
    path = tmp_path / "generated.toml"
    assert topology_main(["generate", *args, "-o", str(path)]) == 0
    return load_topology(path)


def test_peers_are_numbered_host_by_host_with_ports_from_the_base_port_on_each(tmp_path):
    topology = generated(tmp_path, "ring", "--hosts", "10.0.0.1,10.0.0.2,node3", "--per-host", "2",
                         "--base-port", "26000")
    assert [spec.endpoint for spec in topology.peers] == [
        "tcp://10.0.0.1:26000", "tcp://10.0.0.1:26001", "tcp://10.0.0.2:26000", "tcp://10.0.0.2:26001",
        "tcp://node3:26000", "tcp://node3:26001"]
    # An address is bound as it is; a host name cannot be bound by ZeroMQ: every interface is.
    assert [spec.bind for spec in topology.peers][3:] == [
        "tcp://10.0.0.2:26001", "tcp://0.0.0.0:26000", "tcp://0.0.0.0:26001"]
    # The graph is the ring of six it would be on one host.
    np.testing.assert_array_equal(topology.weights, generate("ring", 6).weights)


def test_a_hosts_file_reads_as_scontrol_show_hostnames_prints(tmp_path):
    (tmp_path / "hosts").write_text("node01\nnode02\n\n# a comment\nnode03\n")
    topology = generated(tmp_path, "complete", "--hosts-file", str(tmp_path / "hosts"))
    assert [spec.endpoint for spec in topology.peers] == [
        "tcp://node01:25000", "tcp://node02:25000", "tcp://node03:25000"]
    assert topology.size == 3 and len(topology.edges()) == 3


def test_an_endpoint_template_names_each_peer_of_a_statefulset(tmp_path):
    topology = generated(tmp_path, "ring", "--peers", "4", "--endpoint-template", "tcp://p2p-{index}.p2p.svc:25000")
    assert [spec.endpoint for spec in topology.peers] == [f"tcp://p2p-{i}.p2p.svc:25000" for i in range(4)]
    assert {spec.bind for spec in topology.peers} == {"tcp://0.0.0.0:25000"}


@pytest.mark.parametrize("args, message", [
    (["--hosts", "a,b", "--peers", "3"], "2 hosts x 1 per host = 2 peers, but the topology has 3"),
    (["--hosts", "a,a", "--per-host", "2"], "host(s) a listed twice"),
    (["--peers", "4", "--per-host", "2"], "--per-host goes with --hosts"),
    (["--per-host", "2"], "how many peers?"),
    (["--peers", "2", "--endpoint-template", "tcp://p2p.svc:25000"], "use {index}"),
    (["--peers", "2", "--endpoint-template", "tcp://p2p-{rank}:25000"], "use {index}"),
    (["--peers", "2", "--endpoint-template", "p2p-{index}"], "write tcp://HOST:PORT"),
])
def test_placements_that_cannot_work_are_refused_with_the_fix(args, message, tmp_path, capsys):
    assert topology_main(["generate", "ring", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_hosts_file_is_refused_in_one_line(tmp_path, capsys):
    assert topology_main(["generate", "ring", "--hosts-file", str(tmp_path / "nope")]) == 2
    assert "cannot read it" in capsys.readouterr().err


def test_a_networkx_graph_becomes_a_topology_with_its_nodes_as_peers():
    graph = nx.petersen_graph()
    endpoints = [f"tcp://10.1.0.{i}:25000" for i in range(10)]
    topology = Topology.from_networkx(graph, endpoints, name="petersen")
    assert topology.ids == tuple(str(i) for i in range(10)) and topology.peer("3").endpoint == "tcp://10.1.0.3:25000"
    # Metropolis weights of a 3-regular graph: 1/4 on every edge and on the peer itself.
    expected = (nx.to_numpy_array(graph, nodelist=list(graph.nodes)) + np.eye(10)) / 4
    np.testing.assert_allclose(topology.weights, expected, rtol=0, atol=1e-15)
    # The Petersen graph's adjacency has eigenvalues 3, 1 and -2, so W = (A + I)/4 has 1, 1/2 and -1/4: rho = 1/2.
    assert topology.consensus_rate == pytest.approx(0.5, abs=1e-12)


def test_a_directed_networkx_graph_stays_directed_and_endpoints_may_be_given_by_node():
    graph = nx.DiGraph([("a", "b"), ("b", "c"), ("c", "a")])
    topology = Topology.from_networkx(graph, {n: f"tcp://127.0.0.1:{25000 + i}" for i, n in enumerate("abc")},
                                      mixing="uniform")
    assert topology.directed and topology.in_neighbours("b") == ("a",)


@pytest.mark.parametrize("graph, endpoints, message", [
    (nx.MultiGraph([(0, 1), (0, 1)]), ["tcp://h:1", "tcp://h:2"], "multigraph"),
    (nx.path_graph(3), ["tcp://h:1", "tcp://h:2"], "2 endpoints for a graph of 3 nodes"),
    (nx.path_graph(2), {0: "tcp://h:1"}, "no endpoint for node(s) 1"),
    ([(0, 1)], ["tcp://h:1", "tcp://h:2"], "takes a networkx graph"),
    (nx.Graph([(0, 1), (2, 3)]), [f"tcp://h:{i}" for i in range(1, 5)], "not connected"),
])
def test_networkx_graphs_that_cannot_be_topologies_are_refused(graph, endpoints, message):
    with pytest.raises(TopologyError, match=re.escape(message)):
        Topology.from_networkx(graph, endpoints)


# ---- ranks, world sizes and restarts from the launchers' variables ------------------------------

IDS = ("a", "b", "c", "d")


@pytest.mark.parametrize("environ, peer", [
    ({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}, "c"),  # torchrun
    ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4"}, "b"),  # Open MPI
    ({"PMI_RANK": "3", "PMI_SIZE": "4"}, "d"),  # MPICH, Intel MPI
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "4"}, "b"),  # srun
    ({"JOB_COMPLETION_INDEX": "0"}, "a"),  # a Kubernetes Indexed Job
    ({"RANK": "3"}, "d"),  # a launcher that says no world size
    # The innermost launcher wins: torchrun or mpirun inside an srun step, where SLURM_PROCID counts nodes.
    ({"RANK": "3", "WORLD_SIZE": "4", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, "d"),
    ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, "c"),
])
def test_each_launchers_rank_names_the_peer(environ, peer):
    assert resolve_peer_id("", IDS, environ=environ) == peer


@pytest.mark.parametrize("rank, size", [("RANK", "WORLD_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                                        ("PMI_RANK", "PMI_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")])
def test_a_world_size_other_than_the_topologys_fails_naming_the_variable_and_the_size(rank, size):
    with pytest.raises(ConfigError) as refused:
        resolve_peer_id("", IDS, environ={rank: "0", size: "8"})
    assert str(refused.value).startswith(f"${size}=8 processes, but the topology has 4 peers: start 4 processes")


def test_an_explicit_peer_is_not_checked_against_a_world_size():
    # In an sbatch script SLURM_NTASKS is set for the whole allocation, also for a peer started by hand.
    assert resolve_peer_id("b", IDS, environ={"SLURM_PROCID": "0", "SLURM_NTASKS": "64"}) == "b"


def test_a_rank_beyond_the_topology_and_no_rank_at_all_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"\$JOB_COMPLETION_INDEX='4' does not name a peer.*ranks 0..3"):
        resolve_peer_id("", IDS, environ={"JOB_COMPLETION_INDEX": "4"})
    with pytest.raises(ConfigError, match="pass --peer ID, or start the peer with a launcher that sets its rank"):
        resolve_peer_id("", IDS, environ={"LOCAL_RANK": "0"})


@pytest.mark.parametrize("environ, options, resumes", [
    ({"TORCHELASTIC_RESTART_COUNT": "1"}, {}, True),
    ({"SLURM_RESTART_COUNT": "2"}, {}, True),
    ({"TORCHELASTIC_RESTART_COUNT": "0", "SLURM_RESTART_COUNT": "0"}, {}, False),  # a first start
    ({}, {}, False),
    ({"TORCHELASTIC_RESTART_COUNT": "1"}, {"join": True}, False),  # a joiner joins again
    ({"TORCHELASTIC_RESTART_COUNT": "1"}, {"resume": False}, False),  # the options said so (Python API)
])
def test_a_restart_counted_by_the_launcher_resumes(environ, options, resumes):
    changed, why = after_launcher_restart(options, environ=environ)
    assert changed.get("resume", False) is resumes
    # The group restarts together: a peer without a checkpoint runs again from round 0, even one that finished.
    assert changed.get("overwrite", False) is resumes
    assert bool(why) is resumes


def test_a_restart_count_that_is_not_a_number_is_refused():
    with pytest.raises(ConfigError, match=r"\$SLURM_RESTART_COUNT='x' is not a restart count"):
        after_launcher_restart({}, environ={"SLURM_RESTART_COUNT": "x"})


def peer_command(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    launchers = {name for pair in LAUNCHER_RANKS for name in pair if name} | set(RESTART_COUNTS)
    clean = {k: v for k, v in os.environ.items() if k not in launchers}
    return subprocess.run([sys.executable, "-m", "p2ptrain.peer", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=clean | {"PYTHONPATH": str(ROOT)} | env, stdin=subprocess.DEVNULL)


def test_a_peer_under_a_launcher_of_the_wrong_size_fails_fast_in_one_line(tmp_path):
    result = peer_command("--topology", str(ROOT / "topologies" / "ring8.toml"), "--out", str(tmp_path), "--insecure",
                          env={"RANK": "1", "WORLD_SIZE": "4"})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "p2ptrain.peer: error: $WORLD_SIZE=4 processes, but the topology has 8 peers: start 8 processes (one per "
        "peer), or use a topology of 4 peers (python -m p2ptrain.topology generate KIND --hosts ... --per-host K)"]
    assert not any(tmp_path.iterdir())


def test_the_python_api_checks_the_world_size_before_opening_a_socket(monkeypatch):
    import torch

    from p2ptrain import Peer

    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    for name in ("RANK", "PMI_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=r"\$OMPI_COMM_WORLD_SIZE=2 processes, but the topology has 8 peers"):
        Peer(ROOT / "topologies" / "ring8.toml", torch.nn.Linear(2, 2), insecure=True)


def test_the_python_api_refuses_inproc_endpoints_and_zero_rounds():
    import torch

    from p2ptrain import Peer
    from p2ptrain.inprocess import local_endpoints

    with pytest.raises(ConfigError, match="no two Peers would ever hear each other. Give them ipc:// or tcp://"):
        Peer(local_endpoints(generate("ring", 3), "api"), torch.nn.Linear(2, 2), peer="p0")
    with pytest.raises(ConfigError, match="--rounds 0: run at least one round"):  # not "unbounded"
        Peer(ROOT / "topologies" / "ring8.toml", torch.nn.Linear(2, 2), peer="p0", insecure=True, rounds=0)


# ---- one run configuration file for every peer ------------------------------------------------

RUN_TOML = """
# every peer of the job reads this
topology = "topologies/ring4.toml"
rounds = 5
local-steps = 3          # the command line's spelling works too
batch_size = 16
lr_schedule = "constant"
insecure = true
"""


def given(argv: list[str], environ: dict | None = None) -> dict:
    _, explicit = given_options(build_parser, argv)
    return given_with_file(explicit, environ or {})[0]


def test_a_run_toml_sets_every_peers_options_under_the_command_line_and_over_the_tasks_defaults(tmp_path):
    (tmp_path / "mine.py").write_text("from p2ptrain.builtin_tasks import builtin_task\n"
                                      "task = builtin_task('digits')\n"
                                      "task.defaults = {'lr': 0.02, 'rounds': 33, 'batch_size': 64}\n")
    (tmp_path / "run.toml").write_text(RUN_TOML + f'task = "{tmp_path / "mine.py"}:task"\n')
    config = resolve_config(given(["--config", str(tmp_path / "run.toml"), "--batch-size", "8"]))
    assert (config.topology, config.rounds, config.local_steps, config.lr_schedule, config.insecure) == (
        "topologies/ring4.toml", 5, 3, "constant", True)  # the file's
    assert config.batch_size == 8  # the command line over the file
    assert config.lr == 0.02  # the task's default, which neither sets
    assert config.momentum == PeerConfig().momentum  # the plain default


def test_the_launcher_reads_the_same_file_and_takes_its_topology(tmp_path):
    (tmp_path / "run.toml").write_text(RUN_TOML.replace("topologies/", f"{ROOT}/topologies/")
                                       + f'out = "{tmp_path / "run"}"\n')
    config, topology, options = swarm.parse(["--config", str(tmp_path / "run.toml"), "--rounds", "7"])
    assert (topology.name, config.rounds, config.local_steps, config.batch_size) == ("ring4", 7, 3, 16)
    assert (options.out, options.insecure) == (str(tmp_path / "run"), True)  # the launcher's own, from the file
    assert config.out == ""  # each peer gets its own --out from the launcher


@pytest.mark.parametrize("text, message", [
    ("rouds = 5", "unknown option(s) rouds (did you mean rounds?)"),
    ("local_step = 2\nfoo = 1", "unknown option(s) foo, local_step (did you mean local_steps?)"),
    ('rounds = "5"', "rounds = '5' must be a whole number"),
    ("insecure = 1", "insecure = 1 must be true or false"),
    ("lr = true", "lr = True must be a number"),
    ("rounds = 5\nrounds = 6", "not valid TOML"),
    ("[peers]\nrounds = 5", "unknown option(s) peers"),
])
def test_a_run_toml_with_a_mistake_is_refused_naming_it(text, message, tmp_path):
    (tmp_path / "run.toml").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        given(["--config", str(tmp_path / "run.toml")])


def test_a_config_file_with_a_mistake_stops_the_peer_in_one_line(tmp_path):
    (tmp_path / "run.toml").write_text("algo = 'gossip'\nmomentun = 0.5\n")
    result = peer_command("--config", str(tmp_path / "run.toml"), env={})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"p2ptrain.peer: error: --config {tmp_path / 'run.toml'}: unknown option(s) momentun (did you mean "
        "momentum?); the options are those of python -m p2ptrain.peer --help, without the leading --"]


def test_a_restarted_peer_given_its_options_in_a_file_resumes(tmp_path):
    (tmp_path / "run.toml").write_text(RUN_TOML)
    assert given(["--config", str(tmp_path / "run.toml")], {"TORCHELASTIC_RESTART_COUNT": "1"})["resume"] is True
    assert "resume" not in given(["--config", str(tmp_path / "run.toml")], {"TORCHELASTIC_RESTART_COUNT": "0"})


@pytest.mark.swarm
def test_a_peer_its_launcher_restarted_resumes_over_its_earlier_outputs_instead_of_refusing(
        topology_file, tmp_path, capsys, monkeypatch):
    for name in RESTART_COUNTS:
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "p0"
    args = ["--topology", str(topology_file("ring", 1)), "--peer", "p0", "--out", str(out), "--insecure",
            "--rounds", "4", "--checkpoint-every", "2", "--startup-timeout", "0.2", "--recv-timeout", "0.1"]
    assert peer.main(args) == 0
    first = torch.load(out / "model.pt")
    assert peer.main(args) == 2  # started again by hand: an earlier run is not overwritten
    assert "already holds the outputs of a run" in capsys.readouterr().err

    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert peer.main(args) == 0
    log = capsys.readouterr().err
    assert "restart 1 ($TORCHELASTIC_RESTART_COUNT): resuming from this peer's checkpoint" in log
    assert "resumed from the checkpoint of round 2" in log  # the last one before the end
    assert [r["round"] for r in read_json_lines(out / "metrics.jsonl")] == [0, 1, 2, 3]
    again = torch.load(out / "model.pt")
    assert all(torch.equal(again[name], tensor) for name, tensor in first.items())  # resumed bit for bit

    # Without a checkpoint a restarted peer starts again from round 0, over its own earlier outputs.
    (out / "checkpoint.pt").unlink()
    assert peer.main(args) == 0
    assert f"--resume: no checkpoint in {out}; starting from round 0" in capsys.readouterr().err
    assert [r["round"] for r in read_json_lines(out / "metrics.jsonl")] == [0, 1, 2, 3]


# ---- entry points -------------------------------------------------------------------------------

@pytest.mark.swarm
def test_python_m_p2ptrain_swarm_runs_a_swarm(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "p2ptrain.swarm", str(ROOT / "topologies" / "pair.toml"), "--in-process",
         "--rounds", "20", "--out", str(tmp_path / "run"), "--log-level", "WARNING"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=os.environ | {"PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {peer["rounds_completed"] for peer in summary["peers"].values()} == {20}


@pytest.mark.parametrize("module, usage", [("p2ptrain.swarm", "usage: p2ptrain-swarm"),
                                           ("p2ptrain.experiment", "usage: p2ptrain-experiment")])
def test_the_launcher_and_the_runner_run_as_modules(module, usage):
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60,
                            cwd=ROOT, stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and result.stdout.startswith(usage)
