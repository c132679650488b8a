"""Messages sorted by round: kept for a round not yet reached, dropped once their round is past.

Pure bookkeeping, no sockets and no clock, so every rule here is tested directly.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from .wire import Message


@dataclass
class Inbox:
    # The round the peer is gathering now; anything older is stale.
    current_round: int = 0
    # How far ahead a message may be and still be kept. A neighbour more
    # rounds ahead than this is not following the protocol (or is replaying).
    max_rounds_ahead: int = 64
    stale: int = 0
    duplicates: int = 0
    too_far_ahead: int = 0
    _by_round: dict[int, dict[str, Message]] = field(default_factory=lambda: defaultdict(dict))
    # The highest round each sender has sent us so far.
    _latest: dict[str, int] = field(default_factory=dict)

    def put(self, message: Message) -> str:
        """File a message; returns 'kept', 'stale', 'duplicate' or 'too_far_ahead'."""
        self._latest[message.sender] = max(message.round, self._latest.get(message.sender, -1))
        if message.round < self.current_round:
            self.stale += 1
            return "stale"
        if message.round > self.current_round + self.max_rounds_ahead:
            self.too_far_ahead += 1
            return "too_far_ahead"
        round_messages = self._by_round[message.round]
        if message.sender in round_messages:
            self.duplicates += 1
            return "duplicate"
        round_messages[message.sender] = message
        return "kept"

    def senders(self, round_: int) -> set[str]:
        return set(self._by_round.get(round_, ()))

    def moved_on(self, round_: int) -> set[str]:
        """Senders already heard from for a round after ``round_``. A sender's messages arrive in
        the order it sent them, so if its message for ``round_`` is not here now, it never will be
        (it was sent while this peer was down, or dropped): waiting for it is pointless."""
        return {sender for sender, latest in self._latest.items() if latest > round_} - self.senders(round_)

    def take(self, round_: int) -> dict[str, Message]:
        """Hand over round ``round_``'s messages and move on to the next round."""
        taken = self._by_round.pop(round_, {})
        self.current_round = round_ + 1
        for old in [r for r in self._by_round if r < self.current_round]:
            self.stale += len(self._by_round.pop(old))
        return taken
