"""Fault injection for local swarms: kill, restart and pause peers at given rounds.

    --kill p3@40        SIGKILL p3 once it has completed 40 rounds
    --restart p3@+5     start p3 again 5 s after it was killed, with --resume
    --pause p2@30:3     SIGSTOP p2 at round 30, SIGCONT 3 s later
    --join p7@40        start p7 only once another peer has completed 40 rounds,
                        with --join (it asks a neighbour for its state)

The plan decides, from the peers' rounds and the clock it is given, which
actions are due; the launcher carries them out. Being a pure function of
its inputs, it is tested without processes or sleeps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


class FaultSpecError(ValueError):
    pass


@dataclass(frozen=True)
class Action:
    kind: str  # kill, restart, pause, continue, join
    peer: str


@dataclass
class FaultPlan:
    kills: dict[str, int] = field(default_factory=dict)  # peer -> round
    restarts: dict[str, float] = field(default_factory=dict)  # peer -> seconds after its kill
    pauses: dict[str, tuple[int, float]] = field(default_factory=dict)  # peer -> (round, seconds)
    joins: dict[str, int] = field(default_factory=dict)  # peer -> round of the swarm
    events: list[dict] = field(default_factory=list)
    _killed_at: dict[str, float] = field(default_factory=dict)
    _paused_at: dict[str, float] = field(default_factory=dict)
    _done: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    def parse(cls, kills: list[str], restarts: list[str], pauses: list[str], peers: tuple[str, ...],
              joins: list[str] = ()) -> "FaultPlan":
        plan = cls()
        for spec in joins:
            peer, value = _split(spec, "--join", "p7@40", peers)
            plan.joins[peer] = _number(value, int, spec, "--join")
        if plan.joins and set(plan.joins) >= set(peers):
            raise FaultSpecError("--join: every peer would join later, so there is no swarm to join; "
                                 "leave at least one peer to start at once")
        for spec in kills:
            peer, value = _split(spec, "--kill", "p3@40", peers)
            plan.kills[peer] = _number(value, int, spec, "--kill")
        for spec in restarts:
            peer, value = _split(spec, "--restart", "p3@+5", peers)
            if not value.startswith("+"):
                raise FaultSpecError(f"--restart {spec}: give the delay after the kill as +SECONDS, like p3@+5")
            plan.restarts[peer] = _number(value[1:], float, spec, "--restart")
            if peer not in plan.kills:
                raise FaultSpecError(f"--restart {spec}: {peer} is never killed; add --kill {peer}@ROUND")
        for spec in pauses:
            peer, value = _split(spec, "--pause", "p2@30:3", peers)
            round_, _, seconds = value.partition(":")
            plan.pauses[peer] = (_number(round_, int, spec, "--pause"), _number(seconds, float, spec, "--pause"))
        return plan

    @property
    def pending(self) -> bool:
        wanted = ({(p, "kill") for p in self.kills} | {(p, "restart") for p in self.restarts}
                  | {(p, "continue") for p in self.pauses} | {(p, "join") for p in self.joins})
        return not wanted <= self._done

    @property
    def waiting_on_clock(self) -> bool:
        """A restart or a SIGCONT is still to come: it falls due with time alone, even when no peer runs."""
        restarts = {(p, "restart") for p in self.restarts if p in self._killed_at}
        continues = {(p, "continue") for p in self._paused_at}
        return not (restarts | continues) <= self._done

    def not_started(self) -> set[str]:
        """Peers held back for a --join that has not happened yet."""
        return {peer for peer in self.joins if (peer, "join") not in self._done}

    def due(self, rounds: dict[str, int], now: float) -> list[Action]:
        """Actions to take now, given each peer's completed rounds and the time; each happens once."""
        actions = []
        # A latecomer not yet started is at no round: nothing can be done to it before it joins.
        started = set(rounds) - (set(self.joins) - {peer for peer, kind in self._done if kind == "join"})
        for peer, round_ in self.kills.items():
            if (peer, "kill") not in self._done and peer in started and rounds[peer] >= round_:
                actions.append(self._record(Action("kill", peer), now, rounds.get(peer, 0)))
                self._killed_at[peer] = now
        for peer, delay in self.restarts.items():
            killed = self._killed_at.get(peer)
            if killed is not None and (peer, "restart") not in self._done and now >= killed + delay:
                actions.append(self._record(Action("restart", peer), now, rounds.get(peer, 0)))
        for peer, (round_, seconds) in self.pauses.items():
            if (peer, "pause") not in self._done and peer in started and rounds[peer] >= round_:
                actions.append(self._record(Action("pause", peer), now, rounds.get(peer, 0)))
                self._paused_at[peer] = now
            paused = self._paused_at.get(peer)
            if paused is not None and (peer, "continue") not in self._done and now >= paused + seconds:
                actions.append(self._record(Action("continue", peer), now, rounds.get(peer, 0)))
        for peer, round_ in self.joins.items():
            swarm_round = max((r for p, r in rounds.items() if p not in self.joins), default=0)
            if (peer, "join") not in self._done and swarm_round >= round_:
                actions.append(self._record(Action("join", peer), now, swarm_round))
        return actions

    def _record(self, action: Action, now: float, round_: int) -> Action:
        self._done.add((action.peer, action.kind))
        self.events.append({"time": round(now, 3), "peer": action.peer, "event": action.kind, "round": round_})
        return action


def _split(spec: str, option: str, example: str, peers: tuple[str, ...]) -> tuple[str, str]:
    peer, at, value = spec.partition("@")
    if not at or not value:
        raise FaultSpecError(f"{option} {spec}: write PEER@..., like {example}")
    if peer not in peers:
        raise FaultSpecError(f"{option} {spec}: no peer {peer!r} in the topology (peers: {', '.join(peers)})")
    return peer, value


def _number(text: str, kind: type, spec: str, option: str):
    if not re.fullmatch(r"\d+(\.\d+)?", text or ""):
        raise FaultSpecError(f"{option} {spec}: {text!r} is not a non-negative number")
    return kind(float(text)) if kind is int else kind(text)
