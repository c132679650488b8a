"""Who a peer waits for in a round: a pure function of what it has heard, tested without sleeps.

A neighbour that misses a round's deadline becomes *suspected*. Later rounds
end as soon as every unsuspected neighbour has been heard, so a dead
neighbour costs one deadline, not one per round. A sign of life from a
suspected neighbour (``saw``: the gatherer calls it for parameters, and the
peer for a state request) makes it waited for again from the next round on,
which lets a neighbour a little behind catch up. Parameters more than
--catch-up rounds old do not count (gather.py): that neighbour catches up by
taking a state, and waiting for it would cost a deadline round after round.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RoundOutcome:
    heard: frozenset[str]
    missing: frozenset[str]
    newly_suspected: frozenset[str]  # missed this round's deadline, were trusted before
    recovered: frozenset[str]  # were suspected, heard again


@dataclass
class Membership:
    neighbours: frozenset[str]
    suspected: set[str] = field(default_factory=set)
    _seen_alive: set[str] = field(default_factory=set)

    def awaited(self, arrived: set[str], expected: frozenset[str] | None = None) -> set[str]:
        """Neighbours the round still waits for; the round is complete when this is empty.

        ``expected``: the neighbours that send in this round (a time-varying
        topology changes them); all neighbours if None."""
        return set(self.neighbours if expected is None else expected) - self.suspected - arrived

    def saw(self, sender: str) -> None:
        """Any message from ``sender``, of any round, counts as a sign of life."""
        if sender in self.neighbours:
            self._seen_alive.add(sender)

    def close_round(self, arrived: set[str], expected: frozenset[str] | None = None) -> RoundOutcome:
        expected = self.neighbours if expected is None else expected
        heard = frozenset(arrived & expected)
        missing = frozenset(expected - heard)
        alive = heard | self._seen_alive
        recovered = frozenset(self.suspected & alive)
        newly_suspected = frozenset(missing - self.suspected - self._seen_alive)
        self.suspected = (self.suspected - alive) | newly_suspected
        self._seen_alive.clear()
        return RoundOutcome(heard, missing, newly_suspected, recovered)
