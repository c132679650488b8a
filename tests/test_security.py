"""CurveZMQ: secured transports over real sockets, and the keys directory.

Every rejection test first waits, with a deadline, for the rejected client's
handshake to fail (seen on its own monitor socket), then shows that the same
transport still takes a listed peer's message: nothing is concluded from a
receive that merely timed out. Nothing sleeps to synchronise.
"""

from __future__ import annotations

import itertools
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import zmq
import zmq.asyncio
from zmq.auth.thread import AuthenticationThread
from zmq.utils.monitor import recv_monitor_message

from p2ptrain import keys, wire
from p2ptrain.topology import TopologyError, dump_topology, generate, parse_topology
from p2ptrain.transport import CurveSecurity, Received, TransportError, ZmqTransport, _proven_sender

from .conftest import free_port_block

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


@pytest.fixture
def context():
    ctx = zmq.asyncio.Context()
    yield ctx
    ctx.destroy(linger=0)


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


# ---- keys directory ------------------------------------------------------------------------


@pytest.fixture
def ring4():
    return generate("ring", 4, base_port=free_port_block(4))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_writes_a_pair_per_peer_with_private_secret_files(ring4, tmp_path, monkeypatch):
    directory = tmp_path / "keys"

    def no_chmod(*args, **kwargs):
        raise AssertionError("key files must be created with their mode, not chmod-ed afterwards")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(os, "fchmod", no_chmod)
    permissive = os.umask(0)  # with no umask to help, only the mode given at creation protects the file
    try:
        public_keys = keys.generate(ring4, directory)
    finally:
        os.umask(permissive)
    assert mode_of(directory) == 0o700
    assert sorted(public_keys) == sorted(ring4.ids)
    for peer_id in ring4.ids:
        assert mode_of(keys.secret_key_path(directory, peer_id)) == 0o600
        assert mode_of(keys.public_key_path(directory, peer_id)) == 0o644
        secret = keys.load_secret_key(directory, peer_id)
        assert zmq.curve_public(secret.encode()).decode() == public_keys[peer_id]
    assert keys.load_public_keys(directory, ring4.ids) == public_keys
    assert not list(directory.glob(".*"))  # no temporary files left


def test_generate_refuses_to_replace_keys_unless_forced(ring4, tmp_path):
    directory = tmp_path / "keys"
    first = keys.generate(ring4, directory)
    with pytest.raises(keys.KeyFileError, match="--force"):
        keys.generate(ring4, directory)
    assert keys.load_public_keys(directory, ring4.ids) == first
    keys.secret_key_path(directory, "p0").chmod(0o644)  # a loosened old file must not pass its mode on
    second = keys.generate(ring4, directory, force=True)
    assert all(second[p] != first[p] for p in ring4.ids)
    assert mode_of(keys.secret_key_path(directory, "p0")) == 0o600


def test_generate_refuses_a_directory_open_to_others(ring4, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    with pytest.raises(keys.KeyFileError, match=f"chmod 700 {shared}"):
        keys.generate(ring4, shared)
    assert list(shared.iterdir()) == []


def test_a_secret_file_others_can_read_is_refused_with_the_fix(ring4, tmp_path):
    directory = tmp_path / "keys"
    keys.generate(ring4, directory)
    path = keys.secret_key_path(directory, "p1")
    secret = path.read_text().strip()
    path.chmod(0o644)
    with pytest.raises(keys.KeyFileError, match=f"chmod 600 {path}") as error:
        keys.load_secret_key(directory, "p1")
    assert secret not in str(error.value)


@pytest.mark.parametrize("content, problem", [
    (b"", "0 characters"),
    (b"abc\n", "3 characters"),
    (b"~" * 40 + b"\n", "outside the Z85 alphabet"),
    (b"#" * 40 + b"\n", "not valid Z85"),
    (bytes(range(128, 168)), "not ASCII"),
])
@pytest.mark.parametrize("kind", ["public", "secret"])
def test_malformed_key_files_are_named_with_what_is_wrong(tmp_path, content, problem, kind):
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    path = keys.public_key_path(directory, "p0") if kind == "public" else keys.secret_key_path(directory, "p0")
    path.write_bytes(content)
    path.chmod(0o600)
    load = (lambda: keys.load_public_keys(directory, ["p0"])) if kind == "public" else \
        (lambda: keys.load_secret_key(directory, "p0"))
    with pytest.raises(keys.KeyFileError, match=problem) as error:
        load()
    assert str(path) in str(error.value)


def test_missing_key_files_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(keys.KeyFileError, match=r"p3\.public does not exist"):
        keys.load_public_keys(tmp_path, ["p3"])
    with pytest.raises(keys.KeyFileError, match=r"p3\.secret does not exist"):
        keys.load_secret_key(tmp_path, "p3")
    (tmp_path / "p4.secret").mkdir()
    os.mkfifo(tmp_path / "p5.secret", 0o600)
    for peer_id in ("p4", "p5"):
        with pytest.raises(keys.KeyFileError, match="not a regular file"):
            keys.load_secret_key(tmp_path, peer_id)


def test_load_security_refuses_a_secret_that_does_not_match_its_public_key(ring4, tmp_path):
    directory = tmp_path / "keys"
    keys.generate(ring4, directory)
    os.replace(keys.secret_key_path(directory, "p1"), keys.secret_key_path(directory, "p0"))
    with pytest.raises(keys.KeyFileError, match="does not belong"):
        keys.load_security(ring4, "p0", directory)


@pytest.mark.asyncio
async def test_generated_keys_secure_a_pair_of_peers_end_to_end(context, tmp_path):
    topology = generate("ring", 3, base_port=free_port_block(3))
    directory = tmp_path / "keys"
    keys.generate(topology, directory)
    # Each host holds its own secret only; public keys come pinned in the topology.
    pinned = parse_topology(dump_topology(keys.pin(topology, keys.load_public_keys(directory, topology.ids))))
    hosts = {}
    for peer_id in ("p0", "p1"):
        hosts[peer_id] = tmp_path / f"host-{peer_id}"
        hosts[peer_id].mkdir(mode=0o700)
        os.replace(keys.secret_key_path(directory, peer_id), keys.secret_key_path(hosts[peer_id], peer_id))
    p0 = ZmqTransport(context, pinned.peer("p0").bind, {"p1": pinned.peer("p1").endpoint},
                   security=keys.load_security(pinned, "p0", hosts["p0"]))
    p1 = ZmqTransport(context, pinned.peer("p1").bind, {}, security=keys.load_security(pinned, "p1", hosts["p1"]))
    try:
        assert p0.send("p1", [b"hello"])
        assert (await receive_one(p1)).sender == "p0"
    finally:
        p0.close()
        p1.close()


# ---- public keys pinned in a topology ------------------------------------------------------


def test_a_topology_may_pin_public_keys_and_keeps_them_through_a_round_trip(ring4, tmp_path):
    public_keys = keys.generate(ring4, tmp_path / "keys")
    pinned = parse_topology(dump_topology(keys.pin(ring4, public_keys)))
    assert {spec.id: spec.public_key for spec in pinned.peers} == public_keys
    assert keys.public_keys_of(pinned, None) == public_keys
    assert all(spec.public_key is None for spec in parse_topology(dump_topology(ring4)).peers)


def test_a_pinned_public_key_is_checked_when_the_topology_loads(ring4, tmp_path):
    public_keys = keys.generate(ring4, tmp_path / "keys")
    text = dump_topology(keys.pin(ring4, public_keys))
    with pytest.raises(TopologyError, match="not a CurveZMQ public key"):
        parse_topology(text.replace(public_keys["p2"], "short"))
    with pytest.raises(TopologyError, match="same public_key"):
        parse_topology(text.replace(public_keys["p2"], public_keys["p1"]))
    with pytest.raises(TopologyError, match="public_key must be a string"):
        parse_topology(text.replace(f'"{public_keys["p2"]}"', "42"))


def test_generate_refuses_a_topology_that_pins_other_keys(ring4, tmp_path):
    pinned = keys.pin(ring4, keys.generate(ring4, tmp_path / "old"))
    with pytest.raises(keys.KeyFileError, match="pins public keys"):
        keys.generate(pinned, tmp_path / "new")


# ---- command line --------------------------------------------------------------------------


def secrets_in(directory: Path) -> list[str]:
    return [path.read_text().strip() for path in directory.glob(f"*{keys.SECRET_SUFFIX}")]


def test_the_command_line_generates_shows_and_pins_without_printing_a_secret(ring4, tmp_path, capsys):
    topology_file = tmp_path / "ring4.toml"
    topology_file.write_text(dump_topology(ring4))
    directory = tmp_path / "keys"
    assert keys.main(["generate", "--topology", str(topology_file), "--dir", str(directory)]) == 0
    assert keys.main(["generate", "--topology", str(topology_file), "--dir", str(directory)]) == 2
    assert keys.main(["show", "--dir", str(directory)]) == 0
    pinned_file = tmp_path / "pinned.toml"
    assert keys.main(["pin", "--topology", str(topology_file), "--dir", str(directory), "-o", str(pinned_file)]) == 0
    assert keys.main(["show", "--topology", str(pinned_file)]) == 0
    output = capsys.readouterr()
    public_keys = keys.load_public_keys(directory, ring4.ids)
    assert all(key in output.out for key in public_keys.values())
    assert "--force" in output.err
    for secret in secrets_in(directory):
        assert secret not in output.out + output.err
        assert secret not in pinned_file.read_text()


def test_python_dash_m_keys_runs_and_prints_no_secret(ring4, tmp_path):
    topology_file = tmp_path / "ring4.toml"
    topology_file.write_text(dump_topology(ring4))
    directory = tmp_path / "keys"
    result = subprocess.run(
        [sys.executable, "-m", "p2ptrain.keys", "generate", "--topology", str(topology_file), "--dir", str(directory)],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert "p0" in result.stdout
    assert all(secret not in result.stdout + result.stderr for secret in secrets_in(directory))


@pytest.mark.asyncio
async def test_a_large_first_message_arrives_whole_after_the_credential(context, pairs):
    # libzmq queues an authenticated connection's credential (its User-Id) just before the first
    # message. When that message spans several reads, the credential alone is flushed first: poll
    # says readable, recv finds nothing yet. receive must wait on instead of failing.
    (end,) = endpoints("tcp", 1, Path())
    server = ZmqTransport(context, end, {}, security=security("p0", pairs))
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
