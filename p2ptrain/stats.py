"""Every counter of a peer in one place: what it rejected, dropped and accepted, and from whom.

One object is filled by everything that counts (the peer's checks, its
inbox, its sends), written whole into each metrics line, each checkpoint and
result.json, and restored whole from a checkpoint: a resumed peer reports
what an uninterrupted one would.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields

# Rejections logged one by one before switching to one line per thousand: a
# flood of garbage must not flood the log too.
REJECTIONS_LOGGED = 100
# A source's rejections are logged again when its count reaches one of these.
REJECTION_MILESTONES = (10, 100, 1000, 10_000, 100_000)


@dataclass
class PeerStats:
    rejected: Counter[str] = field(default_factory=Counter)  # by reason (PROTOCOL.md section 3)
    # By who sent them: the authenticated peer id, or "unauthenticated" without keys.
    rejected_from: Counter[str] = field(default_factory=Counter)
    # Valid messages by sender, whatever became of them: proof that a neighbour reaches this peer.
    accepted_from: Counter[str] = field(default_factory=Counter)
    send_dropped: int = 0  # not queued: the neighbour's queue was full
    stale_dropped: int = 0  # for a round already gathered
    too_far_ahead: int = 0  # beyond the round window, or the run's end
    duplicates: int = 0  # a second message of one sender for one round
    # A second, *different* message of one sender for one round, by the sender id: two processes run as
    # that id (a copied command line, a copied key). Counted apart from plain duplicates.
    identity_conflicts: Counter[str] = field(default_factory=Counter)
    older_dropped: int = 0  # asynchronous mode: older than a message already here from the same sender
    checkpoint_failures: int = 0  # checkpoints that could not be written (a full or unwritable disk)
    caught_up: int = 0  # times this peer, far behind, took a neighbour's state (--catch-up)

    def reject(self, reason: str, source: str) -> None:
        self.rejected[reason] += 1
        self.rejected_from[source] += 1

    def worth_logging(self, source: str) -> tuple[bool, bool]:
        """(log the latest rejection, log that ``source`` has sent this many rejected messages)."""
        total = sum(self.rejected.values())
        return total <= REJECTIONS_LOGGED or total % 1000 == 0, self.rejected_from[source] in REJECTION_MILESTONES

    def state_dict(self) -> dict:
        """Every counter as plain JSON values: for metrics lines, checkpoints and result.json alike."""
        return {name: dict(value) if isinstance(value := getattr(self, name), Counter) else value
                for name in _FIELD_NAMES}

    def load_state_dict(self, state: dict) -> None:
        """Restore counters from ``state_dict``; a counter an older checkpoint lacks starts from zero."""
        for f in fields(self):
            if f.default_factory is Counter:
                setattr(self, f.name, Counter(state.get(f.name, {})))
            else:
                setattr(self, f.name, state.get(f.name, f.default))


# In order; a metrics line of every peer and round holds them all, and dataclasses.fields is slow to ask.
_FIELD_NAMES = tuple(f.name for f in fields(PeerStats))
