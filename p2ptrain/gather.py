"""Gathering a round's parameters: one strategy per mode, behind one interface (PROTOCOL.md sections 4 and 7).

A gatherer owns the peer's receive loop and the place where parameters wait
to be mixed. ``RoundGatherer`` (--mode sync) keeps messages by round in an
``Inbox`` and waits for the round's in-neighbours until the deadline;
``NewestGatherer`` (--mode async) keeps each neighbour's newest message and
waits only in its first round. Both do the same four things: file a message,
gather a round, say which round comes next, and start at a given round.

What a gatherer reads is first checked by the peer (``accept``: decoding,
rejections, state requests); only parameters come back to be filed.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Callable

from . import wire
from .config import PeerConfig
from .inbox import Inbox, Newest
from .membership import Membership, RoundOutcome
from .stats import PeerStats
from .transport import Received, Transport

# Messages read per round beyond those waited for, and the share of the round deadline (--recv-timeout)
# that reading them may take. Reading what has arrived keeps a peer aware of its neighbours' rounds;
# reading *everything* would let a flood of garbage stretch one round past the neighbours' deadlines
# (they would then drop this peer from their mix). An honest message is read in microseconds, but a
# header built to be slow to parse takes tens of milliseconds to refuse: the time bound holds then.
DRAIN_LIMIT = 256
DRAIN_SHARE = 0.25


@dataclass(frozen=True)
class Deadlines:
    """How long a round waits (PROTOCOL.md section 4, step 3). The first rounds a peer runs, as many as
    the graph's diameter, wait ``startup_timeout``: a late peer holds up its neighbours' first round,
    they hold up their neighbours' second, and so on, one hop per round. A peer that joined a running
    swarm knows its neighbours are up, and waits ``recv_timeout`` from its first round."""

    recv_timeout: float
    startup_timeout: float
    startup_rounds: int
    start_round: int = 0
    joined: bool = False

    def of(self, round_: int) -> float:
        starting = round_ < self.start_round + self.startup_rounds and not self.joined
        return self.startup_timeout if starting else self.recv_timeout


@dataclass
class Gathered:
    """One round's gathering: what to mix, and what it cost."""

    waited: float  # seconds of the peer's clock
    bytes_received: int
    messages: dict[str, wire.Message]  # by sender: the parameters to mix
    outcome: RoundOutcome  # who was heard, who is missing, who became suspected or came back
    metrics: dict = field(default_factory=dict)  # the mode's own columns of the metrics line


class Gatherer(ABC):
    """The receive loop both modes share; a mode decides what it keeps and how long a round waits."""

    def __init__(self, config: PeerConfig, diameter: int, transport: Transport, clock: Callable[[], float],
                 membership: Membership, accept: Callable[[Received], wire.Message | None], stats: PeerStats,
                 log: logging.LoggerAdapter):
        self.deadlines = Deadlines(config.recv_timeout, config.startup_timeout, max(1, diameter))
        self.rounds = config.rounds
        self.transport = transport
        self.clock = clock
        self.membership = membership
        self.accept = accept
        self.stats = stats
        self.log = log
        self.round = 0  # the round being gathered, or the one the peer starts at
        # How many rounds behind a suspected neighbour's parameters may be and still make it waited for
        # again (sync mode); None: any. The Node sets it to --catch-up when a peer further behind catches
        # up by a state: waiting for it would cost a deadline a round, as it cannot send a current round
        # in time. A neighbour this close behind is waited for, and reaches the round within a few.
        self.waits_for_behind: int | None = None

    def start_at(self, round_: int, joined: bool = False) -> None:
        """Run from ``round_`` on: from 0, a checkpoint's round, or the round a joining peer was given."""
        self.deadlines = replace(self.deadlines, start_round=round_, joined=joined)
        self.round = round_

    @abstractmethod
    def file(self, message: wire.Message) -> None:
        """Keep a neighbour's parameters until their round is gathered."""

    @abstractmethod
    async def gather(self, round_: int, expected: frozenset[str]) -> Gathered:
        """Read until round ``round_`` has what it waits for from the in-neighbours ``expected`` sending in it."""

    def next_round(self, round_: int) -> int:
        """The round to run after ``round_``."""
        return round_ + 1

    def newest_round(self) -> int | None:
        """The newest round any in-neighbour has sent, if it has sent anything."""
        return None

    async def receive(self, timeout: float) -> int | None:
        """Read one message, filing its parameters; its bytes, or None if none came within ``timeout``."""
        received = await self.transport.receive(timeout)
        if received is None:
            return None
        message = self.accept(received)
        if message is None:
            return wire.frame_bytes(received.frames)
        if message.round >= self.rounds:
            # No honest peer sends a round past the run's end (PROTOCOL.md section 4), so nothing of it is
            # believed: not that its sender is alive or has moved on, nor its parameters. Believed, it would
            # stop a sync peer waiting for that sender, and make an async peer jump to the end of the run.
            self.stats.too_far_ahead += 1
        else:
            self.file(message)
        return message.nbytes  # the same count, made while decoding

    async def _read_while(self, waiting: Callable[[], set[str]], deadline: float) -> int:
        """Read while ``waiting()`` names someone and the deadline has not passed, then what else has
        already arrived (up to DRAIN_LIMIT messages, for up to DRAIN_SHARE of --recv-timeout); returns
        the bytes read."""
        bytes_received = 0
        while waiting() and (remaining := deadline - self.clock()) > 0:
            read = await self.receive(remaining)
            if read is None:
                break
            bytes_received += read
        # When nobody is awaited (all suspected, or moved on) the loop above reads nothing, and a
        # peer that never reads would never learn that its neighbours are back or where they are.
        drain_until = self.clock() + DRAIN_SHARE * self.deadlines.recv_timeout
        for _ in range(DRAIN_LIMIT):
            if self.clock() > drain_until:
                break
            read = await self.receive(0)
            if read is None:
                break
            bytes_received += read
        return bytes_received

    def _note_conflict(self, message: wire.Message) -> None:
        """Say once per sender id that two different messages came for one round; later ones are only
        counted (``identity_conflicts`` in the metrics and result.json)."""
        if self.stats.identity_conflicts[message.sender] == 1:
            self.log.warning("identity conflict: two different messages from %s for round %d, so two processes "
                             "are sending as %s (a copied command line, or a copied key: keys cannot tell them "
                             "apart); stop the one that should not run. Further conflicts are only counted",
                             message.sender, message.round, message.sender)

    def _close_round(self, round_: int, messages: dict[str, wire.Message], expected: frozenset[str],
                     why_missing: str, detail: float, moved_on: Callable[[], set[str]] = set) -> RoundOutcome:
        """Who was heard; ``why_missing`` (formatted with the round, the neighbour and ``detail``) is logged
        for each neighbour that becomes suspected, unless it is among ``moved_on()``, the neighbours already
        past the round (not waited for; asked only when someone becomes suspected)."""
        outcome = self.membership.close_round(set(messages), expected)
        ahead = moved_on() if outcome.newly_suspected else set()
        for neighbour in sorted(outcome.newly_suspected):
            if neighbour in ahead:
                self.log.warning("round %d: %s has sent a later round, so its message for this one is not coming "
                                 "(sent while this peer was down, or dropped); going on without it", round_, neighbour)
            else:
                self.log.warning(why_missing, round_, neighbour, detail)
        for neighbour in sorted(outcome.recovered):
            self.log.info("round %d: heard from %s again", round_, neighbour)
        return outcome


class RoundGatherer(Gatherer):
    """--mode sync: each round's messages, waited for until every unsuspected in-neighbour is heard
    (or has moved past the round) or the deadline passes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inbox = Inbox(stats=self.stats)

    def start_at(self, round_: int, joined: bool = False) -> None:
        super().start_at(round_, joined)
        self.inbox.skip_to(round_)  # messages of earlier rounds are stale from now on

    def newest_round(self) -> int | None:
        return self.inbox.newest_round()

    def file(self, message: wire.Message) -> None:
        # A message shows its sender alive, and makes it waited for again, unless it is more than
        # waits_for_behind rounds old: a neighbour that far behind catches up by taking a state.
        if self.waits_for_behind is None or self.round - message.round <= self.waits_for_behind:
            self.membership.saw(message.sender)
        filed = self.inbox.put(message)
        if filed == "stale":
            self.log.debug("dropped stale round-%d message from %s", message.round, message.sender)
        elif filed == "conflict":
            self._note_conflict(message)

    async def gather(self, round_: int, expected: frozenset[str]) -> Gathered:
        self.round = round_
        timeout = self.deadlines.of(round_)
        start = self.clock()

        def awaited() -> set[str]:
            return self.membership.awaited(self.inbox.senders(round_) | self.inbox.moved_on(round_), expected)

        bytes_received = await self._read_while(awaited, start + timeout)
        # Whom the round waited for until its deadline passed: each one cost this round a whole deadline.
        timed_out = sorted(awaited())
        messages = self.inbox.take(round_)
        waited = self.clock() - start
        # (Asked after take: a sender heard in this round is not missing, whatever moved_on says of it.)
        outcome = self._close_round(round_, messages, expected,
                                    "round %d: no parameters from %s within %.1fs; going on without it", timeout,
                                    lambda: self.inbox.moved_on(round_))
        return Gathered(waited, bytes_received, messages, outcome, {"timed_out": timed_out})


class NewestGatherer(Gatherer):
    """--mode async: each in-neighbour's newest parameters, if at most ``max_staleness`` rounds old.
    No round waits but the first, until every neighbour has been heard once; a peer too far behind
    its neighbours jumps ahead to their round."""

    def __init__(self, config: PeerConfig, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.max_staleness = config.max_staleness
        self.newest = Newest(config.max_staleness, stats=self.stats)

    def file(self, message: wire.Message) -> None:
        # Parameters too old to be mixed do not show their sender alive: counting them would mark a
        # neighbour that is catching up alive and suspected by turns.
        if self.round - message.round <= self.max_staleness:
            self.membership.saw(message.sender)
        conflicts = self.stats.identity_conflicts[message.sender]
        self.newest.put(message)
        if self.stats.identity_conflicts[message.sender] > conflicts:
            self._note_conflict(message)

    async def gather(self, round_: int, expected: frozenset[str]) -> Gathered:
        self.round = round_
        timeout = self.deadlines.of(round_) if round_ == self.deadlines.start_round else 0.0
        start = self.clock()
        bytes_received = await self._read_while(lambda: self.membership.awaited(self.newest.senders(), expected),
                                                start + timeout)
        messages = self.newest.fresh(round_, expected)
        waited = self.clock() - start
        outcome = self._close_round(round_, messages, expected,
                                    "round %d: nothing from %s newer than %d rounds; mixing without it",
                                    self.max_staleness)
        staleness = {sender: round_ - message.round for sender, message in sorted(messages.items())}
        return Gathered(waited, bytes_received, messages, outcome, {"staleness": staleness})

    def next_round(self, round_: int) -> int:
        upcoming = round_ + 1
        target = min(self.newest.catch_up(upcoming), self.rounds)
        if target != upcoming:
            self.log.warning("round %d is more than %d rounds behind the neighbours (newest: %s); jumping to "
                             "round %d", upcoming, self.max_staleness,
                             ",".join(f"{j}@{r}" for j, r in sorted(self.newest.rounds().items())), target)
        return target


GATHERERS: dict[str, type[Gatherer]] = {"sync": RoundGatherer, "async": NewestGatherer}


def gatherer_for(config: PeerConfig, *args, **kwargs) -> Gatherer:
    """The gatherer of ``config.mode``, given what ``Gatherer`` takes after the configuration."""
    return GATHERERS[config.mode](config, *args, **kwargs)
