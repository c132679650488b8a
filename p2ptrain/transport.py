"""How a peer moves messages: the ``Transport`` interface, and its ZeroMQ implementation (one PULL socket
it listens on, one PUSH socket per out-neighbour).

A transport moves multipart messages and nothing else: it does not parse
them and knows nothing of rounds or models. Sends never block (a neighbour
that is gone must not stall the sender); receives always carry a deadline
and hand over, with the frames, who sent them as far as the connection
proves it. memory.py implements the same interface without sockets.

Why PUSH/PULL: every message is one-way (a peer's parameters for one round),
PULL fair-queues between neighbours so a chatty one cannot starve the rest,
and PUSH queues messages for a neighbour that has not bound yet and delivers
them when it does, so peers can start in any order.

Security: without a ``CurveSecurity`` the sockets use ZeroMQ's NULL mechanism
(anyone who can reach the port can send). With one, the PULL socket is a
CurveZMQ server that admits only the listed peers' public keys, every PUSH
socket a CurveZMQ client, and each received message carries the id of the
peer whose key its connection proved (``Received.sender``).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import itertools
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Protocol, Sequence

import zmq
import zmq.asyncio
from zmq.auth.base import Authenticator
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

# Messages queued per neighbour before sends to it are dropped. Synchronous
# gossip keeps neighbours within a round or two of each other, so a deeper
# queue only means stale parameters held in memory for a peer that is gone.
SEND_QUEUE = 8
# Frames smaller than this are copied into ZeroMQ's message when sent rather than lent to it: pyzmq
# keeps a lent buffer alive until libzmq releases it, through a thread of its own, which costs more
# than copying a small frame (a 64 KiB message sent and received in one loop: 122 µs lent, 47 µs copied).
COPY_BELOW_BYTES = 1 << 18
# A transport alone on its event loop waits in ZeroMQ's poll at most this long before giving the loop
# a turn: how late a signal handler or a cancellation may run while a peer waits for its neighbours.
WAIT_SLICE_SECONDS = 0.05
# A connection that answers no ping for HEARTBEAT_TIMEOUT_SECONDS is closed (and redialled).
HEARTBEAT_SECONDS = 1
HEARTBEAT_TIMEOUT_SECONDS = 5

# A CurveZMQ key (public or secret) is 32 bytes, written as 40 Z85 characters.
KEY_LENGTH = 40
_Z85_ALPHABET = frozenset(z85.Z85CHARS.decode("ascii"))


class TransportError(RuntimeError):
    pass


@dataclass(frozen=True)
class Received:
    """One message as it arrived: its frames, and the peer whose key its connection proved.

    ``sender`` is None without security: then nothing but the header says who sent it."""

    frames: Sequence
    sender: str | None = None
    # Why the message broke the transport's ``MessageLimits``, or None. Such a message is handed over
    # only to be counted and rejected: ``frames`` then holds its first frame, the rest was discarded.
    excess: str | None = None


@dataclass(frozen=True)
class MessageLimits:
    """What one message may hold: at most ``frames`` frames and ``total_bytes`` bytes in all.

    Checked as the frames are read: once a message is over either, the rest of its frames are read
    and dropped one by one (none is kept) and the message is handed over as excessive.
    ZeroMQ's own limit (``max_frame_bytes``, ZMQ_MAXMSGSIZE) caps each frame before it is read at all."""

    frames: int
    total_bytes: int


UNLIMITED = MessageLimits(frames=2**62, total_bytes=2**62)


class Transport(Protocol):
    """What a peer needs from the network; the peer never sees sockets."""

    secure: bool  # senders are proven (CurveZMQ): Received.sender is set
    public_key: str | None  # this peer's, when secure
    closed: bool

    def send(self, peer_id: str, frames: Sequence, copy: bool = False) -> bool:
        """Queue one message for an out-neighbour without blocking; False if it could not be queued."""

    async def receive(self, timeout: float) -> Received | None:
        """The next message, or None if none arrives within ``timeout`` seconds (0: only one already here)."""

    def close(self, abandon: Iterable[str] = ()) -> None:
        """Release the connections; queued messages to the ``abandon``ed neighbours are dropped at once."""


def curve_key_problem(text: str) -> str | None:
    """What is wrong with ``text`` as a Z85 CurveZMQ key, or None if it is one.

    The answer never quotes the text: it may be a secret key."""
    if len(text) != KEY_LENGTH:
        return f"it has {len(text)} characters; a key has {KEY_LENGTH} Z85 characters"
    if not set(text) <= _Z85_ALPHABET:
        return "it has characters outside the Z85 alphabet"
    # Five Z85 characters encode one 32-bit word; larger values are not Z85 at all.
    for start in range(0, KEY_LENGTH, 5):
        value = 0
        for char in text[start:start + 5]:
            value = value * 85 + z85.Z85MAP[ord(char)]
        if value >= 2**32:
            return "it is not valid Z85 (a 5-character group exceeds 32 bits)"
    return None


@dataclass(frozen=True)
class CurveSecurity:
    """One peer's CurveZMQ credentials and the public keys of the peers it may talk to.

    ``peer_keys`` maps peer ids to Z85 public keys: the listening socket admits
    exactly these keys, and each PUSH socket takes its neighbour's entry as the
    server key. All keys are Z85 text (40 characters)."""

    public_key: str
    secret_key: str = field(repr=False)  # kept out of repr: reprs end up in logs and tracebacks
    peer_keys: Mapping[str, str]

    def __post_init__(self):
        require_curve_support()
        _require_key(self.public_key, "this peer's public key")
        _require_key(self.secret_key, "this peer's secret key")
        if zmq.curve_public(self.secret_key.encode("ascii")).decode("ascii") != self.public_key:
            raise TransportError("this peer's secret key does not belong to its public key; "
                                 "load both from the same key pair")
        owners: dict[str, str] = {}
        for peer_id, key in self.peer_keys.items():
            _require_key(key, f"the public key of {peer_id!r}")
            if key in owners:
                # The key is the identity: one key for two ids would make the sender ambiguous.
                raise TransportError(f"peers {owners[key]!r} and {peer_id!r} have the same public key; "
                                     "give every peer its own key pair")
            owners[key] = peer_id
        # A copy: the caller's mapping changing later must not change what was checked.
        object.__setattr__(self, "peer_keys", dict(self.peer_keys))


def require_curve_support() -> None:
    if not zmq.has("curve"):
        raise TransportError(f"this libzmq ({zmq.zmq_version()}) was built without CurveZMQ; "
                             "install a pyzmq whose bundled libzmq has it (the wheels from PyPI do)")


def _require_key(text: str, what: str) -> None:
    problem = curve_key_problem(text) if isinstance(text, str) else "it is not a string"
    if problem:
        raise TransportError(f"{what} is not a CurveZMQ key: {problem}")


def _proven_sender(frames: Sequence) -> str | None:
    """The id of the peer whose key the CurveZMQ handshake of this message's connection proved.

    None when the message came over a connection without CurveZMQ or when the
    frames lost their metadata. A peer compares this with the sender named in
    the message header: a listed key that claims another peer's id is caught
    there, since the authenticator only checks that the key is listed."""
    if not frames or not isinstance(frames[0], zmq.Frame):
        return None
    try:
        user_id = frames[0].get("User-Id")
    except zmq.ZMQError:  # the connection carried no User-Id: no ZAP handler passed on it
        return None
    return user_id or None


class ZmqTransport:
    """The ``Transport`` of a peer over ZeroMQ sockets."""

    def __init__(
        self,
        context: zmq.asyncio.Context,
        bind: str,
        out_neighbours: Mapping[str, str],
        *,
        linger_seconds: float = 2.0,
        max_message_bytes: int = -1,
        security: CurveSecurity | None = None,
        limits: MessageLimits = UNLIMITED,
        alone_on_loop: bool = False,
    ):
        self.secure = security is not None
        self.alone_on_loop = alone_on_loop
        self.public_key = security.public_key if security is not None else None
        self._admission: _Admission | None = None
        if security is not None:
            _check_security_applies(bind, out_neighbours, security)
            # The ZAP handler must run before the socket binds: libzmq admits
            # any CURVE client when no handler is there to ask.
            self._admission = _Admission(context, security.peer_keys)
        try:
            self._pull = _listening_socket(context, bind, max_message_bytes, security, self._admission)
        except BaseException:
            self._leave_admission()
            raise
        # Reads of what is already queued go through a blocking-API view of the same socket: a
        # read that needs no waiting then costs no future and no trip through the event loop.
        self._reader = zmq.Socket.shadow(self._pull.underlying)
        self._signal_fd = self._reader.get(zmq.FD)
        self.limits = limits
        # Sends use a blocking-API socket on the same context so that a full
        # queue raises zmq.Again at once instead of returning a pending future.
        sync_context = zmq.Context.shadow(context.underlying)
        try:
            self._push = _sending_sockets(sync_context, out_neighbours, linger_seconds, security)
        except BaseException:
            self._pull.close()
            self._leave_admission()
            raise
        self.closed = False

    def send(self, peer_id: str, frames: Sequence, copy: bool = False) -> bool:
        """Queue one message for ``peer_id`` without blocking; False if its queue is full.

        With ``copy`` False ZeroMQ reads the memory of frames of COPY_BELOW_BYTES
        or more in place whenever the message goes out (over inproc the receiver
        reads that very memory), so the caller must not change it afterwards;
        smaller frames are copied now. With ``copy`` True ZeroMQ
        copies the bytes now: for frames over buffers the caller reuses, such
        as ``Staging.to_host``'s."""
        sock = self._push[peer_id]
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=copy)
            return True
        except zmq.Again:
            pass
        # The queue may only look full. libzmq learns that the neighbour's end took messages from
        # commands its I/O thread posts to the socket, and a send reads them only when about a
        # millisecond has passed since it last did: at a thousand sends a second, a queue long
        # drained stayed "full" and a round's message was dropped. Asking for ZMQ_EVENTS reads them
        # all; if there is room then, the message goes.
        if not sock.getsockopt(zmq.EVENTS) & zmq.POLLOUT:
            return False
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=copy)
            return True
        except zmq.Again:
            return False

    async def receive(self, timeout: float) -> Received | None:
        """The next message, or None if none arrives within the timeout.

        A message already queued is read at once, without awaiting anything; only an empty queue
        waits until something is readable or the deadline passes. A transport ``alone_on_loop`` (a
        peer process, an API Peer: nothing else runs on its event loop) waits in ZeroMQ's own poll,
        blocking the loop for at most WAIT_SLICE_SECONDS at a time and giving it a turn in between.
        Others (peers sharing one loop) wait on the event loop (``_signalled``), which lets it run the
        other peers meanwhile but costs a trip through the loop for every wake-up, the larger part of
        the fixed cost of a small message (performance.md)."""
        received = self._read_queued()
        deadline = time.monotonic() + max(timeout, 0)
        while received is None and (remaining := deadline - time.monotonic()) > 0:
            if self.alone_on_loop:
                if not self._reader.poll(timeout=math.ceil(min(remaining, WAIT_SLICE_SECONDS) * 1000),
                                         flags=zmq.POLLIN):
                    await asyncio.sleep(0)  # the loop's turn: a signal's handler, a cancellation
                    continue
            elif not await self._signalled(remaining):
                return None
            # After a ZAP handshake libzmq queues the connection's credential (its User-Id) just
            # before the first message. When that message spans several reads, the credential alone
            # becomes visible first: poll says readable and the read finds nothing yet. Then the
            # loop waits again for the rest of the deadline.
            received = self._read_queued()
        return received

    async def _signalled(self, timeout: float) -> bool:
        """Whether the socket signalled readable within ``timeout`` seconds (a message may be queued).

        Waits on ZeroMQ's file descriptor of the socket directly, one reader callback and one timer on
        the event loop, rather than through pyzmq's asyncio poll (a poller, two futures and their
        callbacks per wait): with hundreds of peers on one loop that was a tenth of a round. The
        descriptor only says that the socket's state may have changed; EVENTS says whether a message
        is there, and asking it also clears the signal, so it is asked once the reader is in place
        (nothing that arrives after is missed). One receive at a time: a peer has one reading task."""
        loop = asyncio.get_running_loop()
        woken = loop.create_future()

        def wake(readable: bool) -> None:
            if not woken.done():
                woken.set_result(readable)

        try:
            loop.add_reader(self._signal_fd, wake, True)
        except NotImplementedError:  # a loop without readers (Windows' proactor): pyzmq's poll copes
            return bool(await self._pull.poll(timeout=math.ceil(timeout * 1000), flags=zmq.POLLIN))
        timer = loop.call_later(timeout, wake, False)
        try:
            if self._reader.get(zmq.EVENTS) & zmq.POLLIN:
                return True
            return await woken
        finally:
            timer.cancel()
            loop.remove_reader(self._signal_fd)

    def _read_queued(self) -> Received | None:
        """The message at the head of the queue, read frame by frame within the limits; None if the
        queue is empty. ZeroMQ delivers a multipart message whole, so its later frames are all there."""
        try:
            first = self._reader.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        # Without security there is no handshake to prove anything (inproc has none at all).
        sender = _proven_sender([first]) if self.secure else None
        frames, total = [first], len(first)
        more = first.more
        while more and len(frames) < self.limits.frames and total <= self.limits.total_bytes:
            frame = self._reader.recv(zmq.NOBLOCK, copy=False)
            frames.append(frame)
            total += len(frame)
            more = frame.more
        if more or total > self.limits.total_bytes:
            return Received(frames[:1], sender, self._discard_rest(len(frames), total, more))
        return Received(frames, sender)

    def _discard_rest(self, count: int, total: int, more: bool) -> str:
        """Read the rest of an excessive message, keeping none of it; why it was excessive."""
        while more:
            # Each frame is dropped as soon as it is read: a frame object's cost is time, not memory,
            # and reading one is faster than asking ZeroMQ whether more follow (recv_into + RCVMORE).
            frame = self._reader.recv(zmq.NOBLOCK, copy=False)
            total += len(frame)
            count += 1
            more = frame.more
        # ZeroMQ held the whole message before the first frame could be read; the heap it
        # freed now goes back to the system rather than staying in this process for good.
        _return_freed_memory()
        return (f"a message of {count} frames and {total} bytes; a message of this peer's run has at most "
                f"{self.limits.frames} frames and {self.limits.total_bytes} bytes (the rest was read and dropped)")

    def close(self, abandon: Iterable[str] = ()) -> None:
        """Close the sockets. Messages queued for live neighbours are still delivered
        for up to the linger when the context terminates; those for the ``abandon``ed
        ones (neighbours believed dead) are dropped at once instead of holding up the exit."""
        if self.closed:
            return
        self.closed = True
        self._pull.close()
        abandoned = set(abandon)
        for peer_id, sock in self._push.items():
            sock.close(linger=0 if peer_id in abandoned else None)
        self._leave_admission()

    def _leave_admission(self) -> None:
        if self._admission is not None:
            self._admission.close()
            self._admission = None


def _listening_socket(context, bind: str, max_message_bytes: int, security: CurveSecurity | None,
                      admission: _Admission | None) -> zmq.Socket:
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    _allow_ipv6(pull, bind)
    if max_message_bytes > 0:
        pull.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    _heartbeat(pull)
    if security is not None:
        pull.curve_server = True
        pull.curve_secretkey = security.secret_key.encode("ascii")
        # The domain routes this socket's handshakes to its own list of keys in the shared handler.
        pull.zap_domain = admission.domain.encode("ascii")
    try:
        pull.bind(bind)
    except zmq.ZMQError as error:
        pull.close()
        raise TransportError(
            f"cannot listen on {bind}: {error}. Another process may hold the port "
            "(an earlier run still going?), or the host is not an address of this machine; "
            "stop it, pick other ports in the topology file, or set bind = \"tcp://0.0.0.0:PORT\" for the peer"
        ) from None
    return pull


def _return_freed_memory() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim), where there is one."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # glibc only
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _glibc()


def _heartbeat(sock: zmq.Socket) -> None:
    """ZMTP pings on every connection. A TCP connection across a link that went down otherwise stays
    open, and traffic resumes only at TCP's next retransmission, which backs off for as long as the
    outage lasted; with pings, a silent connection is dropped and redialled once the link is back.
    The pings are answered by ZeroMQ's I/O thread, so a peer busy training is never taken for dead."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_SECONDS * 1000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_SECONDS * 1000)


def _sending_sockets(sync_context: zmq.Context, out_neighbours: Mapping[str, str], linger_seconds: float,
                     security: CurveSecurity | None) -> dict[str, zmq.Socket]:
    sockets: dict[str, zmq.Socket] = {}
    try:
        for peer_id, endpoint in out_neighbours.items():
            sockets[peer_id] = _sending_socket(sync_context, endpoint, linger_seconds, security, peer_id)
    except BaseException:
        for sock in sockets.values():
            sock.close(linger=0)  # nothing was sent yet
        raise
    return sockets


def _sending_socket(sync_context: zmq.Context, endpoint: str, linger_seconds: float,
                    security: CurveSecurity | None, peer_id: str) -> zmq.Socket:
    sock = sync_context.socket(zmq.PUSH)
    sock.copy_threshold = COPY_BELOW_BYTES
    sock.setsockopt(zmq.SNDHWM, SEND_QUEUE)
    # Bounded: deliver what is queued to live neighbours, give up on dead ones.
    sock.setsockopt(zmq.LINGER, int(linger_seconds * 1000))
    _heartbeat(sock)
    _allow_ipv6(sock, endpoint)
    if security is not None:
        sock.curve_publickey = security.public_key.encode("ascii")
        sock.curve_secretkey = security.secret_key.encode("ascii")
        sock.curve_serverkey = security.peer_keys[peer_id].encode("ascii")
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as error:
        # Closed now: an open socket would hold up the context's termination, and the peer would never end.
        sock.close(linger=0)
        raise TransportError(f"cannot connect to {peer_id} at {endpoint}: {error}; fix its endpoint in the "
                             "topology file") from None
    return sock


def _allow_ipv6(sock: zmq.Socket, address: str) -> None:
    """IPv6 for an address with a bracketed host (tcp://[fd00::1]:PORT): ZeroMQ speaks IPv4 only by default."""
    if address.startswith("tcp://["):
        sock.setsockopt(zmq.IPV6, 1)


def _check_security_applies(bind: str, out_neighbours: Mapping[str, str], security: CurveSecurity) -> None:
    """Refuse a secure transport that could not be secure, before any socket exists."""
    # inproc connections skip the ZMTP handshake, so CurveZMQ never runs on
    # them: a "secure" inproc socket would admit anyone and prove no sender.
    for endpoint in (bind, *out_neighbours.values()):
        if endpoint.startswith("inproc://"):
            raise TransportError(
                f"{endpoint}: CurveZMQ does not apply to inproc:// endpoints (they have no handshake); "
                "use tcp:// or ipc:// endpoints for a secured swarm, or run without keys"
            )
    missing = [peer_id for peer_id in out_neighbours if peer_id not in security.peer_keys]
    if missing:
        raise TransportError(
            f"no public key for out-neighbour(s) {', '.join(missing)}; a secured peer needs every "
            "neighbour's public key (generate them with python -m p2ptrain.keys generate)"
        )


# ---- ZAP: one authenticator per ZeroMQ context -------------------------------------------
#
# libzmq asks the ZAP handler bound at inproc://zeromq.zap.01 of a context to
# admit every CURVE handshake of that context's sockets, and only one handler
# can bind there. Transports of peers that share a context (the in-process
# runner) therefore share one authenticator. Each transport gets a ZAP domain
# of its own, set on its listening socket, and the authenticator admits a
# handshake on a domain only if the client's key is in that transport's list.
#
# It runs in a thread (pyzmq's ThreadAuthenticator), not on the event loop: a
# peer's loop is blocked while it trains, and handshakes of connecting
# neighbours must not wait for that.

_authenticators: dict[int, _PeerAuthenticator] = {}  # by the address of the libzmq context
_authenticators_lock = threading.Lock()
_domains = itertools.count()
_control_pipes = itertools.count()
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by the ZAP specification (RFC 27)


class _AcceptedKeys:
    """The client keys one listening socket admits; pyzmq's authenticator calls ``callback``
    for every handshake on the socket's ZAP domain."""

    def __init__(self, owners: Mapping[bytes, str]):
        self.owners = dict(owners)  # Z85 key -> peer id
        self.open = True

    def callback(self, domain: str, client_key: bytes) -> bool:
        # Runs on the authenticator's thread; it must never raise, or the thread ends and every
        # later handshake of the context waits forever.
        return self.open and client_key in self.owners


class _ReleasesItsEndpoint(Authenticator):
    """Unbinds the ZAP endpoint before closing the socket, so a new handler can bind it at once.

    Closing a socket frees its inproc endpoint only later, on libzmq's reaper
    thread; unbinding frees it now. ThreadAuthenticator.stop joins its thread
    and then calls this stop (it comes next in the MRO of _PeerAuthenticator),
    so the socket is no longer in use by that thread here."""

    def stop(self) -> None:
        if self.zap_socket is not None:
            try:
                self.zap_socket.unbind(ZAP_ENDPOINT)
            except zmq.ZMQError:  # never bound: start failed because another handler holds it
                pass
        super().stop()


class _PeerAuthenticator(ThreadAuthenticator, _ReleasesItsEndpoint):
    """The ZAP handler of one context; User-Id of an admitted connection = the peer id owning its key."""

    def __init__(self, context: zmq.Context):
        super().__init__(context)
        # pyzmq names the control pipe after id(self), which a later authenticator can reuse
        # while libzmq still holds the closed pipe's endpoint; a counter never repeats.
        self.pipe_endpoint = f"inproc://p2ptrain-zap-control-{next(_control_pipes)}"
        self.users = 0
        # Replaced, never mutated, so the handler thread always reads a consistent dict.
        self.owners: dict[bytes, str] = {}

    def curve_user_id(self, client_public_key: bytes) -> str:
        # Called only for a key a list admitted. An empty id (no owner) makes the
        # message unauthenticated rather than attributing it to anyone.
        return self.owners.get(z85.encode(client_public_key), "")

    def open_lists(self) -> list[_AcceptedKeys]:
        return [keys for keys in self.credentials_providers.values() if keys.open]

    def conflicts(self, owners: Mapping[bytes, str]) -> list[str]:
        return [f"{self.owners[key]!r} and {peer_id!r}" for key, peer_id in owners.items()
                if self.owners.get(key, peer_id) != peer_id]


class _Admission:
    """One transport's place in its context's authenticator: a ZAP domain admitting its peers' keys."""

    def __init__(self, context: zmq.asyncio.Context, peer_keys: Mapping[str, str]):
        owners = {key.encode("ascii"): peer_id for peer_id, key in peer_keys.items()}
        self._context_address = context.underlying
        with _authenticators_lock:
            authenticator = _authenticators.get(self._context_address)
            if authenticator is None:
                authenticator = _start_authenticator(context)
                _authenticators[self._context_address] = authenticator
            conflicts = authenticator.conflicts(owners)
            if conflicts:
                self._release(authenticator)  # stops a handler started just for this transport
                raise TransportError(
                    f"transports of one ZeroMQ context disagree on who owns a public key (peers {conflicts[0]}); "
                    "peers sharing a context must load the same keys"
                )
            self.domain = f"p2ptrain-{next(_domains)}"
            self.accepted = _AcceptedKeys(owners)
            authenticator.configure_curve_callback(self.domain, self.accepted)
            authenticator.users += 1
            authenticator.owners = {**authenticator.owners, **owners}
            self._authenticator = authenticator

    def close(self) -> None:
        with _authenticators_lock:
            # Lists stay registered but closed: removing one could race the
            # handler thread between its lookup and its use of the list.
            self.accepted.open = False
            self._authenticator.users -= 1
            self._release(self._authenticator)

    def _release(self, authenticator: _PeerAuthenticator) -> None:
        """Recompute the key owners from the open lists; stop the handler once nobody uses it."""
        authenticator.owners = {key: peer for keys in authenticator.open_lists() for key, peer in keys.owners.items()}
        if authenticator.users == 0:
            authenticator.stop()
            del _authenticators[self._context_address]


def _start_authenticator(context: zmq.asyncio.Context) -> _PeerAuthenticator:
    authenticator = _PeerAuthenticator(zmq.Context.shadow(context.underlying))
    try:
        authenticator.start()
    except zmq.ZMQError as error:
        authenticator.stop()
        raise TransportError(
            f"cannot start the CurveZMQ authenticator: {error}. This ZeroMQ context already has a ZAP "
            "handler of someone else's; give p2ptrain's transports a context of their own"
        ) from None
    return authenticator
