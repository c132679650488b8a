"""The topology experiment runner end to end (peers in one process), and the topology drawing."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from p2ptrain.experiment import main as experiment
from p2ptrain.results import read_trace
from p2ptrain.topology import dump_topology, generate
from p2ptrain.topology.__main__ import main as topology_cli


@pytest.mark.swarm
def test_a_sweep_writes_results_summary_and_plots_and_resumes(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["--topologies", "ring4,exponential4", "--algos", "gossip,admm", "--partition", "iid,dirichlet:0.5",
            "--rounds", "12", "--local-steps", "2", "--trace-every", "3", "--eval-every", "3", "--out", str(out)]
    assert experiment(argv) == 0
    printed = capsys.readouterr().out
    assert "exponential4-admm-iid-s0: skipped, ADMM needs a static undirected graph, and exponential4 is directed" \
        in printed

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    runs = {(r["topology"], r["algo"], r["partition"]) for r in rows}
    assert runs == {("ring4", "gossip", "iid"), ("ring4", "gossip", "dirichlet:0.5"), ("ring4", "admm", "iid"),
                    ("ring4", "admm", "dirichlet:0.5"), ("exponential4", "gossip", "iid"),
                    ("exponential4", "gossip", "dirichlet:0.5")}
    assert len(rows) == 6 * 12
    one_run = [r for r in rows if (r["topology"], r["algo"], r["partition"]) == ("ring4", "gossip", "iid")]
    assert [int(r["round"]) for r in one_run] == list(range(12))
    assert [r["round"] for r in one_run if r["consensus_distance"]] == ["2", "5", "8", "11"]
    assert [r["round"] for r in one_run if r["mean_accuracy"]] == ["2", "5", "8", "11"]
    assert all(r["metric"] == "test_accuracy" and r["mean_metric"] == r["mean_accuracy"] for r in rows)
    sent = [float(r["bytes_sent_per_peer"]) for r in one_run]
    assert all(b > a for a, b in zip(sent, sent[1:]))  # cumulative

    summary = (out / "summary.md").read_text()
    assert "| exponential4 | 0.333 | admm | mean | iid | 0 | n/a (ADMM needs a static undirected graph, and exponential4 " \
        "is directed) |" in summary
    for name in ("consensus.png", "accuracy_rounds.png", "accuracy_time.png", "accuracy_bytes.png", "bytes_sent.png"):
        assert (out / "plots" / name).stat().st_size > 10_000

    # The consensus column is the distance to the mean of all peers' traced parameters.
    peers = sorted((out / "runs" / "ring4-gossip-iid-s0" / "peers").iterdir())
    traces = [read_trace(p)[1][-1].astype(np.float64) for p in peers]
    mean = np.mean(traces, axis=0)
    expected = np.mean([np.linalg.norm(t - mean) for t in traces]) / np.linalg.norm(mean)
    assert float(one_run[-1]["consensus_distance"]) == pytest.approx(expected, rel=1e-9)

    # Started again on the same directory, nothing is run twice.
    marker = out / "runs" / "ring4-gossip-iid-s0" / "summary.json"
    before = marker.stat().st_mtime_ns
    assert experiment(argv) == 0
    assert "ring4-gossip-iid-s0: done earlier" in capsys.readouterr().out
    assert marker.stat().st_mtime_ns == before

    # But a run a peer of which did not finish (interrupted), or one made with other options, is made again.
    result = out / "runs" / "ring4-gossip-iid-s0" / "peers" / "p2" / "result.json"
    result.write_text(result.read_text().replace('"status": "completed"', '"status": "interrupted"'))
    assert experiment(argv) == 0
    printed = capsys.readouterr().out
    assert "ring4-gossip-iid-s0 again: the earlier one is unfinished or had other options" in printed
    assert printed.count("done earlier") == 5 and '"status": "completed"' in result.read_text()
    one = ["--topologies", "ring4", "--algos", "gossip", "--partition", "iid"]
    assert experiment(argv + one + ["--lr", "0.3"]) == 0
    assert "ring4-gossip-iid-s0 again" in capsys.readouterr().out


def test_bad_sweep_options_are_refused(tmp_path, capsys):
    assert experiment(["--topologies", "moebius8", "--out", str(tmp_path)]) == 2
    assert "KIND+PEERS" in capsys.readouterr().err
    assert experiment(["--partition", "noniid", "--out", str(tmp_path)]) == 2
    (tmp_path / "a-file").write_text("")
    assert experiment(["--topologies", "ring4", "--out", str(tmp_path / "a-file")]) == 2
    assert "cannot make the experiment directory" in capsys.readouterr().err


def test_ctrl_c_between_the_launches_says_how_to_go_on_in_one_line(tmp_path, capsys, monkeypatch):
    # Ctrl-C while a summary is read or written (outside a launch's own handling of it): no traceback.
    from p2ptrain import experiment as runner

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "write_results", interrupted)
    monkeypatch.setattr(runner, "launch", lambda *args, **kwargs: 1)  # every run fails at once
    assert experiment(["--topologies", "ring4", "--out", str(tmp_path / "sweep")]) == 130
    assert "interrupted; run it again with the same --out to go on" in capsys.readouterr().err


def test_paths_that_cannot_be_read_or_written_are_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00")
    for argv, message in [(["info", str(tmp_path)], "is a directory; pass a topology file"),
                          (["info", str(tmp_path / "binary.toml")], "is not UTF-8 text"),
                          (["generate", "ring", "--peers", "4", "-o", str(tmp_path / "no" / "x.toml")],
                           "cannot write"),
                          (["generate", "ring", "--peers", "4", "-o", str(tmp_path)], "cannot write")]:
        assert topology_cli(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("kind, n, expected", [("ring", 8, 4), ("line", 5, 4), ("complete", 6, 1), ("star", 7, 2),
                                               ("hypercube", 16, 4), ("exponential", 16, 4)])
def test_diameter(kind, n, expected):
    assert generate(kind, n).diameter == expected


def test_info_of_a_schedule_and_a_drawing(tmp_path, capsys):
    path = tmp_path / "op.toml"
    path.write_text(dump_topology(generate("one-peer-exponential", 16)))
    assert topology_cli(["info", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "a schedule of 4 rounds" in printed
    assert "rounds to shrink disagreement 1e6-fold: 4 (the exact average after one period)" in printed
    assert topology_cli(["draw", str(path), "-o", str(tmp_path / "op.png")]) == 0
    assert (tmp_path / "op.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generate_says_what_it_wrote(tmp_path, capsys):
    path = tmp_path / "ring6.toml"
    assert topology_cli(["generate", "ring", "--peers", "6", "--base-port", "26000", "-o", str(path)]) == 0
    said = capsys.readouterr().err
    assert said.startswith(f"wrote {path}: ring6, 6 peers, 6 edges, rho 0.6667")
    assert "tcp://127.0.0.1:26000 ... tcp://127.0.0.1:26005" in said


@pytest.mark.parametrize("kind, wraps", [("torus", True), ("grid", False)])
def test_a_torus_or_grid_is_drawn_on_its_lattice(kind, wraps):
    import networkx as nx

    from p2ptrain.topology.__main__ import lattice_layout

    topology = generate(kind, 16)
    graph = nx.Graph()
    graph.add_edges_from(topology.edges())
    layout = lattice_layout(graph)
    assert sorted(layout.values()) == sorted((col, -row) for row in range(4) for col in range(4))
    # Every link joins lattice neighbours, or (on a torus only) wraps around a row or column.
    spans = {abs(layout[a][0] - layout[b][0]) + abs(layout[a][1] - layout[b][1]) for a, b in graph.edges()}
    assert spans == ({1, 3} if wraps else {1})
    assert lattice_layout(nx.complete_graph(8)) is None and lattice_layout(nx.cycle_graph(8)) is None
