"""The fault plan decides from rounds and the clock alone: tested without processes or sleeps."""

from __future__ import annotations

import re

import pytest

from p2ptrain.faults import Action, FaultPlan, FaultSpecError

PEERS = ("p0", "p1", "p2", "p3")


def test_kill_then_restart_after_the_delay():
    plan = FaultPlan.parse(["p3@40"], ["p3@+5"], [], PEERS)
    assert plan.due({"p3": 39}, now=1.0) == []
    assert plan.due({"p3": 41}, now=2.0) == [Action("kill", "p3")]
    assert plan.due({"p3": 41}, now=6.9) == []  # killed once, not again
    assert plan.due({"p3": 41}, now=7.0) == [Action("restart", "p3")]
    assert plan.due({"p3": 60}, now=9.0) == []
    assert not plan.pending
    assert plan.events == [{"time": 2.0, "peer": "p3", "event": "kill", "round": 41},
                           {"time": 7.0, "peer": "p3", "event": "restart", "round": 41}]


def test_pause_then_continue():
    plan = FaultPlan.parse([], [], ["p2@30:3"], PEERS)
    assert plan.pending
    assert plan.due({"p2": 30}, now=10.0) == [Action("pause", "p2")]
    assert plan.due({"p2": 30}, now=12.5) == []
    assert plan.due({"p2": 30}, now=13.0) == [Action("continue", "p2")]
    assert not plan.pending


@pytest.mark.parametrize("kills, restarts, pauses, message", [
    (["p9@4"], [], [], "no peer 'p9'"),
    (["p1"], [], [], "write PEER@..., like p3@40"),
    (["p1@x"], [], [], "'x' is not a non-negative number"),
    ([], ["p1@+5"], [], "p1 is never killed"),
    (["p1@5"], ["p1@5"], [], "as +SECONDS"),
    ([], [], ["p2@30"], "'' is not a non-negative number"),
])
def test_bad_fault_specs_say_how_to_write_them(kills, restarts, pauses, message):
    with pytest.raises(FaultSpecError, match=re.escape(message)):
        FaultPlan.parse(kills, restarts, pauses, PEERS)


def test_a_join_falls_due_when_the_rest_of_the_swarm_reaches_its_round():
    plan = FaultPlan.parse([], [], [], PEERS, joins=["p3@40"])
    assert plan.not_started() == {"p3"}
    # p3's own round (0: not running) does not count; the most advanced other peer does.
    assert plan.due({"p0": 39, "p1": 12, "p2": 38, "p3": 0}, now=1.0) == []
    assert plan.due({"p0": 40, "p1": 12, "p2": 38, "p3": 0}, now=2.0) == [Action("join", "p3")]
    assert plan.due({"p0": 80, "p3": 0}, now=3.0) == []
    assert not plan.pending and plan.not_started() == set()
    assert plan.events == [{"time": 2.0, "peer": "p3", "event": "join", "round": 40}]


def test_nothing_is_done_to_a_latecomer_before_it_has_joined():
    plan = FaultPlan.parse(["p3@0"], [], ["p3@0:2"], PEERS, joins=["p3@5"])
    assert plan.due({"p0": 4, "p1": 4, "p2": 4, "p3": 0}, now=1.0) == []  # p3 has no process yet
    assert plan.due({"p0": 5, "p1": 5, "p2": 5, "p3": 0}, now=2.0) == [Action("join", "p3")]
    assert plan.due({"p0": 6, "p1": 6, "p2": 6, "p3": 5}, now=3.0) == [Action("kill", "p3"), Action("pause", "p3")]


def test_only_restarts_and_continues_are_waited_for_when_no_peer_runs():
    plan = FaultPlan.parse(["p1@10"], ["p1@+5"], ["p2@10:3"], PEERS, joins=["p3@99"])
    assert not plan.waiting_on_clock  # nothing has happened yet: every action waits for a round
    plan.due({"p1": 10, "p2": 10}, now=1.0)  # p1 killed, p2 paused
    assert plan.waiting_on_clock
    plan.due({"p1": 10, "p2": 10}, now=6.0)  # restart and continue are done
    assert not plan.waiting_on_clock and plan.pending  # the join may never come: round 99 not reached


def test_a_swarm_made_only_of_latecomers_is_refused():
    with pytest.raises(FaultSpecError, match="no swarm to join"):
        FaultPlan.parse([], [], [], ("p0", "p1"), joins=["p0@5", "p1@5"])
