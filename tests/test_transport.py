"""The transport over real ZeroMQ sockets; every kind of endpoint passes the same tests."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time

import pytest
import torch

from p2ptrain import wire
from p2ptrain.ports import free_port_block
from p2ptrain.transport import SEND_QUEUE, WAIT_SLICE_SECONDS, MessageLimits, TransportError, ZmqTransport


_names = itertools.count()


def endpoints(kind: str, count: int, tmp_path) -> list[str]:
    if kind == "tcp":
        base = free_port_block(count)
        return [f"tcp://127.0.0.1:{base + i}" for i in range(count)]
    if kind == "ipc":
        return [f"ipc://{tmp_path}/peer{i}.sock" for i in range(count)]
    return [f"inproc://peer{next(_names)}" for _ in range(count)]


KINDS = ["tcp", "ipc", "inproc"]


@pytest.fixture
def pair(context, tmp_path):
    """make(kind) -> (a, b): a transport that sends to b, and b, which sends back to a if ``replies``;
    ``a_options`` and the other keywords go to a's and b's constructors. Both are closed after the test."""
    made = []

    def make(kind: str, replies: bool = True, a_options: dict | None = None, **b_options):
        a_end, b_end = endpoints(kind, 2, tmp_path)
        a = ZmqTransport(context, a_end, {"b": b_end}, **(a_options or {}))
        b = ZmqTransport(context, b_end, {"a": a_end} if replies else {}, **b_options)
        made.extend((a, b))
        return a, b

    yield make
    for transport in made:
        transport.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_a_message_arrives_whole_and_decodes(kind, pair):
    a, b = pair(kind)
    tensors = {"w": torch.randn(256, 64), "b": torch.arange(10, dtype=torch.int64)}
    frames = wire.encode(kind="params", sender="a", run_id="r", round=0, fingerprint="x", tensors=tensors)
    assert a.send("b", frames)
    got = await b.receive(timeout=10)
    assert got.sender is None  # no security: nothing but the header names the sender
    message = wire.decode(got.frames, wire.Contract("r", "x", frozenset({"a"}), wire.specs_of(tensors)))
    assert all(torch.equal(message.tensors[k], tensors[k]) for k in tensors)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("alone_on_loop", [False, True])
async def test_receive_returns_none_at_its_deadline(kind, context, tmp_path, alone_on_loop):
    (end,) = endpoints(kind, 1, tmp_path)
    t = ZmqTransport(context, end, {}, alone_on_loop=alone_on_loop)
    started = time.monotonic()
    assert await t.receive(timeout=0.3) is None
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 5  # it waited, and it came back
    t.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_a_receive_waiting_on_an_empty_queue_wakes_when_a_message_arrives(kind, pair):
    a, b = pair(kind)
    tensors = {"w": torch.randn(3, 4)}
    contract = wire.Contract("r", "x", frozenset({"a"}), wire.specs_of(tensors))
    for round_ in range(3):  # the socket's signal is cleared and set again each time
        waiting = asyncio.create_task(b.receive(timeout=30))
        await asyncio.sleep(0)  # the receive finds the queue empty and waits on the socket
        assert not waiting.done()
        assert a.send("b", wire.encode(kind="params", sender="a", run_id="r", round=round_, fingerprint="x",
                                       tensors=tensors))
        # Woken by the message, not by the deadline (at the deadline the receive returns None).
        got = await asyncio.wait_for(waiting, timeout=30)
        assert got is not None and wire.decode(got.frames, contract).round == round_


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_peers_may_start_in_any_order(kind, context, tmp_path):
    a_end, b_end = endpoints(kind, 2, tmp_path)
    a = ZmqTransport(context, a_end, {"b": b_end})
    assert a.send("b", [b"early"])  # b is not listening yet
    b = ZmqTransport(context, b_end, {})
    got = await b.receive(timeout=10)
    assert got is not None and got.frames[0].bytes == b"early"
    a.close()
    b.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["tcp", "ipc"])
async def test_sending_to_a_peer_that_is_gone_never_blocks(kind, context, tmp_path):
    a_end, gone = endpoints(kind, 2, tmp_path)
    a = ZmqTransport(context, a_end, {"gone": gone}, linger_seconds=0)
    results = [a.send("gone", [b"x" * 1000]) for _ in range(SEND_QUEUE * 4)]
    assert results[0] is True
    assert results[-1] is False  # the queue filled, and the send said so instead of waiting
    a.close()


def test_an_endpoint_that_cannot_be_dialled_is_named_and_leaves_no_socket_to_hold_the_context():
    import zmq.asyncio

    context = zmq.asyncio.Context()
    base = free_port_block(1)
    with pytest.raises(TransportError, match=r"cannot connect to p0 at tcp://\*:1: .*fix its endpoint"):
        ZmqTransport(context, f"tcp://127.0.0.1:{base}", {"p0": "tcp://*:1"})
    context.term()  # returns at once: the socket that failed to connect was closed (it left a peer hanging here)


@pytest.mark.asyncio
async def test_ipv6_endpoints_carry_messages(context):
    if not socket.has_ipv6 or not _ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1)")
    base = free_port_block(2)
    a_end, b_end = f"tcp://[::1]:{base}", f"tcp://[::1]:{base + 1}"
    a, b = ZmqTransport(context, a_end, {"b": b_end}), ZmqTransport(context, b_end, {})
    try:
        assert a.send("b", [b"over IPv6"])
        received = await b.receive(10)
        assert received is not None and bytes(received.frames[0]) == b"over IPv6"
    finally:
        a.close()
        b.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_a_taken_port_gives_an_error_that_says_what_to_do(context):
    base = free_port_block(1)
    first = ZmqTransport(context, f"tcp://127.0.0.1:{base}", {})
    with pytest.raises(TransportError, match="Another process may hold the port"):
        ZmqTransport(context, f"tcp://127.0.0.1:{base}", {})
    first.close()


@pytest.mark.asyncio
async def test_ipc_socket_file_is_created(context, tmp_path):
    (end,) = endpoints("ipc", 1, tmp_path)
    t = ZmqTransport(context, end, {})
    assert os.path.exists(end[len("ipc://"):])
    t.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_queued_messages_come_in_order_without_waiting(kind, pair):
    a, b = pair(kind, replies=False)
    for i in range(5):
        assert a.send("b", [b"%d" % i, b"x" * i])
    first = await b.receive(timeout=10)  # waits for the first; the rest are queued behind it
    rest = [await b.receive(timeout=0) for _ in range(4)]
    assert [[f.bytes for f in got.frames] for got in [first, *rest]] == [[b"%d" % i, b"x" * i] for i in range(5)]
    assert all(got.excess is None for got in [first, *rest])
    assert await b.receive(timeout=0) is None


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_a_message_over_the_limits_is_cut_off_and_the_next_one_arrives_whole(kind, pair):
    a, b = pair(kind, replies=False, limits=MessageLimits(frames=3, total_bytes=1000))
    assert a.send("b", [b"head"] + [b""] * 100_000)  # too many frames
    assert a.send("b", [b"head", b"y" * 600, b"z" * 600])  # too many bytes, in few frames
    assert a.send("b", [b"next", b"y" * 400, b"z" * 400])  # within both
    many = await b.receive(timeout=10)
    assert [f.bytes for f in many.frames] == [b"head"]
    assert many.excess.startswith("a message of 100001 frames and 4 bytes;")
    large = await b.receive(timeout=10)
    assert large.excess.startswith("a message of 3 frames and 1204 bytes;")
    within = await b.receive(timeout=10)
    assert within.excess is None and [f.bytes for f in within.frames] == [b"next", b"y" * 400, b"z" * 400]


def resident_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


@pytest.mark.asyncio
async def test_a_message_of_many_empty_frames_leaves_no_memory_behind(pair):
    a, b = pair("tcp", replies=False, limits=MessageLimits(frames=3, total_bytes=1 << 20))
    assert a.send("b", [b"warm", b"up"])  # connections and buffers made before the first reading
    assert (await b.receive(timeout=10)).excess is None
    before = resident_mib()
    assert a.send("b", [b"head"] + [b""] * 300_000)
    got = await b.receive(timeout=60)
    assert got.excess.startswith("a message of 300001 frames and 4 bytes;")
    # ZeroMQ held the message (some 64 bytes a frame) until it was read; none of it stays.
    assert resident_mib() - before < 10


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_a_queue_that_drained_takes_the_next_message_however_fast_they_come(kind, pair):
    # Ping-pong at thousands of messages a second: never more than one in flight, so no send may be
    # refused. libzmq tells a socket its queue drained by commands a throttled send read only about
    # once a millisecond, so once the queue had seen SEND_QUEUE messages it looked full.
    a, b = pair(kind)
    for index in range(50 * SEND_QUEUE):
        payload = index.to_bytes(4, "little")
        assert a.send("b", [payload]), f"message {index} refused with none in flight"
        assert (await b.receive(timeout=10)).frames[0].bytes == payload
        assert b.send("a", [payload]), f"reply {index} refused with none in flight"
        assert (await a.receive(timeout=10)).frames[0].bytes == payload


@pytest.mark.asyncio
async def test_a_transport_alone_on_its_loop_still_gives_the_loop_a_turn_while_it_waits(pair):
    # It waits in ZeroMQ's poll, blocking the loop a slice at a time: what the loop has to do (here,
    # a cancellation, as a signal handler does) happens within a slice, not at the deadline.
    a, b = pair("tcp", a_options={"alone_on_loop": True})
    assert b.send("a", [b"first"])
    assert (await a.receive(timeout=10)).frames[0].bytes == b"first"
    waiting = asyncio.ensure_future(a.receive(timeout=30))
    asyncio.get_running_loop().call_later(0.2, waiting.cancel)
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert time.monotonic() - started < 0.2 + 10 * WAIT_SLICE_SECONDS
