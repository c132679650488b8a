"""Command lines: bad input is refused before anything starts, with a message that says what to do."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from p2ptrain import peer, swarm
from p2ptrain.config import ConfigError, PeerConfig, build_parser, given_options, resolve_peer_id
from p2ptrain.ports import free_port_block
from p2ptrain.replica import resolve_config
from p2ptrain.rundir import RunDir
from p2ptrain.topology import generate

from .processes import ROOT

RING8 = str(ROOT / "topologies" / "ring8.toml")
NOBODY = 65534


def test_peer_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        peer.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ["--topology", "--peer", "--rounds", "--local-steps", "--lr", "--batch-size", "--algo",
                   "--dataset", "--partition", "--model", "--seed", "--out", "--recv-timeout", "--log-level"]:
        assert option in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--partition", "dirichlet:-1"], "dirichlet:ALPHA"),
        (["--rounds", "0"], "run at least one round"),
        (["--lr", "-0.1"], "use a positive learning rate"),
        (["--recv-timeout", "0"], "must be > 0 seconds"),
        (["--peer", "p9"], "peer 'p9' is not in topology 'ring8'"),
        (["--mode", "async", "--algo", "admm"], "--mode async works with --algo gossip only"),
        (["--join", "--algo", "admm"], "--join works with --algo gossip only"),
        (["--join", "--resume"], "--join and --resume exclude each other"),
        (["--absent", "p1,q9"], "--absent p1,q9: q9 not in the topology"),
        (["--seed", "-1"], "--seed -1: a seed is 0 or more"),
    ],
)
def test_peer_refuses_bad_options_with_exit_code_2(args, message, capsys, tmp_path):
    code = peer.main(["--topology", RING8, "--peer", "p0", "--out", str(tmp_path), "--insecure", *args])
    assert code == 2
    assert message in capsys.readouterr().err


def peer_process(*args: str, importtime: bool = False) -> subprocess.CompletedProcess:
    """python -m p2ptrain.peer ARGS, to its end; with ``importtime`` standard error lists every module imported."""
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "p2ptrain.peer", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize("args", [["--help"], ["--topology", RING8, "--peer", "p9"],
                                  ["--topology", RING8, "--peer", "p0", "--rounds", "0"],
                                  ["--topology", RING8, "--peer", "p0", "--absent", "q9"],
                                  ["--topology", RING8, "--peer", "p0"]])  # no --keys, no --insecure
def test_help_and_refused_options_never_load_torch(args):
    result = peer_process(*args, importtime=True)
    assert result.returncode == (0 if args == ["--help"] else 2), result.stderr[-2000:]
    imported = [line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert "p2ptrain.config" in imported
    assert not [module for module in imported if module.split(".")[0] == "torch"]


def test_a_peer_without_keys_refuses_to_start_unless_told_insecure_and_says_how_to_make_keys(tmp_path):
    out = tmp_path / "p0"
    result = peer_process("--topology", RING8, "--peer", "p0", "--out", str(out))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()  # no traceback
    assert line.startswith("p2ptrain.peer: error: no --keys: ")
    assert f"python -m p2ptrain.keys generate --topology {RING8} --dir KEYS" in line and "--insecure" in line
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_peer_stopped_before_it_runs_exits_as_a_stopped_peer_does(signum):
    # Stopped while it still imports torch (here: as the command line is read), it exits 128 + the signal, as
    # a running peer does, not killed by the signal (-15) nor with a KeyboardInterrupt traceback.
    code = ("import os, signal, sys\n"
            "from p2ptrain import peer\n"
            f"peer._main = lambda argv: (os.kill(os.getpid(), {int(signum)}), signal.pause())\n"
            "sys.exit(peer.main([]))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (result.returncode, result.stderr) == (128 + signum, "")


def test_a_python_api_peer_without_keys_raises_the_same_refusal(tmp_path):
    import torch

    from p2ptrain import Peer

    with pytest.raises(ConfigError, match=r"no --keys: .*\(in the Python API: keys=KEYS\).*insecure=True") as refused:
        Peer(RING8, torch.nn.Linear(2, 1), peer="p0", out=str(tmp_path / "p0"))
    assert not (tmp_path / "p0").exists()
    # The API holds the topology by its name, which is no file to pass: the advice names none.
    assert "keys generate --topology TOPOLOGY_FILE --dir KEYS" in str(refused.value)


@pytest.fixture
def read_only_directory(tmp_path):
    path = tmp_path / "read-only"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    # Modes do not stop root; an immutable directory does.
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i: no directory is read-only")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("where", ["under a regular file", "in a read-only directory"])
def test_an_out_that_cannot_be_written_is_refused_in_one_line(where, tmp_path, request):
    if where == "under a regular file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "run"
    else:
        out = request.getfixturevalue("read_only_directory") / "run"
    result = peer_process("--topology", RING8, "--peer", "p0", "--out", str(out), "--insecure")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()  # no traceback
    assert line.startswith(f"p2ptrain.peer: error: --out {out}: ")


@pytest.mark.swarm
def test_a_peer_that_hears_from_no_neighbour_says_so_and_reports_itself_isolated(topology_file, tmp_path, capsys):
    out = tmp_path / "p0"
    code = peer.main(["--topology", str(topology_file("ring", 3)), "--peer", "p0", "--out", str(out),
                      "--rounds", "2", "--startup-timeout", "0.2", "--recv-timeout", "0.1", "--insecure"])
    assert code == 0  # it ran every round: not a failure, but worth a look
    assert json.loads((out / "result.json").read_text())["status"] == "isolated"
    assert "heard from no neighbour in the whole run" in capsys.readouterr().err


def test_peer_id_comes_from_rank_then_slurm_procid():
    ids = ("a", "b", "c")
    assert resolve_peer_id("b", ids, environ={"RANK": "0"}) == "b"
    assert resolve_peer_id("", ids, environ={"RANK": "2"}) == "c"
    assert resolve_peer_id("", ids, environ={"SLURM_PROCID": "1"}) == "b"
    with pytest.raises(ConfigError, match="ranks 0..2"):
        resolve_peer_id("", ids, environ={"RANK": "3"})
    with pytest.raises(ConfigError, match="pass --peer ID, or start the peer with a launcher that sets its rank"):
        resolve_peer_id("", ids, environ={})


def test_peer_will_not_overwrite_an_earlier_run(topology_file, tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"round": 0}\n')
    # Free ports: the peer binds before it looks at its files, and a swarm running beside the tests
    # may hold the ports of topologies/ring8.toml.
    code = peer.main(["--topology", str(topology_file("ring", 3)), "--peer", "p0", "--out", str(tmp_path),
                      "--insecure"])
    assert code == 2
    # No checkpoint there: --resume could only start again from round 0, so it is not offered.
    assert "pass another --out, or --overwrite to replace it" in capsys.readouterr().err
    assert (tmp_path / "metrics.jsonl").read_text() == '{"round": 0}\n'


def test_launcher_reports_a_missing_topology(tmp_path, capsys):
    assert swarm.main([str(tmp_path / "nope.toml"), "--out", str(tmp_path / "run")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_launcher_names_a_taken_port_and_the_way_around_it(topology_file, tmp_path, capsys):
    path = topology_file("ring", 3)
    taken = int(path.read_text().split("tcp://127.0.0.1:")[2].split('"')[0])  # p1's port
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        assert swarm.main([str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"port {taken} for peer p1" in err and "--base-port" in err
    assert not (tmp_path / "run").exists()


def test_task_arguments_naming_files_here_are_made_absolute_for_peers_that_run_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("text")
    assert swarm.portable_task_args("layers=2,text=corpus.txt,width=1e3,seed_text=not a file") == (
        f"layers=2,text={tmp_path / 'corpus.txt'},width=1e3,seed_text=not a file")
    assert swarm.portable_task_args("") == ""


def test_launcher_refuses_a_centralized_baseline_of_data_made_for_the_number_of_peers(topology_file, tmp_path,
                                                                                      capsys):
    assert swarm.main([str(topology_file("ring", 3)), "--dataset", "synthetic-lstsq", "--centralized", "--out",
                       str(tmp_path / "run")]) == 2
    assert "--centralized: synthetic-lstsq is generated for the number of peers" in capsys.readouterr().err


def test_launcher_overwrite_leaves_nothing_of_the_earlier_run_that_a_resume_would_read(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    (run_dir.peers / "p0").mkdir(parents=True)
    earlier = (run_dir.summary, run_dir.reference, run_dir.peers_log, run_dir.launch)
    for path in earlier:
        path.write_text("of the earlier run")
    (tmp_path / "run" / "notes.txt").write_text("the user's")
    claimed = swarm.claim_run_dir(swarm.LaunchOptions(out=str(run_dir.path), overwrite=True), generate("ring", 3),
                                  PeerConfig(topology="-"))
    assert claimed == run_dir and not run_dir.peers.exists() and not any(path.exists() for path in earlier)
    assert (tmp_path / "run" / "notes.txt").read_text() == "the user's"  # only what a run writes goes


@pytest.mark.parametrize("options, message", [
    (["--fragments", "100000"], "--fragments 100000: 100000 fragments of a model of 4810 values would leave some "
                                "empty; use at most 4810"),
    (["--keys", "no-such-keys"], "no public key for p0"),
    (["--join", "p1@3", "--algo", "admm", "--dataset", "synthetic-lstsq"], "--join works with --algo gossip only"),
    (["--task", f"{ROOT / 'tests' / 'plugin_tasks.py'}:unbatched"], "has batch_size=None"),
])
def test_launcher_refuses_what_its_peers_would_refuse_before_starting_them(topology_file, tmp_path, capsys, options,
                                                                            message):
    assert swarm.main([str(topology_file("ring", 3)), "--out", str(tmp_path / "run"), *options]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing written: not even the topology


def test_launcher_will_not_replace_an_earlier_run(topology_file, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"kept": True}))
    assert swarm.main([str(topology_file("ring", 3)), "--out", str(out)]) == 2
    assert "pass another --out, or --overwrite" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text()) == {"kept": True}


def test_launcher_refuses_endpoints_of_other_machines(tmp_path, capsys):
    path = tmp_path / "remote.toml"
    path.write_text('edges = [["a", "b"]]\n[[peers]]\nid = "a"\nendpoint = "tcp://127.0.0.1:29999"\n'
                    '[[peers]]\nid = "b"\nendpoint = "tcp://192.0.2.7:29999"\n')
    assert swarm.main([str(path), "--out", str(tmp_path / "run")]) == 2
    assert "start remote peers with python -m p2ptrain.peer on their own hosts" in capsys.readouterr().err


def test_launcher_hands_the_peers_one_configuration_file_that_their_command_line_can_override(tmp_path):
    config, topology, options = swarm.parse(["--rounds", "7", "--partition", "dirichlet:0.3", "--lr", "0.05",
                                             "--out", str(tmp_path / "run"), "--timeout", "9"])
    assert (config.rounds, config.partition, config.lr) == (7, "dirichlet:0.3", 0.05)
    assert (options.out, options.timeout, topology.name) == (str(tmp_path / "run"), 9.0, "ring8")
    path = tmp_path / "peer-config.json"
    path.write_text(json.dumps(config.to_dict()))
    # What a launched peer does with its command line: the file, then the options given explicitly.
    everything, explicit = given_options(build_parser, ["--config", str(path), "--lr", "0.1", "--resume"])
    assert explicit == {"config": str(path), "lr": 0.1, "resume": True}  # defaults are not "given"
    resolved = resolve_config({k: v for k, v in explicit.items() if k != "config"}, PeerConfig.from_file(path))
    assert (resolved.rounds, resolved.partition, resolved.lr, resolved.resume) == (7, "dirichlet:0.3", 0.1, True)


def test_a_tasks_defaults_fill_in_what_the_command_line_does_not_set(tmp_path):
    task_file = tmp_path / "mine.py"
    task_file.write_text("from p2ptrain.builtin_tasks import builtin_task\n"
                         "task = builtin_task('digits')\n"
                         "task.defaults = {'lr': 0.02, 'rounds': 33}\n")
    config, _, _ = swarm.parse(["--task", f"{task_file}:task", "--rounds", "5"])
    assert (config.lr, config.rounds) == (0.02, 5)  # the task's lr; the command line's rounds


@pytest.mark.parametrize(
    "args, message",
    [
        (["topologies/exponential16.toml", "--algo", "admm"], "ADMM needs a static undirected graph"),
        (["--dataset", "synthetic-lstsq", "--model", "mlp"], "use --model linear"),
        (["--dataset", "digits", "--model", "linear"], "use logreg or mlp"),
        (["--algo", "admm", "--admm-solver", "exact"], "needs a convex task"),
        (["--algo", "admm", "--local-steps", "0"], "use at least 1"),
        (["--dataset", "synthetic-lstsq", "--partition", "dirichlet:0.5"], "--partition does not apply"),
        (["topologies/exponential16-push.toml"], "are not doubly stochastic, so gossip would not keep the mean"),
        (["topologies/exponential16-push.toml", "--algo", "gradient-tracking"], "use --algo push-sum"),
        (["topologies/ring8.toml", "--algo", "gradient-tracking", "--local-steps", "0"], "use --local-steps 1"),
    ],
)
def test_launcher_refuses_combinations_that_cannot_work_before_starting(args, message, tmp_path, capsys):
    args = [str(ROOT / a) if a.endswith(".toml") else a for a in args]
    code = swarm.main([*args, "--out", str(tmp_path / "run"), "--base-port", str(free_port_block(16))])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_readme_keeps_secret_keys_out_of_the_checkout_and_git_ignores_them_anyway():
    import re
    import shutil
    import subprocess

    readme = (ROOT / "README.md").read_text()
    directories = re.findall(r"p2ptrain\.keys generate .*--dir (\S+)", readme)
    assert directories and all(d.startswith(("~/", "/")) for d in directories), directories
    if shutil.which("git") and (ROOT / ".git").exists():
        for path in ("keys/p0.secret", "keys/pair/p1.public", "anywhere/p3.secret"):
            assert subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0, path
    else:
        assert {"keys/", "*.secret"} <= set((ROOT / ".gitignore").read_text().split())


@contextlib.contextmanager
def without_root():
    """Root writes through a directory's permission bits; act as nobody so a read-only directory is one."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.mark.parametrize("where", ["under a file", "a file", "a read-only directory", "in a read-only directory"])
def test_launcher_refuses_an_out_it_cannot_write_in_one_line(where, topology_file, tmp_path, capfd):
    config, topology, options = swarm.parse([str(topology_file("ring", 3)), "--rounds", "1"])
    # Outside pytest's own directory, which only its owner may enter.
    base = Path(tempfile.mkdtemp(prefix="p2ptrain-out-"))
    try:
        base.chmod(0o755)
        (base / "file").write_text("not a directory\n")
        (base / "readonly").mkdir(mode=0o555)
        out = {"under a file": base / "file" / "run", "a file": base / "file",
               "a read-only directory": base / "readonly", "in a read-only directory": base / "readonly" / "run"}[where]
        with without_root():
            code = swarm.launch(config, topology, dataclasses.replace(options, out=str(out)))
    finally:
        (base / "readonly").chmod(0o755)
        shutil.rmtree(base)
    err = capfd.readouterr().err
    assert code == 2
    assert err.startswith("launch_swarm: error: cannot write the run directory") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_launcher_resume_of_a_directory_without_a_launch_says_what_to_pass(tmp_path, capsys):
    assert swarm.main(["--resume", str(tmp_path / "nothing")]) == 2
    assert f"--resume {tmp_path / 'nothing'}: no launched run there" in capsys.readouterr().err
    # From Python: the run's own configuration and topology are used, never ones passed alongside.
    assert swarm.resume(tmp_path / "nothing") == 2
    config, topology, _ = swarm.parse(["--rounds", "7"])
    assert swarm.launch(config, topology, swarm.LaunchOptions(out=str(tmp_path), resume=True)) == 2
    assert "pass None for both" in capsys.readouterr().err


@pytest.mark.parametrize("launched_in", ["/old/place/run", "runs/run"])  # absolute, as launches record; relative, as they did
def test_a_resumed_run_finds_its_own_files_where_it_is_now(tmp_path, launched_in):
    run_dir = RunDir(tmp_path / "moved")
    recorded = PeerConfig(topology=f"{launched_in}/topology.toml", keys=f"{launched_in}/keys",
                          reference=f"{launched_in}/reference.pt")
    found = swarm._found_here(recorded, run_dir)
    here = run_dir.path.resolve()
    assert (found.topology, found.keys, found.reference) == (str(here / "topology.toml"), str(here / "keys"),
                                                             str(here / "reference.pt"))
    users = swarm._found_here(recorded.replace(keys="/the/users/keys", reference=""), run_dir)
    assert (users.keys, users.reference) == ("/the/users/keys", "")


def test_a_resumed_launch_forgets_the_absent_peers_of_its_first_start(topology_file, tmp_path):
    # A launch with --join p3 started the others with p3 absent; resumed, p3 is running like the others.
    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()
    shutil.copy(topology_file("ring", 4), run_dir.topology)
    config = PeerConfig(topology=str(run_dir.topology), run_id="r", absent="p3", insecure=True).validate()
    run_dir.peer_config.write_text(json.dumps(config.to_dict()))
    resumed = swarm.prepare_resume(swarm.LaunchOptions(out=str(run_dir.path), resume=True))
    assert resumed.config.absent == ""
    assert PeerConfig.from_file(run_dir.peer_config).absent == ""  # the file the peers read


def test_launcher_resume_takes_no_training_options(capsys):
    assert swarm.main(["--resume", "runs/x", "--rounds", "9", "--lr", "0.5"]) == 2
    assert "drop --lr, --rounds (only --timeout may be given)" in capsys.readouterr().err
