"""The per-round bookkeeping, deterministic: which messages are kept, who is waited for."""

from __future__ import annotations

import torch

from p2ptrain.inbox import Inbox, Newest
from p2ptrain.membership import Membership
from p2ptrain.wire import Message


def msg(sender: str, round_: int) -> Message:
    return Message("params", sender, "run", round_, "fp", {"w": torch.zeros(1)})


def test_inbox_keeps_future_rounds_and_drops_stale_ones():
    inbox = Inbox()
    assert inbox.put(msg("a", 0)) == "kept"
    assert inbox.put(msg("a", 2)) == "kept"  # a neighbour one round ahead
    assert inbox.put(msg("a", 0)) == "duplicate"
    assert set(inbox.take(0)) == {"a"}
    assert inbox.put(msg("b", 0)) == "stale"  # round 0 is over
    assert inbox.senders(1) == set()
    assert set(inbox.take(1)) == set()
    assert set(inbox.take(2)) == {"a"}
    assert (inbox.stats.stale_dropped, inbox.stats.duplicates) == (1, 1)


def test_messages_left_behind_when_rounds_are_skipped_count_as_stale():
    inbox = Inbox()
    inbox.put(msg("a", 1))
    inbox.put(msg("b", 2))
    inbox.take(2)  # round 1 never gathered
    assert inbox.stats.stale_dropped == 1


def test_inbox_refuses_rounds_far_in_the_future():
    inbox = Inbox(max_rounds_ahead=4)
    assert inbox.put(msg("a", 5)) == "too_far_ahead"
    assert inbox.put(msg("a", 4)) == "kept"


def test_a_neighbour_that_misses_a_deadline_is_not_waited_for_again():
    m = Membership(frozenset({"a", "b"}))
    assert m.awaited(set()) == {"a", "b"}
    outcome = m.close_round({"a"})
    assert outcome.missing == {"b"} and outcome.newly_suspected == {"b"}
    # Next round completes as soon as "a" is heard.
    assert m.awaited({"a"}) == set()
    outcome = m.close_round({"a"})
    assert outcome.newly_suspected == frozenset()  # logged once, not every round


def test_a_suspected_neighbour_heard_again_is_waited_for_again():
    m = Membership(frozenset({"a", "b"}))
    m.close_round({"a"})
    m.saw("b")  # a late message of an old round: b is alive, just behind
    outcome = m.close_round({"a"})
    assert outcome.recovered == {"b"}
    assert m.awaited({"a"}) == {"b"}


def test_a_suspected_neighbour_that_arrives_in_time_recovers():
    m = Membership(frozenset({"a", "b"}))
    m.close_round({"a"})
    outcome = m.close_round({"a", "b"})
    assert outcome.recovered == {"b"} and outcome.missing == frozenset()
    assert m.suspected == set()


def test_messages_from_strangers_do_not_count_as_life():
    m = Membership(frozenset({"a"}))
    m.saw("zz")
    assert m.close_round(set()).newly_suspected == {"a"}


def test_a_neighbour_heard_for_a_later_round_is_not_waited_for_in_this_one():
    # A peer that restarts from a checkpoint is behind: its neighbours' messages for its
    # current round were sent while it was down. Their later messages show it, and since
    # one sender's messages arrive in order, the missing one is not coming.
    inbox = Inbox(current_round=10)
    inbox.put(msg("a", 10))
    inbox.put(msg("b", 14))
    assert inbox.moved_on(10) == {"b"}
    m = Membership(frozenset({"a", "b", "c"}))
    assert m.awaited(inbox.senders(10) | inbox.moved_on(10)) == {"c"}
    inbox.take(10)
    assert inbox.moved_on(14) == set() and inbox.senders(14) == {"b"}


def test_a_joining_peer_skips_to_its_round_and_counts_what_it_leaves_behind_as_stale():
    inbox = Inbox()
    for round_ in (0, 1, 5):
        inbox.put(msg("p1", round_))
    inbox.skip_to(5)
    assert inbox.current_round == 5 and inbox.stats.stale_dropped == 2
    assert set(inbox.take(5)) == {"p1"}


def test_async_keeps_each_senders_newest_message_only():
    newest = Newest(max_staleness=3)
    assert newest.put(msg("p1", 4))
    assert not newest.put(msg("p1", 2))  # overtaken: arrived after round 4
    assert newest.put(msg("p1", 6))
    assert newest.stats.older_dropped == 1 and newest.rounds() == {"p1": 6}


def test_async_mixes_only_messages_within_the_staleness_bound():
    newest = Newest(max_staleness=3)
    newest.put(msg("p1", 7))
    newest.put(msg("p2", 3))
    newest.put(msg("p9", 10))
    fresh = newest.fresh(10, frozenset({"p1", "p2"}))
    assert set(fresh) == {"p1"}  # p2 is 7 rounds old; p9 is not a neighbour this round
    assert set(newest.fresh(6, frozenset({"p1", "p2"}))) == {"p1", "p2"}  # a neighbour ahead is fresh


def test_a_peer_too_far_behind_jumps_to_its_most_advanced_neighbour():
    newest = Newest(max_staleness=10)
    newest.put(msg("p1", 150))
    newest.put(msg("p3", 40))
    assert newest.catch_up(139) == 150  # 11 rounds behind p1
    assert newest.catch_up(140) == 140  # exactly at the bound: stays
    assert Newest(max_staleness=10).catch_up(7) == 7  # nobody heard yet


def test_a_message_far_ahead_is_not_kept_but_shows_its_sender_moved_on():
    # A neighbour 100 rounds ahead (this peer was restarted) is too far ahead to keep the message,
    # but it has certainly moved on: not waiting for it lets this peer catch up. (A round past the
    # run's end is believed in nothing: the gatherer drops it before the inbox, tests/test_peer.py.)
    inbox = Inbox(current_round=10)
    assert inbox.put(msg("p1", 110)) == "too_far_ahead"
    assert inbox.moved_on(10) == {"p1"}
    assert inbox.stats.too_far_ahead == 1


def test_a_second_message_for_a_round_is_a_duplicate_if_equal_and_an_identity_conflict_if_not():
    inbox = Inbox()
    first = Message("params", "p3", "run", 0, "fp", {"w": torch.tensor([1.0, 2.0])})
    assert inbox.put(first) == "kept"
    assert inbox.put(Message("params", "p3", "run", 0, "fp", {"w": torch.tensor([1.0, 2.0])})) == "duplicate"
    assert inbox.put(Message("params", "p3", "run", 0, "fp", {"w": torch.tensor([1.0, 2.5])})) == "conflict"
    assert inbox.put(Message("params", "p3", "run", 0, "fp", {"w": torch.tensor([9.0, 2.0])})) == "conflict"
    assert (inbox.stats.duplicates, inbox.stats.identity_conflicts) == (1, {"p3": 2})
    assert inbox.take(0)["p3"] is first  # the first one stays

    newest = Newest(max_staleness=3)
    assert newest.put(Message("params", "p3", "run", 4, "fp", {"w": torch.zeros(1)}))
    assert not newest.put(Message("params", "p3", "run", 4, "fp", {"w": torch.ones(1)}))
    assert not newest.put(Message("params", "p3", "run", 4, "fp", {"w": torch.zeros(1)}))
    assert (newest.stats.identity_conflicts, newest.stats.duplicates, newest.stats.older_dropped) == ({"p3": 1}, 1, 0)


def test_a_different_message_for_a_round_already_gathered_is_an_identity_conflict_too():
    inbox = Inbox()
    assert inbox.put(Message("params", "p3", "run", 0, "fp", {"w": torch.arange(40.0)})) == "kept"
    inbox.take(0)
    assert inbox.put(Message("params", "p3", "run", 0, "fp", {"w": torch.arange(40.0)})) == "stale"  # the same
    assert inbox.put(Message("params", "p3", "run", 0, "fp", {"w": torch.arange(40.0) + 1})) == "conflict"
    assert inbox.put(Message("params", "p4", "run", 0, "fp", {"w": torch.zeros(40)})) == "stale"  # not heard in 0
    # Every late message is dropped as stale; the different one is flagged as well.
    assert (inbox.stats.stale_dropped, inbox.stats.identity_conflicts) == (3, {"p3": 1})
    for round_ in range(1, 65):
        inbox.take(round_)
    # Round 0 is now more than 64 rounds back: forgotten, a late message for it is only stale.
    assert inbox.put(Message("params", "p3", "run", 0, "fp", {"w": torch.arange(40.0) + 2})) == "stale"
