"""How the peers of an interrupted launch continue (the launcher's ``--resume DIR``), from the files they left.

A peer keeps its two newest checkpoints (``checkpoint.pt`` and
``checkpoint.previous.pt``). In a synchronous swarm neighbours are at most a
few rounds apart, so when the launcher died their newest checkpoints may be of
different rounds, but the two newest of every peer usually share one. Every
peer then continues from the newest round they all share: the swarm is
exactly where it was at that round, and a synchronous run ends as the
uninterrupted one would have (gossip is deterministic when every message
arrives). When no round is shared, each peer continues from its newest
checkpoint, and the plan says that the run will differ.

A peer that had completed every round runs its last rounds again from the
shared round, when its kept checkpoints have it too: without its messages
the others would not end as they would have. Otherwise it is not started
again (the others do not wait for it), and the plan says that the run will
differ. A peer without a checkpoint, while others have one, joins (gossip:
it takes a neighbour's state) or, where it cannot, starts from round 0. A
checkpoint that cannot be read (cut short, damaged) is skipped, and the plan
names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import ConfigError, PeerConfig
from .rundir import FINISHED, PeerDir, RunDir
from .topology import Topology


@dataclass
class ResumePlan:
    common_round: int | None  # the round every restarted peer continues from; None: each from its newest
    from_round: dict[str, int]  # restarted peer -> the round it continues from (0: no checkpoint)
    finished: tuple[str, ...] = ()  # completed every round in an earlier launch: not started again
    joining: tuple[str, ...] = ()  # no checkpoint: takes a running neighbour's state (--join)
    earlier_launches: list[dict] = field(default_factory=list)  # what launch.json said of the interrupted ones
    unreadable: tuple[str, ...] = ()  # checkpoints skipped, and why

    def arguments(self, peer_id: str) -> tuple[str, ...]:
        """What peer ``peer_id``'s command line adds to the run's configuration file."""
        absent = ",".join(sorted({*self.finished, *self.joining} - {peer_id}))
        # The first rounds do not wait for peers that will not come, or only come later.
        also = ("--absent", absent) if absent else ()
        if peer_id in self.joining:
            return ("--join", "--overwrite", *also)  # --overwrite: what it wrote before holds no checkpoint
        if self.common_round is not None:
            return ("--resume", "--resume-round", str(self.common_round), *also)
        return ("--resume", *also)

    @property
    def consistent(self) -> bool:
        """Every peer continues from one round (or from scratch): the swarm's state of that round; none
        that finished is left out of the rounds run again."""
        return not self.finished and (self.common_round is not None or not any(self.from_round.values()))

    @property
    def nothing_to_do(self) -> bool:
        return not self.from_round and not self.joining

    def describe(self) -> str:
        if self.nothing_to_do:
            return f"every peer ({', '.join(self.finished)}) had finished: nothing to resume"
        parts = []
        if self.common_round is not None:
            everyone = "every peer" if not self.finished and not self.joining else ", ".join(self.from_round)
            parts.append(f"{everyone} from the checkpoint of round {self.common_round}")
        elif not any(self.from_round.values()):
            parts.append(f"{', '.join(self.from_round)} from round 0 (no checkpoint)")
        else:
            rounds = ", ".join(f"{p} from {r}" for p, r in self.from_round.items())
            parts.append(f"{rounds} (their checkpoints share no round, so the run will not end as an "
                         "uninterrupted one would)")
        if self.joining:
            parts.append(f"{', '.join(self.joining)} without a checkpoint: joining")
        if self.finished:
            parts.append(f"{', '.join(self.finished)} had finished and kept no checkpoint of that round: not "
                         "started again, so the others go on without their messages and the run will not end as "
                         "an uninterrupted one would")
        parts += [f"skipped {problem}" for problem in self.unreadable]
        return "; ".join(parts)

    def record(self) -> dict:
        """For summary.json: how the run was resumed, and the launches that were interrupted."""
        return {"common_round": self.common_round, "from_round": self.from_round, "finished": list(self.finished),
                "joining": list(self.joining), "interrupted_launches": self.earlier_launches}


def read_checkpoints(files: PeerDir) -> tuple[dict[int, tuple[Path, dict]], list[str]]:
    """The checkpoints a peer kept (its newest and the one before) that can be read, by round; and what is
    wrong with those that cannot (cut short by a full disk or a failed copy, damaged). A file that cannot
    even be opened (permissions, a storage error) is a ConfigError: nothing says it is damaged, and
    continuing from the other would throw its rounds away."""
    readable: dict[int, tuple[Path, dict]] = {}
    problems = []
    for path in (files.checkpoint, files.previous_checkpoint):
        if not path.exists():
            continue
        try:
            with open(path, "rb") as file:
                file.read(1)
        except OSError as error:
            raise ConfigError(f"cannot read {path}: {error.strerror or error}; make it readable, then resume "
                              "again") from None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            round_ = state["round"]
        except Exception as error:  # whatever a damaged file makes torch.load or the pickle raise
            problems.append(f"{path}: it cannot be read ({type(error).__name__}: {str(error)[:100]})")
            continue
        readable[round_] = (path, state)
    return readable, problems


def checkpoint_rounds(files: PeerDir) -> tuple[set[int], list[str]]:
    """The rounds of the checkpoints a peer kept that can be read, and what is wrong with the others."""
    readable, problems = read_checkpoints(files)
    return set(readable), problems


def finished(files: PeerDir, rounds: int) -> bool:
    result = files.read_result()
    return result is not None and result["status"] in FINISHED and result["rounds_completed"] == rounds


def plan_resume(run_dir: RunDir, topology: Topology, config: PeerConfig) -> ResumePlan:
    done = tuple(p for p in topology.ids if finished(run_dir.peer(p), config.rounds))
    rounds, unreadable = {}, []
    for p in topology.ids:
        rounds[p], problems = checkpoint_rounds(run_dir.peer(p))
        unreadable += problems
    left = [p for p in topology.ids if p not in done]
    if not left:
        return ResumePlan(None, {}, done, unreadable=tuple(unreadable))
    anyone_has_one = any(rounds[p] for p in left)
    joining = tuple(p for p in left
                    if not rounds[p] and anyone_has_one and config.algo == "gossip" and topology.linked_both_ways(p))
    restarted = {p: rounds[p] for p in left if p not in joining}
    # The finished run their last rounds again with the others when every peer kept the round to start from.
    everyone = {p: rounds[p] for p in topology.ids}
    if done and not joining and all(everyone.values()) and set.intersection(*everyone.values()):
        restarted, done = everyone, ()
    shared = set.intersection(*restarted.values()) if restarted and all(restarted.values()) else set()
    common = max(shared) if shared else None
    from_round = {p: common if common is not None else max(kept, default=0) for p, kept in restarted.items()}
    return ResumePlan(common, from_round, done, joining, unreadable=tuple(unreadable))
