"""Ten thousand hostile messages at a training peer: all refused, and its model is exactly the unfuzzed one."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
import zmq

from p2ptrain import wire
from p2ptrain.config import PeerConfig
from p2ptrain.replica import build_replica
from p2ptrain.simulate import simulate
from p2ptrain.topology import load_topology

from .fuzz import hostile_messages
from .processes import LoggedProcess

pytestmark = pytest.mark.swarm

MESSAGES = 10_000
ROUNDS = 200


def receiving_contract(config: PeerConfig, topology, peer_id: str) -> wire.Contract:
    """What ``peer_id`` accepts, built the way the peer builds it."""
    replica = build_replica(config, topology, peer_id)
    specs = wire.specs_of(replica.algorithm.outgoing(0))
    fingerprint = wire.fingerprint(specs, salt=f"{config.model}/{config.dataset}")
    return wire.Contract(config.run_id, fingerprint, frozenset(topology.in_neighbours(peer_id)), specs)


def test_a_peer_under_a_flood_of_malformed_messages_trains_exactly_as_without_it(topology_file, tmp_path):
    path = topology_file("complete", 2)
    topology = load_topology(path)
    config = PeerConfig(topology=str(path), rounds=ROUNDS, run_id="fuzz", seed=3, eval_every=50,
                        min_compute_seconds=0.05).validate()
    common = ["--topology", str(path), "--run-id", "fuzz", "--rounds", str(ROUNDS), "--seed", "3",
              "--eval-every", "50", "--min-compute-seconds", "0.05"]
    peers = {p: LoggedProcess.peer([*common, "--peer", p, "--out", str(tmp_path / p)]) for p in ("p0", "p1")}
    sent = Counter()
    context = zmq.Context()
    fuzzer = context.socket(zmq.PUSH)
    fuzzer.setsockopt(zmq.SNDTIMEO, 20_000)  # a peer that stops reading fails the test, not hangs it
    fuzzer.setsockopt(zmq.LINGER, 0)
    try:
        # Start once the replayed rounds (0-2) are long past for p0, so they are stale, not new.
        peers["p0"].wait_for_line(r"round 10/", timeout=60)
        fuzzer.connect(topology.peer("p0").endpoint)
        contract = receiving_contract(config, topology, "p0")
        for name, frames in hostile_messages(MESSAGES, contract, sender="p1", far_round=ROUNDS + 100, seed=7):
            fuzzer.send_multipart(frames)
            sent[name] += 1
        codes = {p: process.finish(timeout=90) for p, process in peers.items()}
    finally:
        fuzzer.close()
        context.term()
        for process in peers.values():
            process.kill()
    assert codes == {"p0": 0, "p1": 0}, peers["p0"].log()[-2000:]

    result = json.loads((tmp_path / "p0" / "result.json").read_text())
    rejected = result["rejected"]
    # Every hostile message was counted: refused by reason, or dropped as outside the round window.
    assert sum(rejected.values()) + result["stale_dropped"] + result["too_far_ahead"] == MESSAGES
    assert result["stale_dropped"] == sent["replayed_round"]
    assert rejected["non_finite"] == sent["non_finite"]
    assert {"malformed_header", "frame_count", "frame_length", "run_id", "fingerprint", "unknown_kind",
            "version"} <= set(rejected)
    # And none of it touched the model: both peers end where the lockstep simulation does.
    for peer_id, state in simulate(config, topology).items():
        got = torch.load(tmp_path / peer_id / "model.pt", weights_only=True)
        assert all(torch.equal(got[name], tensor) for name, tensor in state.items()), peer_id
    assert "rejected message #1000 " in peers["p0"].log()  # logged, but not ten thousand times
