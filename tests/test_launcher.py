"""The launcher's parts that need no peer: the live display and the summary, from hand-written peer files."""

from __future__ import annotations

import json

from p2ptrain.config import PeerConfig
from p2ptrain.faults import FaultPlan
from p2ptrain.progress import PeerReader, PeerState, Progress, headline, progress_line, progress_table
from p2ptrain.rundir import RunDir
from p2ptrain.summary import summarise, summary_table
from p2ptrain.swarm import Ended, LaunchOptions, PreparedRun, conclude
from p2ptrain.swarm import main as swarm_main
from p2ptrain.topology import dump_topology, generate


def test_while_peers_start_the_display_says_how_many_listen_instead_of_round_zero():
    peers = [PeerState("p0"), PeerState("p1", begun=True), PeerState("p2", begun=True)]
    assert headline(peers, 200) == "starting: 2/3 peers listening"
    table = progress_table(peers, 200, elapsed=3.0)
    assert table[0] == "    3.0s  starting: 2/3 peers listening"
    assert [line.split()[1:] for line in table[2:]] == [["-/200", "-", "-", "starting"],
                                                        ["-/200", "-", "-", "listening"],
                                                        ["-/200", "-", "-", "listening"]]
    assert progress_line(peers, 200, elapsed=3.0) == "   3.0s starting: 2/3 peers listening"


def test_once_peers_have_rounds_the_display_gives_the_range_and_who_is_still_starting():
    peers = [PeerState("p0", begun=True, round=12, loss=0.25, figure=0.5),
             PeerState("p1", begun=True, round=14, loss=0.2, figure=0.625),
             PeerState("p2", begun=True),
             PeerState("p3", launched=False)]
    assert headline(peers, 200) == ("rounds 0-14/200 accuracy 0.500-0.625; 1 still starting (1 listening); "
                                    "1 waiting to join")
    rows = progress_table(peers, 200, elapsed=9.0)[2:]
    assert rows[0].split() == ["p0", "12/200", "0.2500", "0.5000", "running"]
    assert rows[3].split()[-3:] == ["waiting", "to", "join"]
    everyone = [PeerState(p.id, begun=True, round=20 + i) for i, p in enumerate(peers)]
    assert headline(everyone, 200) == "rounds 20-23/200"


def test_when_every_peer_has_exited_the_display_says_finished_with_their_exit_codes():
    peers = [PeerState("p0", begun=True, round=200, exit_code=0), PeerState("p1", begun=True, round=57, exit_code=-9)]
    assert headline(peers, 200) == "finished: rounds 57-200/200"
    assert [line.split()[-1] for line in progress_table(peers, 200, elapsed=30.0)[2:]] == ["0", "-9"]


def test_the_display_follows_the_peers_files_and_stops_once_all_have_exited(tmp_path, capsys):
    run_dir = RunDir(tmp_path)
    for peer_id in ("p0", "p1"):
        run_dir.peer(peer_id).path.mkdir(parents=True)
    progress = Progress(run_dir, ("p0", "p1"), rounds=3)
    progress.tty = False
    progress.show({"p0": None, "p1": None})
    assert capsys.readouterr().out.split("s ", 1)[1] == "starting: 0/2 peers listening\n"

    for peer_id in ("p0", "p1"):
        run_dir.peer(peer_id).config.write_text("{}")
        run_dir.peer(peer_id).metrics.write_text(
            "".join(json.dumps({"round": r, "loss": 1.0 / (r + 1)}) + "\n" for r in range(3)))
    progress.show({"p0": None, "p1": None})
    assert capsys.readouterr().out == ""  # off a terminal, a line every few seconds only
    assert progress.rounds_completed() == {"p0": 3, "p1": 3}

    progress.tty = True  # a table redrawn in place
    progress.show({"p0": None, "p1": None})
    assert "rounds 3-3/3" in capsys.readouterr().out
    progress.show({"p0": 0, "p1": 0})
    drawn = capsys.readouterr().out
    # Back up over the table drawn before (4 lines), then draw it once more, finished.
    assert drawn.startswith("\x1b[4F") and "finished: rounds 3-3/3" in drawn and "exit 0" in drawn
    progress.show({"p0": 0, "p1": 0})
    progress.show({"p0": 0, "p1": 0})
    assert capsys.readouterr().out == ""  # nothing changes any more: nothing is drawn


def write_result(run_dir: RunDir, peer_id: str, status: str, rounds: int) -> None:
    files = run_dir.peer(peer_id)
    files.path.mkdir(parents=True)
    files.result.write_text(json.dumps({"peer": peer_id, "status": status, "rounds": 50, "rounds_completed": rounds,
                                        "start_round": 0, "test_accuracy": 0.5, "test_loss": 1.0,
                                        "train_loss": 0.9}))


def test_the_display_starts_over_on_a_metrics_file_written_anew_in_the_same_inode(tmp_path):
    # --overwrite removes a peer's metrics and a new file may get the old inode: here the same file,
    # truncated and written anew, with more bytes than were read of the old one.
    files = RunDir(tmp_path).peer("p0")
    files.path.mkdir(parents=True)
    lines = lambda rounds, pad: "".join(json.dumps({"round": r, "loss": 1.0, "pad": pad}) + "\n" for r in rounds)
    files.metrics.write_text(lines(range(3), "x" * 40))
    reader = PeerReader(files)
    reader.read()
    assert reader.round == 3
    with open(files.metrics, "w") as f:  # the same inode
        f.write(lines(range(7), ""))
    reader.read()  # would have read from the middle of a line, and failed on it
    assert reader.round == 7


def test_a_peer_that_heard_from_nobody_is_flagged_isolated_in_the_summary_and_a_warning(tmp_path, capsys):
    topology = generate("ring", 3)
    run_dir = RunDir(tmp_path / "run")
    write_result(run_dir, "p0", "completed", 50)
    write_result(run_dir, "p1", "isolated", 50)
    write_result(run_dir, "p2", "completed", 50)

    summary = summarise(topology, "gossip", run_dir, {"p0": 0, "p1": 0, "p2": 0}, wall_seconds=1.0)
    assert [p["status"] for p in summary["peers"].values()] == ["completed", "isolated", "completed"]
    assert summary_table(summary).splitlines()[2].split()[-1] == "isolated"

    run = PreparedRun(PeerConfig(topology="-", rounds=50, run_id="r"), topology, LaunchOptions(), run_dir,
                      task=None, faults=FaultPlan(), reference=None)
    assert conclude(run, Ended({"p0": 0, "p1": 0, "p2": 0}, None, 1.0, 0.0)) == 0
    written = json.loads(run_dir.summary.read_text())
    assert written["peers"]["p1"]["status"] == "isolated" and written["peers"]["p0"]["status"] == "completed"
    printed = capsys.readouterr()
    assert "p1" in printed.out and "isolated" in printed.out
    warnings = [line for line in printed.err.splitlines() if "heard from no neighbour" in line]
    assert len(warnings) == 1 and "peers p1 " in warnings[0] and "p0" not in warnings[0]


def test_a_peer_stopped_before_it_wrote_anything_is_told_from_one_never_started(tmp_path):
    topology = generate("ring", 3)
    run_dir = RunDir(tmp_path / "run")
    write_result(run_dir, "p0", "completed", 50)
    for peer_id in ("p1", "p2"):
        run_dir.peer(peer_id).path.mkdir(parents=True)  # its log only: it wrote nothing of its own
    # p1 was stopped while it imported torch (exit 143); p2, a --join that never came due, has no exit code.
    summary = summarise(topology, "gossip", run_dir, {"p0": 0, "p1": 143, "p2": None}, wall_seconds=1.0)
    assert [p["status"] for p in summary["peers"].values()] == ["completed", "stopped before its first round",
                                                                 "not started"]


def test_a_peer_that_ran_but_could_not_write_its_outputs_is_told_from_a_killed_one(tmp_path):
    from p2ptrain.running import EXIT_WRITE_FAILED

    topology, run_dir = generate("ring", 3), RunDir(tmp_path / "run")
    for peer_id in topology.ids:
        run_dir.peer(peer_id).path.mkdir(parents=True)
        run_dir.peer(peer_id).metrics.write_text('{"round": 0, "loss": 1.0}\n')
    ended = summarise(topology, "gossip", run_dir, {"p0": EXIT_WRITE_FAILED, "p1": -9, "p2": 0}, wall_seconds=1.0)
    assert [p["status"] for p in ended["peers"].values()] == ["could not write its outputs", "killed", "killed"]


def write_checkpoints(run_dir: RunDir, peer_id: str, *rounds: int) -> None:
    """What resume planning reads of a peer's checkpoints: their rounds (newest first)."""
    import torch

    files = run_dir.peer(peer_id)
    files.path.mkdir(parents=True, exist_ok=True)
    for path, round_ in zip((files.checkpoint, files.previous_checkpoint), rounds):
        torch.save({"round": round_}, path)


def test_a_resumed_swarm_continues_from_the_newest_round_every_peers_kept_checkpoints_share(tmp_path):
    from p2ptrain.resume import plan_resume

    topology, run_dir, config = generate("ring", 4), RunDir(tmp_path), PeerConfig(topology="-", rounds=100)
    write_checkpoints(run_dir, "p0", 60, 50)
    write_checkpoints(run_dir, "p1", 60, 50)
    write_checkpoints(run_dir, "p2", 50, 40)  # the launcher died before its checkpoint of round 60
    write_checkpoints(run_dir, "p3", 60, 50)
    plan = plan_resume(run_dir, topology, config)
    assert (plan.common_round, plan.consistent) == (50, True)
    assert plan.from_round == {"p0": 50, "p1": 50, "p2": 50, "p3": 50}
    assert plan.arguments("p0") == ("--resume", "--resume-round", "50")

    write_checkpoints(run_dir, "p2", 30, 20)  # too far behind: no round shared by all
    plan = plan_resume(run_dir, topology, config)
    assert (plan.common_round, plan.consistent) == (None, False)
    assert plan.from_round == {"p0": 60, "p1": 60, "p2": 30, "p3": 60}
    assert plan.arguments("p2") == ("--resume",) and "will not end as an uninterrupted one" in plan.describe()


def test_a_resume_leaves_finished_peers_alone_and_lets_peers_without_a_checkpoint_join(tmp_path):
    from p2ptrain.resume import plan_resume

    topology, run_dir = generate("ring", 4), RunDir(tmp_path)
    write_result(run_dir, "p0", "completed", 50)  # its result says 50 of 50 rounds
    write_checkpoints(run_dir, "p0", 40, 30)
    write_checkpoints(run_dir, "p1", 40, 30)
    write_checkpoints(run_dir, "p3", 40, 30)
    run_dir.peer("p2").path.mkdir()  # killed before its first checkpoint
    plan = plan_resume(run_dir, topology, PeerConfig(topology="-", rounds=50))
    assert (plan.finished, plan.joining, plan.common_round) == (("p0",), ("p2",), 40)
    assert plan.arguments("p1") == ("--resume", "--resume-round", "40", "--absent", "p0,p2")
    assert plan.arguments("p2") == ("--join", "--overwrite", "--absent", "p0")
    # ADMM cannot join (its duals would not match): the peer without a checkpoint starts from round 0.
    plan = plan_resume(run_dir, topology, PeerConfig(topology="-", rounds=50, algo="admm"))
    assert (plan.joining, plan.from_round["p2"], plan.common_round, plan.consistent) == ((), 0, None, False)


def test_a_finished_peer_runs_its_last_rounds_again_with_the_others_when_it_kept_their_round(tmp_path):
    # Left out, the others would rerun those rounds without its messages and end elsewhere.
    from p2ptrain.resume import plan_resume

    topology, run_dir, config = generate("ring", 4), RunDir(tmp_path), PeerConfig(topology="-", rounds=50)
    write_result(run_dir, "p0", "completed", 50)
    write_checkpoints(run_dir, "p0", 45, 40)
    for peer_id in ("p1", "p2", "p3"):
        write_checkpoints(run_dir, peer_id, 40, 35)
    plan = plan_resume(run_dir, topology, config)
    assert (plan.common_round, plan.finished, plan.consistent) == (40, (), True)
    assert plan.arguments("p0") == ("--resume", "--resume-round", "40")
    write_checkpoints(run_dir, "p0", 49, 45)  # it kept no round of theirs: left out, and the plan says so
    plan = plan_resume(run_dir, topology, config)
    assert (plan.common_round, plan.finished, plan.consistent) == (40, ("p0",), False)
    assert "the run will not end as an uninterrupted one would" in plan.describe()


def test_a_checkpoint_that_cannot_be_read_is_skipped_and_named(tmp_path):
    from p2ptrain.resume import plan_resume

    topology, run_dir, config = generate("ring", 3), RunDir(tmp_path), PeerConfig(topology="-", rounds=50)
    for peer_id in topology.ids:
        write_checkpoints(run_dir, peer_id, 40, 35)
    newest = run_dir.peer("p1").checkpoint
    newest.write_bytes(newest.read_bytes()[:40])  # cut short
    plan = plan_resume(run_dir, topology, config)
    assert plan.common_round == 35 and f"skipped {newest}: it cannot be read" in plan.describe()


def test_resuming_a_run_every_peer_finished_changes_nothing(tmp_path, capsys):
    topology = generate("ring", 3)
    run_dir = RunDir(tmp_path / "run")
    for peer_id in topology.ids:
        write_result(run_dir, peer_id, "completed", 50)
    run_dir.topology.write_text(dump_topology(topology))
    run_dir.peer_config.write_text(json.dumps(PeerConfig(topology=str(run_dir.topology), rounds=50).to_dict()))
    run_dir.summary.write_text('{"wall_seconds": 20.0}')
    before = {path: path.read_bytes() for path in run_dir.path.rglob("*") if path.is_file()}
    assert swarm_main(["--resume", str(run_dir.path)]) == 0
    assert "every peer (p0, p1, p2) had finished: nothing to resume" in capsys.readouterr().out
    assert {path: path.read_bytes() for path in run_dir.path.rglob("*") if path.is_file()} == before


def test_identity_conflicts_the_peers_saw_are_flagged_in_the_summary_and_a_warning(tmp_path, capsys):
    topology = generate("ring", 4)
    run_dir = RunDir(tmp_path / "run")
    for peer_id in topology.ids:
        write_result(run_dir, peer_id, "completed", 50)
    for receiver, count in (("p0", 7), ("p2", 5)):  # p3's two neighbours both heard two p3s
        result = json.loads(run_dir.peer(receiver).result.read_text())
        run_dir.peer(receiver).result.write_text(json.dumps(result | {"identity_conflicts": {"p3": count}}))

    run = PreparedRun(PeerConfig(topology="-", rounds=50, run_id="r"), topology, LaunchOptions(), run_dir,
                      task=None, faults=FaultPlan(), reference=None)
    conclude(run, Ended(dict.fromkeys(topology.ids, 0), None, 1.0, 0.0))
    written = json.loads(run_dir.summary.read_text())
    assert written["identity_conflicts"] == {"p3": ["p0", "p2"]}
    assert written["peers"]["p0"]["identity_conflicts"] == {"p3": 7} and "identity_conflicts" not in written["peers"]["p1"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "two processes sent as" in line]
    assert warnings == ["launch_swarm: warning: two processes sent as p3: p0, p2 received two different messages "
                        "from p3 for one round; find and stop the process that should not run as p3"]


def test_a_restarted_peer_is_not_told_the_launchs_absent_latecomers(tmp_path):
    # A --join launch writes its latecomers as --absent into the configuration every peer reads; a peer
    # restarted later (--kill, --restart) would not wait for them though they have joined meanwhile.
    import sys

    from p2ptrain.config import PeerConfig, build_parser, given_options
    from p2ptrain.peer import given_with_file
    from p2ptrain.rundir import PeerDir
    from p2ptrain.supervisor import PeerProcess

    files = PeerDir(tmp_path / "p0")
    files.path.mkdir()
    config_file = tmp_path / "peer-config.json"
    config_file.write_text(json.dumps(PeerConfig(topology="ring4.toml", absent="p3").to_dict()))
    command = (sys.executable, "-c", "pass", "--config", str(config_file))
    peer = PeerProcess("p0", files, command, open(files.log, "wb"))
    peer.restart(recv_timeout=5.0)
    assert peer.process.wait(timeout=60) == 0
    restarted_with = peer.process.args[3:]
    peer.log_file.close()
    _, explicit = given_options(build_parser, list(restarted_with))
    options, _ = given_with_file(explicit, environ={})
    assert options["resume"] and options["absent"] == ""

