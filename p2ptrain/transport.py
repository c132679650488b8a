"""ZeroMQ sockets of one peer: one PULL socket it listens on, one PUSH socket per out-neighbour.

The transport moves multipart messages and nothing else: it does not parse
them and knows nothing of rounds or models. Sends never block (a neighbour
that is gone must not stall the sender); receives always carry a deadline.

Why PUSH/PULL: every message is one-way (a peer's parameters for one round),
PULL fair-queues between neighbours so a chatty one cannot starve the rest,
and PUSH queues messages for a neighbour that has not bound yet and delivers
them when it does, so peers can start in any order.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import zmq
import zmq.asyncio

# Messages queued per neighbour before sends to it are dropped. Synchronous
# gossip keeps neighbours within a round or two of each other, so a deeper
# queue only means stale parameters held in memory for a peer that is gone.
SEND_QUEUE = 8


class TransportError(RuntimeError):
    pass


class Transport:
    def __init__(
        self,
        context: zmq.asyncio.Context,
        bind: str,
        out_neighbours: Mapping[str, str],
        *,
        linger_seconds: float = 2.0,
        max_message_bytes: int = -1,
    ):
        self._pull = context.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        if max_message_bytes > 0:
            self._pull.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        try:
            self._pull.bind(bind)
        except zmq.ZMQError as error:
            self._pull.close()
            raise TransportError(
                f"cannot listen on {bind}: {error}. Another process may hold the port "
                "(an earlier run still going?), or the host is not an address of this machine; "
                "stop it, pick other ports in the topology file, or set bind = \"tcp://0.0.0.0:PORT\" for the peer"
            ) from None
        # Sends use a blocking-API socket on the same context so that a full
        # queue raises zmq.Again at once instead of returning a pending future.
        sync_context = zmq.Context.shadow(context.underlying)
        self._push: dict[str, zmq.Socket] = {}
        for peer_id, endpoint in out_neighbours.items():
            sock = sync_context.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, SEND_QUEUE)
            # Bounded: deliver what is queued to live neighbours, give up on dead ones.
            sock.setsockopt(zmq.LINGER, int(linger_seconds * 1000))
            sock.connect(endpoint)
            self._push[peer_id] = sock
        self.closed = False

    def send(self, peer_id: str, frames: Sequence) -> bool:
        """Queue one message for ``peer_id`` without blocking; False if its queue is full."""
        try:
            self._push[peer_id].send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    async def receive(self, timeout_seconds: float) -> list[zmq.Frame] | None:
        """The next message, or None if none arrives within the timeout."""
        if timeout_seconds <= 0:
            timeout_seconds = 0
        events = await self._pull.poll(timeout=int(timeout_seconds * 1000), flags=zmq.POLLIN)
        if not events:
            return None
        return await self._pull.recv_multipart(flags=zmq.NOBLOCK, copy=False)

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
