"""Hostile traffic at a training peer of a CurveZMQ swarm: ten thousand malformed messages from a listed
key, messages under another member's name, and messages from strangers. All of it is refused or never
gets in, and every peer's model is exactly the one of the lockstep simulation, which saw none of it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import zmq

from p2ptrain import keys, wire
from p2ptrain.config import PeerConfig
from p2ptrain.replica import build_replica
from p2ptrain.simulate import simulate
from p2ptrain.topology import load_topology

from .fuzz import hostile_messages, topology_of
from .processes import LoggedProcess

pytestmark = pytest.mark.swarm

MESSAGES = 10_000
IMPERSONATIONS = 200
STRANGERS = 200
ROUNDS = 200


def receiving_contract(config: PeerConfig, topology, peer_id: str, out: Path) -> wire.Contract:
    """What ``peer_id`` accepts: its tensors built the way the peer builds them, and the fingerprint
    it recorded in ``out``/config.json, so the forged messages carry exactly the one it checks."""
    replica = build_replica(config, topology, peer_id)
    specs = wire.specs_of(replica.algorithm.outgoing(0))
    description = json.loads((out / "config.json").read_text())
    return wire.Contract(config.run_id, description["fingerprint"], frozenset(topology.in_neighbours(peer_id)), specs,
                         topology=tuple(description["topology_digests"]))


def pusher(context: zmq.Context, endpoint: str, curve: tuple[str, str, str] | None = None) -> zmq.Socket:
    """A raw PUSH socket to ``endpoint``; ``curve`` = (public, secret, server public) keys, or None for NULL."""
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 20_000)  # a peer that stops reading fails the test, not hangs it
    if curve:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = (k.encode() for k in curve)
    sock.connect(endpoint)
    return sock


def test_a_peer_under_hostile_traffic_trains_exactly_as_without_it(topology_file, tmp_path):
    path = topology_file("complete", 3)
    topology = load_topology(path)
    keys.generate(topology, tmp_path / "keys")
    config = PeerConfig(topology=str(path), rounds=ROUNDS, run_id="fuzz", seed=3, eval_every=50,
                        min_compute_seconds=0.05).validate()
    common = ["--topology", str(path), "--run-id", "fuzz", "--rounds", str(ROUNDS), "--seed", "3",
              "--eval-every", "50", "--min-compute-seconds", "0.05", "--keys", str(tmp_path / "keys")]
    peers = {p: LoggedProcess.peer([*common, "--peer", p, "--out", str(tmp_path / p)]) for p in topology.ids}
    target = topology.peer("p0").endpoint
    server = keys.load_public_keys(tmp_path / "keys", ["p0"])["p0"]
    p2_keys = (keys.load_public_keys(tmp_path / "keys", ["p2"])["p2"], keys.load_secret_key(tmp_path / "keys", "p2"))
    sent = Counter()
    context = zmq.Context()
    try:
        # Start once the replayed rounds (0-2) are long past for p0, so they are stale, not new.
        peers["p0"].wait_for_line(r"round 10/", timeout=60)
        contract = receiving_contract(config, topology, "p0", tmp_path / "p0")
        member = pusher(context, target, (*p2_keys, server))  # p2's own key: past the handshake
        for name, frames in hostile_messages(MESSAGES, contract, sender="p2", far_round=ROUNDS + 100, seed=7):
            member.send_multipart(frames)
            sent[name] += 1
        # Well-formed parameters for the coming rounds, which p0 would mix if it believed them:
        # from p2's key in p1's name, and from strangers without a listed key.
        forged = [bytes(f) for f in wire.encode(kind="params", sender="p1", run_id="fuzz", round=150,
                                                fingerprint=contract.fingerprint, topology=topology_of(contract, 150),
                                                tensors={s.name: torch.full(s.shape, 1e3) for s in contract.specs})]
        for _ in range(IMPERSONATIONS):
            member.send_multipart(forged)
        stranger_keys = zmq.curve_keypair()
        strangers = [pusher(context, target), pusher(context, target, (*(k.decode() for k in stranger_keys), server))]
        for stranger in strangers:
            for _ in range(STRANGERS // 2):
                # Without a pipe (its handshake was refused, and ZeroMQ may be redialling) a PUSH
                # socket cannot even queue: such a message never leaves this process.
                try:
                    stranger.send_multipart(forged, flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
        codes = {p: process.finish(timeout=90) for p, process in peers.items()}
    finally:
        context.destroy(linger=0)
        for process in peers.values():
            process.kill()
    assert codes == {"p0": 0, "p1": 0, "p2": 0}, peers["p0"].log()[-2000:]

    result = json.loads((tmp_path / "p0" / "result.json").read_text())
    rejected = result["rejected"]
    assert result["secure"]
    # Every message from p2's key was counted: refused by reason, or dropped as outside the round window.
    assert sum(rejected.values()) + result["stale_dropped"] + result["too_far_ahead"] == MESSAGES + IMPERSONATIONS
    assert rejected["impersonation"] == IMPERSONATIONS
    assert result["stale_dropped"] == sent["replayed_round"]
    assert rejected["non_finite"] == sent["non_finite"]
    assert {"malformed_header", "frame_count", "frame_length", "run_id", "fingerprint", "unknown_kind",
            "version"} <= set(rejected)
    # The strangers never got a message in: nothing was counted from anyone but p2.
    assert result["rejected_from"] == {"p2": MESSAGES + IMPERSONATIONS - result["stale_dropped"]
                                       - result["too_far_ahead"]}
    # And none of it touched the models: every peer ends where the lockstep simulation does.
    for peer_id, state in simulate(config, topology).items():
        got = torch.load(tmp_path / peer_id / "model.pt", weights_only=True)
        assert all(torch.equal(got[name], tensor) for name, tensor in state.items()), peer_id
    log = peers["p0"].log()
    assert "rejected message #1000 " in log  # logged, but not ten thousand times
    assert "p2 has sent 1000 messages that were rejected" in log  # the garbage is traced to its key
