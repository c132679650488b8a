"""Messages sorted by round: kept for a round not yet reached, dropped once their round is past.

Pure bookkeeping, no sockets and no clock, so every rule here is tested directly.
What is dropped is counted in the peer's ``PeerStats``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

from .stats import PeerStats
from .wire import Message

# Rounds already gathered for which each sender's message is remembered (by a sample of its values), so
# that a different message for such a round, arriving late, still shows two processes sending as one id.
REMEMBERED_ROUNDS = 64
# Values per tensor in that sample: two processes' parameters differ nearly everywhere once they have
# trained apart, and a few dozen evenly spaced values cost nothing to keep.
SAMPLED_VALUES = 16


@dataclass
class Inbox:
    # The round the peer is gathering now; anything older is stale.
    current_round: int = 0
    # How far ahead a message may be and still be kept. A neighbour more
    # rounds ahead than this is not following the protocol (or is replaying).
    max_rounds_ahead: int = 64
    stats: PeerStats = field(default_factory=PeerStats)
    _by_round: dict[int, dict[str, Message]] = field(default_factory=lambda: defaultdict(dict))
    # The highest round each sender has sent us so far.
    _latest: dict[str, int] = field(default_factory=dict)
    # For the last REMEMBERED_ROUNDS rounds gathered: round -> sender -> sample of the message taken.
    _taken: dict[int, dict[str, bytes]] = field(default_factory=dict)

    def put(self, message: Message) -> str:
        """File a message; returns 'kept', 'stale', 'duplicate', 'conflict' or 'too_far_ahead'."""
        # A neighbour far ahead is not waited for (a peer catching up after a restart needs that),
        # even when its message is too far ahead to keep.
        self._latest[message.sender] = max(message.round, self._latest.get(message.sender, -1))
        if message.round > self.current_round + self.max_rounds_ahead:
            self.stats.too_far_ahead += 1
            return "too_far_ahead"
        if message.round < self.current_round:
            # Dropped as stale either way; a late message unlike the one taken also flags a conflict.
            self.stats.stale_dropped += 1
            taken = self._taken.get(message.round, {}).get(message.sender)
            if taken is not None and taken != content_sample(message):
                self.stats.identity_conflicts[message.sender] += 1
                return "conflict"
            return "stale"
        round_messages = self._by_round[message.round]
        if message.sender in round_messages:
            return _second(round_messages[message.sender], message, self.stats)
        round_messages[message.sender] = message
        return "kept"

    def senders(self, round_: int) -> set[str]:
        return set(self._by_round.get(round_, ()))

    def moved_on(self, round_: int) -> set[str]:
        """Senders already heard from for a round after ``round_``. A sender's messages arrive in
        the order it sent them, so if its message for ``round_`` is not here now, it never will be
        (it was sent while this peer was down, or dropped): waiting for it is pointless."""
        return {sender for sender, latest in self._latest.items() if latest > round_} - self.senders(round_)

    def newest_round(self) -> int | None:
        """The newest round any sender has sent (kept or not), None before anything arrived."""
        return max(self._latest.values(), default=None)

    def skip_to(self, round_: int) -> None:
        """Continue from ``round_`` (a peer that joined a running swarm): earlier rounds' messages are stale."""
        for old in [r for r in self._by_round if r < round_]:
            self.stats.stale_dropped += len(self._by_round.pop(old))
        self.current_round = max(self.current_round, round_)

    def take(self, round_: int) -> dict[str, Message]:
        """Hand over round ``round_``'s messages and move on to the next round."""
        taken = self._by_round.pop(round_, {})
        self._taken[round_] = {sender: content_sample(message) for sender, message in taken.items()}
        for old in [r for r in self._taken if r <= round_ - REMEMBERED_ROUNDS]:
            del self._taken[old]
        self.current_round = round_ + 1
        for old in [r for r in self._by_round if r < self.current_round]:
            self.stats.stale_dropped += len(self._by_round.pop(old))
        return taken


def content_sample(message: Message) -> bytes:
    """The bytes of up to SAMPLED_VALUES evenly spaced values of each tensor: enough to tell two
    processes' parameters apart, not a checksum."""
    parts = []
    for tensor in message.tensors.values():
        # Sliced in numpy (bfloat16, which numpy lacks, as the integers of its bits): messages are
        # sampled every round, and each torch call costs more than the whole slice.
        if tensor.dtype is torch.bfloat16:
            values = tensor.reshape(-1).view(torch.int16).numpy()
        else:
            values = tensor.numpy().reshape(-1)
        step = max(1, values.size // SAMPLED_VALUES)
        parts.append(values[::step][:SAMPLED_VALUES].tobytes())
    return b"".join(parts)


def same_content(first: Message, second: Message) -> bool:
    """Whether two messages of one sender for one round carry the same tensors, bit for bit."""
    return first.tensors.keys() == second.tensors.keys() and all(
        torch.equal(tensor, second.tensors[name]) for name, tensor in first.tensors.items())


def _second(kept: Message, again: Message, stats: PeerStats) -> str:
    """A second message of ``kept``'s sender and round: the same one again is a duplicate; a different
    one means two processes send under that id (an identity conflict). The first one stays."""
    if same_content(kept, again):
        stats.duplicates += 1
        return "duplicate"
    stats.identity_conflicts[again.sender] += 1
    return "conflict"


@dataclass
class Newest:
    """The newest message from each sender, for asynchronous gossip: a peer mixes with whatever
    its neighbours sent last, as long as it is at most ``max_staleness`` rounds old."""

    max_staleness: int
    stats: PeerStats = field(default_factory=PeerStats)
    _newest: dict[str, Message] = field(default_factory=dict)

    def put(self, message: Message) -> bool:
        """Keep ``message`` if it is newer than what its sender sent before."""
        previous = self._newest.get(message.sender)
        if previous is not None and previous.round == message.round:
            _second(previous, message, self.stats)  # the first one stays
            return False
        if previous is not None and previous.round > message.round:
            # Arrived after a newer one from the same sender: dropped.
            self.stats.older_dropped += 1
            return False
        self._newest[message.sender] = message
        return True

    def senders(self) -> set[str]:
        return set(self._newest)

    def rounds(self) -> dict[str, int]:
        return {sender: message.round for sender, message in self._newest.items()}

    def fresh(self, round_: int, senders: frozenset[str]) -> dict[str, Message]:
        """The newest messages of ``senders`` that are at most ``max_staleness`` rounds behind ``round_``."""
        return {sender: message for sender, message in self._newest.items()
                if sender in senders and round_ - message.round <= self.max_staleness}

    def catch_up(self, round_: int) -> int:
        """The round to continue from. A peer that fell more than the staleness bound behind its most
        advanced neighbour (it was paused, or is slow) jumps to that neighbour's round: in asynchronous
        mode rounds are the swarm's shared clock, and the learning-rate schedule follows them."""
        ahead = max((message.round for message in self._newest.values()), default=round_)
        return ahead if ahead - round_ > self.max_staleness else round_
