"""Transports without sockets: messages handed over in memory, on a clock the caller moves.

A ``MemoryNetwork`` holds one mailbox per peer and a ``ManualClock``. A
receive that finds nothing due moves the clock to the next arrival or to its
deadline at once, so a round that waits out a five-second deadline takes
microseconds and waits exactly five seconds of the clock. Tests drive a
``Node`` this way, and script its neighbours by delivering messages with
``deliver`` (at a given time, from a given proven sender) and reading what it
sent with ``collect``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .transport import Received


class ManualClock:
    """Seconds that pass only when told to: a Node's ``clock``."""

    def __init__(self, start: float = 0.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance_to(self, moment: float) -> None:
        self.now = max(self.now, moment)


@dataclass(order=True)
class _Letter:
    at: float
    order: int  # delivery order breaks ties: one sender's messages arrive in the order sent
    received: Received = field(compare=False)


class MemoryNetwork:
    """Mailboxes of the peers of one test. ``secure``: every message carries its sender's id as proven,
    as CurveZMQ connections do. ``full``: peers whose queues are full, so sends to them fail."""

    def __init__(self, clock: ManualClock | None = None, secure: bool = False):
        self.clock = clock or ManualClock()
        self.secure = secure
        self.full: set[str] = set()
        self._mailboxes: dict[str, list[_Letter]] = defaultdict(list)
        self._order = itertools.count()

    def transport(self, peer_id: str, out_neighbours: Iterable[str]) -> MemoryTransport:
        return MemoryTransport(self, peer_id, frozenset(out_neighbours))

    def deliver(self, to: str, frames: Sequence, sender: str | None = None, at: float | None = None) -> None:
        """Put a message in ``to``'s mailbox, arriving at ``at`` (now if None), its connection proving
        ``sender`` (ignored unless the network is secure)."""
        copied = [bytes(memoryview(getattr(frame, "buffer", frame)).cast("B")) for frame in frames]
        received = Received(copied, sender if self.secure else None)
        arrival = self.clock() if at is None else at
        heapq.heappush(self._mailboxes[to], _Letter(arrival, next(self._order), received))

    def take(self, peer_id: str, by: float) -> _Letter | None:
        """The earliest message for ``peer_id`` arriving no later than ``by``, taken out of its mailbox."""
        mailbox = self._mailboxes[peer_id]
        if mailbox and mailbox[0].at <= by:
            return heapq.heappop(mailbox)
        return None

    def collect(self, peer_id: str) -> list[Received]:
        """Everything that has arrived for ``peer_id`` by now, in order: what a scripted peer reads."""
        taken = []
        while (letter := self.take(peer_id, self.clock())) is not None:
            taken.append(letter.received)
        return taken


class MemoryTransport:
    """One peer's ``Transport`` on a MemoryNetwork."""

    def __init__(self, network: MemoryNetwork, peer_id: str, out_neighbours: frozenset[str]):
        self.network = network
        self.peer_id = peer_id
        self.out_neighbours = out_neighbours
        self.secure = network.secure
        self.public_key = None
        self.closed = False

    def send(self, peer_id: str, frames: Sequence, copy: bool = False) -> bool:
        if peer_id not in self.out_neighbours:
            raise KeyError(f"{peer_id} is not an out-neighbour of {self.peer_id}")
        if peer_id in self.network.full:
            return False
        self.network.deliver(peer_id, frames, sender=self.peer_id)
        return True

    async def receive(self, timeout: float) -> Received | None:
        clock = self.network.clock
        deadline = clock() + max(timeout, 0)
        # Peers sharing the event loop run first: one of them may be about to send.
        await asyncio.sleep(0)
        letter = self.network.take(self.peer_id, by=deadline)
        clock.advance_to(deadline if letter is None else letter.at)
        return None if letter is None else letter.received

    def close(self, abandon: Iterable[str] = ()) -> None:
        self.closed = True
