"""A swarm across two network hosts that survives a cut link.

The hosts are network namespaces joined by one veth link (tests/netns.py).
ring4 is split over them: p0 and p1 on host a, p2 and p3 on host b, so the
edges p1-p2 and p3-p0 cross the link while p0-p1 and p2-p3 stay on a host.
The same swarm runs twice with the same seed: once without faults, once with
the link cut for a stretch of rounds. Cut and restore are triggered by the
peers' progress (their log lines), never by sleeping. A third run uses a file
made by `generate ring --hosts A,B --per-host 2`, CurveZMQ keys, and peers
that take their ids from launchers' rank variables.

Needs root and iproute2; elsewhere it skips, saying what is missing. Run it alone with
``sudo python3 -m pytest tests/test_netns.py -rP`` to see the measured figures.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from p2ptrain.config import PeerConfig
from p2ptrain.results import consensus_distance, consensus_of_rows, load_model, read_trace
from p2ptrain.simulate import simulate
from p2ptrain.storage import read_json_lines
from p2ptrain.topology import dump_topology, generate, load_topology, relocate

from .netns import Host, NetnsUnavailable, TwoHosts
from .processes import ROOT, LoggedProcess

# Each test starts four peer processes that import torch: seconds on an idle
# machine, but a minute or more when other test suites load the machine.
pytestmark = [pytest.mark.swarm, pytest.mark.timeout(300)]

# Enough for the cut (about rounds 30 to 60), TCP's retransmission backoff after it (up to
# about 60 rounds, measured) and a TAIL of rounds in which nothing is missed.
ROUNDS = 200
LOG_EVERY = 5  # the cut and the restore wait for progress lines: finer lines, finer timing
CUT_AFTER = 30  # the round every peer has logged when the link is cut
CUT_ROUNDS = 25  # rounds every peer runs without its neighbour across the link before it comes back
# The first rounds after the cut may also miss the neighbour on the same host: a peer waiting
# out the deadline for its neighbour across the link sends its next round late to the other.
SETTLE = 5
TAIL = 40  # the last rounds, in which every peer must hear both neighbours again
# Long enough that a busy machine does not make a healthy neighbour miss a deadline; short,
# because the first round after the cut waits it out, and the longer the link is down the
# longer TCP's retransmission backoff delays the first packet after it is back up.
RECV_TIMEOUT = 2.0
# Peers start seconds apart on a busy machine, and in round 1 one that started early can give
# up on a neighbour still in round 0 (waiting for a neighbour of its own). That is start-up,
# not the network: the fault-free run must miss nobody from this round on.
WARMUP = 20
STARTUP_SECONDS = 200  # deadline for four peers to start and reach CUT_AFTER, or to finish a run
# Peers listen below the kernel's ephemeral range (32768 on): in a fresh namespace
# nothing else holds a port, but its own outgoing connections draw from that range.
BASE_PORT = 21000
PEER_OPTIONS = [
    "--rounds", str(ROUNDS), "--dataset", "digits", "--seed", "5",
    "--recv-timeout", str(RECV_TIMEOUT), "--startup-timeout", "120", "--checkpoint-every", "0",
    "--trace-every", "5", "--log-every", str(LOG_EVERY), "--eval-every", "100",
    # Rounds of digits take milliseconds; padding them keeps the cut several rounds long.
    "--min-compute-seconds", "0.05",
]
# ring4 split over the hosts: each peer's neighbour on the other host, and the one on its own.
ACROSS = {"p0": "p3", "p1": "p2", "p2": "p1", "p3": "p0"}
BESIDE = {"p0": "p1", "p1": "p0", "p2": "p3", "p3": "p2"}


@pytest.fixture(scope="module")
def hosts():
    # Namespaces are global to the machine: the pid keeps parallel runs apart, and a
    # random part keeps a run clear of leftovers of an aborted one with the same pid.
    name = f"p2pt-{os.getpid()}-{os.urandom(2).hex()}"
    try:
        hosts = TwoHosts.create(name)
    except NetnsUnavailable as reason:
        pytest.skip(f"cannot make network namespaces: {reason}")
    try:
        yield hosts
    finally:
        hosts.remove()


def placement(hosts: TwoHosts) -> dict[str, Host]:
    return {"p0": hosts.a, "p1": hosts.a, "p2": hosts.b, "p3": hosts.b}


@pytest.fixture(scope="module")
def ring4_file(hosts, tmp_path_factory) -> Path:
    """ring4 with each peer listening on the address of its host."""
    ring = generate("ring", 4)
    endpoints = [f"tcp://{placement(hosts)[peer_id].address}:{BASE_PORT + i}" for i, peer_id in enumerate(ring.ids)]
    path = tmp_path_factory.mktemp("netns") / "ring4.toml"
    path.write_text(dump_topology(relocate(ring, endpoints), "ring4 split over two network namespaces"))
    return path


@dataclass
class SwarmRun:
    out: Path
    peers: list[str]
    link_bytes: dict[str, int]  # sent over the link by each host's end during the run

    def metrics(self, peer_id: str) -> list[dict]:
        return read_json_lines(self.out / peer_id / "metrics.jsonl")

    def result(self, peer_id: str) -> dict:
        return json.loads((self.out / peer_id / "result.json").read_text())

    def accuracies(self) -> dict[str, float]:
        return {peer_id: round(self.result(peer_id)["test_accuracy"], 4) for peer_id in self.peers}

    def final_consensus(self) -> float:
        return consensus_distance([load_model(self.out / peer_id) for peer_id in self.peers])

    def consensus_by_round(self) -> dict[int, float]:
        """Consensus distance of the peers' traced parameters, for each traced round."""
        traces = [read_trace(self.out / peer_id) for peer_id in self.peers]
        rounds = traces[0][0]
        assert all(traced == rounds for traced, _ in traces)
        return {r: consensus_of_rows(np.stack([rows[i] for _, rows in traces])) for i, r in enumerate(rounds)}


@contextmanager
def running_swarm(hosts: TwoHosts, topology: Path, out: Path):
    """Start every peer in the namespace of its host; kill whatever still runs when the block ends."""
    peers: dict[str, LoggedProcess] = {}
    try:
        for peer_id, host in placement(hosts).items():
            command = [sys.executable, "-m", "p2ptrain.peer", "--topology", str(topology), "--peer", peer_id,
                       "--out", str(out / peer_id), "--insecure", *PEER_OPTIONS]
            peers[peer_id] = LoggedProcess(host.command(command))
        yield peers
    finally:
        for process in peers.values():
            process.kill()  # only those still running: a failed wait must not leave peers behind
        for process in peers.values():
            process.process.wait(timeout=10)


def finish_all(peers: dict[str, LoggedProcess], timeout: float) -> dict[str, int]:
    """Every peer's exit code, within one shared deadline."""
    deadline = time.monotonic() + timeout
    return {peer_id: process.finish(timeout=max(deadline - time.monotonic(), 1.0))
            for peer_id, process in peers.items()}


def link_bytes(hosts: TwoHosts) -> dict[str, int]:
    return {"a": hosts.a.link_bytes_sent(), "b": hosts.b.link_bytes_sent()}


@pytest.fixture(scope="module")
def fault_free(hosts, ring4_file, tmp_path_factory) -> SwarmRun:
    """The swarm without faults: the yardstick for the run with a cut."""
    out = tmp_path_factory.mktemp("fault-free")
    before = link_bytes(hosts)
    with running_swarm(hosts, ring4_file, out) as peers:
        codes = finish_all(peers, timeout=STARTUP_SECONDS)
        logs = {peer_id: process.log() for peer_id, process in peers.items()}
    assert codes == dict.fromkeys(peers, 0), logs
    after = link_bytes(hosts)
    return SwarmRun(out, list(peers), {side: after[side] - before[side] for side in before})


def test_a_swarm_split_over_two_hosts_trains_as_on_one(fault_free):
    run = fault_free
    for peer_id in run.peers:
        records = run.metrics(peer_id)
        assert [r["round"] for r in records] == list(range(ROUNDS))
        missed = [r for r in records[WARMUP:] if r["missing"]]
        assert not missed, f"{peer_id} missed a neighbour without any fault: {missed[:3]}"
        assert run.result(peer_id)["status"] == "completed"
    # Each round p0 -> p3 and p1 -> p2 cross the link from a, p2 -> p1 and p3 -> p0 from b:
    # the link must have carried at least those messages (plus TCP/IP headers), so the
    # swarm really ran across the two hosts.
    message_bytes = run.metrics("p1")[0]["bytes_sent"] // 2
    for side, sent in run.link_bytes.items():
        assert sent >= 2 * ROUNDS * message_bytes, f"host {side} sent {sent} bytes over the link"
    accuracies = run.accuracies()
    assert min(accuracies.values()) >= 0.9, accuracies
    consensus = run.final_consensus()
    assert consensus <= 1e-2
    start_up_misses = {p: sum(bool(r["missing"]) for r in run.metrics(p)[:WARMUP]) for p in run.peers}
    print(f"\nfault-free: final consensus distance {consensus:.3e}; accuracy {accuracies}; "
          f"bytes over the link a->b {run.link_bytes['a']}, b->a {run.link_bytes['b']} "
          f"({message_bytes} per message); rounds missing a neighbour at start-up {start_up_misses}")


def logged(process: LoggedProcess, pattern: str, timeout: float, after: int = 0) -> tuple[int, str]:
    """(number, text) of the first log line of ``process`` after line ``after`` that matches ``pattern``."""
    line = process.wait_for_line(pattern, timeout=timeout, after=after)
    return process.lines.index(line, after), line


def round_of(line: str) -> int:
    """R of a line "... round R: ..."."""
    return int(line.split(" round ", 1)[1].split(":", 1)[0])


def test_the_swarm_trains_through_a_cut_link_and_agrees_again_once_it_is_back(hosts, ring4_file, fault_free,
                                                                               tmp_path):
    out = tmp_path / "cut"
    with running_swarm(hosts, ring4_file, out) as peers:
        before_cut = {p: logged(peers[p], rf"round {CUT_AFTER}/{ROUNDS} ", STARTUP_SECONDS)[0] for p in peers}
        hosts.cut()
        # Each peer notices its neighbour across the link missing within one receive deadline.
        noticed = {p: round_of(logged(peers[p], rf"round \d+: no parameters from {ACROSS[p]} within",
                                      RECV_TIMEOUT + 15, after=before_cut[p])[1]) for p in peers}
        # Keep the link down until every peer has run CUT_ROUNDS rounds without that neighbour.
        restore_at = math.ceil((max(noticed.values()) + CUT_ROUNDS) / LOG_EVERY) * LOG_EVERY
        before_restore = {p: logged(peers[p], rf"round {restore_at}/{ROUNDS} ", 60)[0] for p in peers}
        hosts.restore()
        heard_again = {p: round_of(logged(peers[p], rf"round \d+: heard from {ACROSS[p]} again",
                                          60, after=before_restore[p])[1]) for p in peers}
        codes = finish_all(peers, timeout=STARTUP_SECONDS)
        logs = {peer_id: process.log() for peer_id, process in peers.items()}
    assert codes == dict.fromkeys(peers, 0), logs
    run = SwarmRun(out, list(peers), {})

    records = {peer_id: run.metrics(peer_id) for peer_id in run.peers}
    for peer_id in run.peers:
        assert [r["round"] for r in records[peer_id]] == list(range(ROUNDS))
        assert run.result(peer_id)["status"] == "completed"

    # Both sides trained on through the cut: every peer completed at least CUT_ROUNDS rounds
    # without its neighbour across the link, and once the cut had settled, every round
    # mixed with the neighbour on its own host and missed only the one across.
    cut_off, settled = {}, range(max(noticed.values()) + SETTLE, restore_at)
    for peer_id in run.peers:
        cut_off[peer_id] = [r["round"] for r in records[peer_id] if ACROSS[peer_id] in r["missing"]]
        assert len(cut_off[peer_id]) >= CUT_ROUNDS, (peer_id, cut_off[peer_id])
        odd = [r for r in records[peer_id][settled.start:settled.stop]
               if r["missing"] != [ACROSS[peer_id]] or r["heard"] != [BESIDE[peer_id]] or not math.isfinite(r["loss"])]
        assert not odd, f"{peer_id} during the cut: {odd[:3]}"

    # Once the link is back every peer hears both neighbours again, long before the end.
    for peer_id in run.peers:
        late = [r for r in records[peer_id][-TAIL:] if r["missing"]]
        assert not late, f"{peer_id} still missed neighbours in its last {TAIL} rounds: {late[:3]}"

    # The two halves drifted apart while cut off, and mixing brought them back together.
    during, baseline_during = run.consensus_by_round(), fault_free.consensus_by_round()
    cut_rounds = [r for r in during if min(noticed.values()) <= r < max(heard_again.values())]
    peak, baseline_peak = max(during[r] for r in cut_rounds), max(baseline_during[r] for r in cut_rounds)
    assert peak >= 2 * baseline_peak, (peak, baseline_peak)
    consensus, baseline = run.final_consensus(), fault_free.final_consensus()
    assert consensus <= 2 * baseline, (consensus, baseline)
    accuracies = run.accuracies()
    assert min(accuracies.values()) >= 0.9, accuracies
    print(f"\ncut link: cut in round {min(noticed.values())}, restored once every peer had run {restore_at} rounds, "
          f"every peer heard across it again by round {max(heard_again.values())}; rounds without the neighbour across "
          f"{ {peer_id: len(rounds) for peer_id, rounds in cut_off.items()} }; consensus distance during the cut "
          f"up to {peak:.3e} (fault-free {baseline_peak:.3e} in the same rounds); final {consensus:.3e} "
          f"(fault-free {baseline:.3e}, ratio {consensus / baseline:.2f}); accuracy {accuracies}")


def test_a_ring_generated_for_two_hosts_trains_across_them_with_keys_and_launcher_ranks(hosts, tmp_path):
    """Two hosts with two peers each, from `generate ring --hosts A,B --per-host 2`, secured with CurveZMQ,
    each peer finding its place from a different launcher's rank variables: the models equal the simulation's."""
    rounds, topology_path, keys = 100, tmp_path / "ring4-hosts.toml", tmp_path / "keys"
    generate_command = [sys.executable, "-m", "p2ptrain.topology", "generate", "ring", "--hosts",
                        f"{hosts.a.address},{hosts.b.address}", "--per-host", "2", "--base-port", "21100",
                        "-o", str(topology_path)]
    keys_command = [sys.executable, "-m", "p2ptrain.keys", "generate", "--topology", str(topology_path),
                    "--dir", str(keys)]
    for command in (generate_command, keys_command):
        made = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)
        assert made.returncode == 0, made.stderr
    topology = load_topology(topology_path)
    assert [spec.endpoint for spec in topology.peers] == [
        f"tcp://{hosts.a.address}:21100", f"tcp://{hosts.a.address}:21101",
        f"tcp://{hosts.b.address}:21100", f"tcp://{hosts.b.address}:21101"]
    ranks = [{"RANK": "0", "WORLD_SIZE": "4"}, {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4"},
             {"SLURM_PROCID": "2", "SLURM_NTASKS": "4"}, {"JOB_COMPLETION_INDEX": "3"}]
    options = ["--topology", str(topology_path), "--keys", str(keys), "--rounds", str(rounds), "--seed", "5",
               "--recv-timeout", "60", "--startup-timeout", "120", "--eval-every", "50", "--log-every", "50"]
    before = link_bytes(hosts)
    peers = {}
    try:
        for rank, (peer_id, host) in enumerate(placement(hosts).items()):
            peers[peer_id] = LoggedProcess(host.command([sys.executable, "-m", "p2ptrain.peer", *options, "--out",
                                                         str(tmp_path / peer_id)]), env=ranks[rank])
        codes = finish_all(peers, timeout=STARTUP_SECONDS)
    finally:
        for process in peers.values():
            process.kill()
    assert codes == dict.fromkeys(peers, 0), {peer_id: process.log()[-2000:] for peer_id, process in peers.items()}
    after = link_bytes(hosts)
    run = SwarmRun(tmp_path, list(peers), {side: after[side] - before[side] for side in before})
    for peer_id in run.peers:
        assert all(not r["missing"] for r in run.metrics(peer_id)), peer_id
        assert json.loads((tmp_path / peer_id / "config.json").read_text())["curve_public_key"]  # secured
    message_bytes = run.metrics("p1")[0]["bytes_sent"] // 2
    assert min(run.link_bytes.values()) >= 2 * rounds * message_bytes  # two neighbours across the link each way

    # Every message on time: the swarm across two hosts computed exactly the lockstep simulation.
    config = PeerConfig.from_dict(json.loads((tmp_path / "p0" / "config.json").read_text())["config"])
    for peer_id, state in simulate(config, topology).items():
        model = load_model(tmp_path / peer_id)
        for name, tensor in state.items():
            torch.testing.assert_close(model[name], tensor, rtol=0, atol=1e-6)
    accuracies, consensus = run.accuracies(), run.final_consensus()
    assert min(accuracies.values()) >= 0.9, accuracies
    assert consensus <= 1e-2
    print(f"\ntwo hosts x two peers, generated with --hosts, CurveZMQ: accuracy {accuracies}; consensus distance "
          f"{consensus:.3e}; bytes over the link a->b {run.link_bytes['a']}, b->a {run.link_bytes['b']}")
