"""CurveZMQ: secured transports over real sockets (the keys directory: test_keys.py).

Every rejection test first waits, with a deadline, for the rejected client's
handshake to fail (seen on its own monitor socket), then shows that the same
transport still takes a listed peer's message: nothing is concluded from a
receive that merely timed out. Nothing sleeps to synchronise.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest
import torch
import zmq
import zmq.asyncio
from zmq.auth.thread import AuthenticationThread
from zmq.utils.monitor import recv_monitor_message

from p2ptrain.ports import free_port_block
import p2ptrain
from p2ptrain import keys, wire
from p2ptrain.topology import generate
from p2ptrain.transport import CurveSecurity, Received, TransportError, ZmqTransport, _proven_sender

from .together import exchange_together


HANDSHAKE_SECONDS = 10  # generous: a loaded machine may be slow, a passing run is not
QUIET_SECONDS = 0.5  # how long "nothing more arrives" is watched after a rejection was proved
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
HANDSHAKE_OUTCOMES = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "succeeded",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "failed: not admitted",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "failed: protocol",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "failed",
    zmq.EVENT_DISCONNECTED: "failed: disconnected",
}
_ipc_names = itertools.count()


def key_pair() -> tuple[str, str]:
    public, secret = zmq.curve_keypair()
    return public.decode("ascii"), secret.decode("ascii")


@pytest.fixture
def pairs():
    """Key pairs of peers p0..p4, by id."""
    return {f"p{i}": key_pair() for i in range(5)}


def security(peer_id: str, pairs: dict, listed: list[str] | None = None) -> CurveSecurity:
    public, secret = pairs[peer_id]
    listed = list(pairs) if listed is None else listed
    return CurveSecurity(public_key=public, secret_key=secret, peer_keys={j: pairs[j][0] for j in listed})


def endpoints(kind: str, count: int, tmp_path: Path) -> list[str]:
    if kind == "tcp":
        base = free_port_block(count)
        return [f"tcp://127.0.0.1:{base + i}" for i in range(count)]
    return [f"ipc://{tmp_path}/secure{next(_ipc_names)}.sock" for _ in range(count)]


class RawClient:
    """A bare pyzmq PUSH socket, with or without Curve, whose handshake outcome the test can await."""

    def __init__(self, context: zmq.asyncio.Context, endpoint: str, *, pair: tuple[str, str] | None = None,
                 server_key: str | None = None):
        self.socket = zmq.Context.shadow(context.underlying).socket(zmq.PUSH)
        self.socket.linger = 0
        if pair is not None:
            self.socket.curve_publickey = pair[0].encode("ascii")
            self.socket.curve_secretkey = pair[1].encode("ascii")
            self.socket.curve_serverkey = server_key.encode("ascii")
        self.monitor = self.socket.get_monitor_socket()
        self.socket.connect(endpoint)

    def send(self, *frames: bytes) -> None:
        self.socket.send_multipart(list(frames), flags=zmq.NOBLOCK)

    def handshake_outcome(self) -> str:
        """How the first handshake ended; fails the test if it has not ended within the deadline."""
        while self.monitor.poll(HANDSHAKE_SECONDS * 1000):
            event = recv_monitor_message(self.monitor)["event"]
            if event in HANDSHAKE_OUTCOMES:
                return HANDSHAKE_OUTCOMES[event]
        pytest.fail(f"no handshake outcome within {HANDSHAKE_SECONDS}s")

    def close(self) -> None:
        self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=0)


async def receive_one(transport: ZmqTransport) -> Received:
    received = await transport.receive(timeout=HANDSHAKE_SECONDS)
    assert received is not None, f"nothing arrived within {HANDSHAKE_SECONDS}s"
    return received


async def assert_listed_peer_still_gets_in(context, transport: ZmqTransport, endpoint: str, pairs, peer_id: str):
    """The positive control: the transport that shut a client out still admits a listed key."""
    listed = RawClient(context, endpoint, pair=pairs[peer_id], server_key=pairs["p0"][0])
    try:
        listed.send(b"from a listed peer")
        received = await receive_one(transport)
        assert [f.bytes for f in received.frames] == [b"from a listed peer"]
        assert received.sender == peer_id
        assert await transport.receive(timeout=QUIET_SECONDS) is None
    finally:
        listed.close()


# ---- secured transports --------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["tcp", "ipc"])
async def test_two_secure_transports_exchange_messages_and_know_who_sent_them(kind, context, pairs, tmp_path):
    a_end, b_end = endpoints(kind, 2, tmp_path)
    a = ZmqTransport(context, a_end, {"p1": b_end}, security=security("p0", pairs))
    b = ZmqTransport(context, b_end, {"p0": a_end}, security=security("p1", pairs))
    try:
        assert a.secure and b.secure
        tensors = {"w": torch.randn(64, 32), "b": torch.arange(5, dtype=torch.int64)}
        frames = wire.encode(kind="params", sender="p0", run_id="r", round=0, fingerprint="x", tensors=tensors)
        assert a.send("p1", frames)
        assert b.send("p0", [b"back"])
        got = await receive_one(b)
        message = wire.decode(got.frames, wire.Contract("r", "x", frozenset({"p0"}), wire.specs_of(tensors)))
        assert all(torch.equal(message.tensors[k], tensors[k]) for k in tensors)
        assert got.sender == message.sender == "p0"
        back = await receive_one(a)
        assert back.frames[0].bytes == b"back" and back.sender == "p1"
    finally:
        a.close()
        b.close()


@pytest.mark.asyncio
async def test_a_client_without_curve_gets_nothing_in(context, pairs):
    (end,) = endpoints("tcp", 1, Path())
    server = ZmqTransport(context, end, {}, security=security("p0", pairs))
    intruder = RawClient(context, end)
    try:
        intruder.send(b"NULL mechanism")
        assert intruder.handshake_outcome() == "failed: protocol"
        await assert_listed_peer_still_gets_in(context, server, end, pairs, "p1")
    finally:
        intruder.close()
        server.close()


@pytest.mark.asyncio
async def test_a_client_whose_key_is_not_listed_gets_nothing_in(context, pairs):
    (end,) = endpoints("tcp", 1, Path())
    server = ZmqTransport(context, end, {}, security=security("p0", pairs))
    intruder = RawClient(context, end, pair=key_pair(), server_key=pairs["p0"][0])
    try:
        intruder.send(b"unlisted key")
        assert intruder.handshake_outcome() == "failed: not admitted"
        await assert_listed_peer_still_gets_in(context, server, end, pairs, "p1")
    finally:
        intruder.close()
        server.close()


@pytest.mark.asyncio
async def test_a_listed_client_with_the_wrong_server_key_gets_nothing_through(context, pairs):
    (end,) = endpoints("tcp", 1, Path())
    server = ZmqTransport(context, end, {}, security=security("p0", pairs))
    confused = RawClient(context, end, pair=pairs["p2"], server_key=pairs["p3"][0])
    try:
        confused.send(b"sealed for someone else")
        assert confused.handshake_outcome().startswith("failed")
        await assert_listed_peer_still_gets_in(context, server, end, pairs, "p1")
    finally:
        confused.close()
        server.close()


@pytest.mark.asyncio
async def test_a_listed_key_claiming_another_peers_id_is_detectable(context, pairs):
    (end,) = endpoints("tcp", 1, Path())
    server = ZmqTransport(context, end, {}, security=security("p0", pairs))
    impostor = RawClient(context, end, pair=pairs["p2"], server_key=pairs["p0"][0])
    try:
        tensors = {"w": torch.zeros(3)}
        impostor.send(*[bytes(f) for f in wire.encode(kind="params", sender="p1", run_id="r", round=0,
                                                      fingerprint="x", tensors=tensors)])
        received = await receive_one(server)
        message = wire.decode(received.frames, wire.Contract("r", "x", frozenset({"p1", "p2"}), wire.specs_of(tensors)))
        # The header is well formed and names a neighbour; only the handshake tells the truth.
        assert message.sender == "p1"
        assert received.sender == "p2"
    finally:
        impostor.close()
        server.close()


@pytest.mark.asyncio
async def test_many_secure_transports_share_one_context_and_its_authenticator(context, pairs):
    ids = list(pairs)
    ends = dict(zip(ids, endpoints("tcp", len(ids), Path())))
    ring = {peer_id: (ids[i - 1], ids[(i + 1) % len(ids)]) for i, peer_id in enumerate(ids)}
    transports = {peer_id: ZmqTransport(context, ends[peer_id], {j: ends[j] for j in ring[peer_id]},
                                     security=security(peer_id, pairs)) for peer_id in ids}
    try:
        assert len(authenticator_threads()) == 1
        for peer_id, transport in transports.items():
            for neighbour in ring[peer_id]:
                assert transport.send(neighbour, [peer_id.encode()])
        for peer_id, transport in transports.items():
            heard = set()
            for _ in ring[peer_id]:
                received = await receive_one(transport)
                assert received.sender == received.frames[0].bytes.decode()
                heard.add(received.sender)
            assert heard == set(ring[peer_id])
        with pytest.raises(zmq.ZMQError):
            bind_zap_endpoint(context).close()  # the shared handler holds it
    finally:
        for transport in transports.values():
            transport.close()
    assert authenticator_threads() == []
    bind_zap_endpoint(context).close()  # the handler left with the last secure transport


@pytest.mark.asyncio
async def test_the_authenticator_starts_again_after_the_last_transport_closed(context, pairs):
    for _ in range(2):
        # Fresh ports each time: libzmq releases a closed socket's port a little later.
        a_end, b_end = endpoints("tcp", 2, Path())
        a = ZmqTransport(context, a_end, {"p1": b_end}, security=security("p0", pairs))
        b = ZmqTransport(context, b_end, {}, security=security("p1", pairs))
        try:
            assert a.send("p1", [b"hello"])
            assert (await receive_one(b)).sender == "p0"
        finally:
            a.close()
            b.close()
        assert authenticator_threads() == []


@pytest.mark.asyncio
async def test_each_transport_admits_only_its_own_list_even_in_a_shared_context(context, pairs):
    only_p1_end, only_p2_end = endpoints("tcp", 2, Path())
    only_p1 = ZmqTransport(context, only_p1_end, {}, security=security("p0", pairs, listed=["p1"]))
    only_p2 = ZmqTransport(context, only_p2_end, {}, security=security("p3", pairs, listed=["p2"]))
    to_wrong = RawClient(context, only_p1_end, pair=pairs["p2"], server_key=pairs["p0"][0])
    to_right = RawClient(context, only_p2_end, pair=pairs["p2"], server_key=pairs["p3"][0])
    try:
        to_wrong.send(b"listed by the other transport only")
        assert to_wrong.handshake_outcome() == "failed: not admitted"
        to_right.send(b"listed here")
        assert (await receive_one(only_p2)).sender == "p2"
        await assert_listed_peer_still_gets_in(context, only_p1, only_p1_end, pairs, "p1")
    finally:
        for closable in (to_wrong, to_right, only_p1, only_p2):
            closable.close()


@pytest.mark.asyncio
async def test_transports_without_security_work_beside_secure_ones(context, pairs):
    secure_end, a_end, b_end = endpoints("tcp", 3, Path())
    secure = ZmqTransport(context, secure_end, {}, security=security("p0", pairs))
    a = ZmqTransport(context, a_end, {"b": b_end})
    b = ZmqTransport(context, b_end, {})
    try:
        assert not a.secure
        assert a.send("b", [b"plain"])
        received = await receive_one(b)
        assert received.frames[0].bytes == b"plain"
        assert received.sender is None
    finally:
        for transport in (secure, a, b):
            transport.close()


def test_no_sender_is_proven_without_frame_metadata():
    assert _proven_sender([]) is None
    assert _proven_sender([b"copied to bytes"]) is None
    assert _proven_sender([zmq.Frame(b"never received")]) is None


def test_inproc_endpoints_are_refused_because_curve_never_runs_on_them(context, pairs):
    with pytest.raises(TransportError, match="inproc"):
        ZmqTransport(context, "inproc://secure-listener", {}, security=security("p0", pairs))
    (end,) = endpoints("tcp", 1, Path())
    with pytest.raises(TransportError, match="inproc"):
        ZmqTransport(context, end, {"p1": "inproc://p1"}, security=security("p0", pairs))
    assert authenticator_threads() == []


def test_a_neighbour_without_a_public_key_is_an_error(context, pairs):
    a_end, b_end = endpoints("tcp", 2, Path())
    with pytest.raises(TransportError, match="no public key for out-neighbour"):
        ZmqTransport(context, a_end, {"p1": b_end}, security=security("p0", pairs, listed=["p0"]))
    assert authenticator_threads() == []


def test_a_taken_port_leaves_no_authenticator_behind(context, pairs):
    (end,) = endpoints("tcp", 1, Path())
    first = ZmqTransport(context, end, {}, security=security("p0", pairs))
    try:
        with pytest.raises(TransportError, match="Another process may hold the port"):
            ZmqTransport(context, end, {}, security=security("p1", pairs))
        assert len(authenticator_threads()) == 1
    finally:
        first.close()
    assert authenticator_threads() == []


def test_a_context_with_another_zap_handler_is_refused(context, pairs):
    (end,) = endpoints("tcp", 1, Path())
    foreign = bind_zap_endpoint(context)
    try:
        with pytest.raises(TransportError, match="ZAP handler"):
            ZmqTransport(context, end, {}, security=security("p0", pairs))
    finally:
        foreign.close()


def test_transports_of_one_context_must_agree_on_who_owns_a_key(context, pairs):
    a_end, b_end = endpoints("tcp", 2, Path())
    a = ZmqTransport(context, a_end, {}, security=security("p0", pairs))
    swapped = dict(pairs, p1=pairs["p2"], p2=pairs["p1"])
    try:
        with pytest.raises(TransportError, match="disagree"):
            ZmqTransport(context, b_end, {}, security=security("p0", swapped))
    finally:
        a.close()


def test_security_checks_its_keys_and_never_shows_the_secret(pairs):
    public, secret = pairs["p0"]
    assert secret not in repr(security("p0", pairs))
    with pytest.raises(TransportError, match="does not belong"):
        CurveSecurity(public_key=pairs["p1"][0], secret_key=secret, peer_keys={})
    with pytest.raises(TransportError, match="same public key"):
        CurveSecurity(public_key=public, secret_key=secret, peer_keys={"p0": public, "p1": public})
    with pytest.raises(TransportError, match="40 Z85") as error:
        CurveSecurity(public_key=public, secret_key=secret[:-1], peer_keys={})
    assert secret[:-1] not in str(error.value)
    with pytest.raises(TransportError, match="Z85"):
        CurveSecurity(public_key=public, secret_key=secret, peer_keys={"p1": "~" * 40})


def authenticator_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if isinstance(t, AuthenticationThread) and t.is_alive()]


def bind_zap_endpoint(context) -> zmq.Socket:
    sock = zmq.Context.shadow(context.underlying).socket(zmq.REP)
    sock.linger = 0
    try:
        sock.bind(ZAP_ENDPOINT)
    except zmq.ZMQError:
        sock.close()
        raise
    return sock


@pytest.mark.asyncio
@pytest.mark.parametrize("alone_on_loop", [False, True])
async def test_a_large_first_message_arrives_whole_after_the_credential(context, pairs, alone_on_loop):
    # libzmq queues an authenticated connection's credential (its User-Id) just before the first
    # message. When that message spans several reads, the credential alone is flushed first: poll
    # says readable, recv finds nothing yet. receive must wait on instead of failing.
    (end,) = endpoints("tcp", 1, Path())
    server = ZmqTransport(context, end, {}, security=security("p0", pairs), alone_on_loop=alone_on_loop)
    client = RawClient(context, end, pair=pairs["p1"], server_key=pairs["p0"][0])
    try:
        large = [b"h", bytes(4 << 20), bytes(range(256)) * 4096]
        client.send(*large)  # queued until the handshake ends, while receive already waits
        received = await receive_one(server)
        assert [f.bytes for f in received.frames] == large
        assert received.sender == "p1"
    finally:
        client.close()
        server.close()


# ---- large tensors in chunks, through whole peers -------------------------------------------


def test_two_secured_peers_average_a_model_larger_than_a_chunk_exactly(tmp_path):
    # Over CurveZMQ the weight travels in three chunks; a peer whose limits or reassembly were wrong
    # would reject it, miss its neighbour and keep its own model instead of the mean.
    topology = generate("complete", 2, base_port=free_port_block(2))
    keys.generate(topology, tmp_path / "keys")
    rows = 2 * wire.SECURE_CHUNK_BYTES // (4 * 256) + 1  # float32 [rows, 256]: two chunks and a row
    models = {}
    for index, peer_id in enumerate(topology.ids):
        torch.manual_seed(index)
        models[peer_id] = torch.nn.Linear(256, rows)
    mean = {name: (models["p0"].state_dict()[name] + models["p1"].state_dict()[name]) / 2
            for name in ("weight", "bias")}
    peers = {peer_id: p2ptrain.Peer(topology, model, peer=peer_id, keys=str(tmp_path / "keys"),
                                    out=str(tmp_path / peer_id), run_id="chunks", recv_timeout=20)
             for peer_id, model in models.items()}
    try:
        exchange_together(peers.values())
        for peer_id, peer in peers.items():
            assert peer.node.chunk == wire.SECURE_CHUNK_BYTES and peer.node.stats.rejected == {}
            assert peer.node.last["heard"] == [other for other in topology.ids if other != peer_id]
            for name, expected in mean.items():
                assert torch.equal(models[peer_id].state_dict()[name], expected), f"{peer_id} {name}"
    finally:
        for peer in peers.values():
            peer.close()
