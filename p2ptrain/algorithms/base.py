"""What every algorithm offers the peer: hooks around the local optimizer steps, tensors out for the
neighbours, tensors in from them.

Algorithms are pure math. They never see sockets, clocks or files: the peer
hands them what arrived, so the same inbox always gives the same update and
every algorithm can be checked against a numpy simulation of the whole graph.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping

import torch
from ..tensors import Tensors, all_finite



class Diverged(ArithmeticError):
    """A peer's state became NaN or Inf; the message names the likely cause."""


class Algorithm(ABC):
    """One round: ``begin_local``, the optimizer steps (with ``before_step`` between each backward pass
    and step), ``end_local``, then ``outgoing`` to the neighbours and ``update`` with what they sent.

    The steps are not the algorithm's: the peer runs them on a task, or the user's own loop runs them
    and the Python API calls these hooks from the optimizer's step hooks."""

    name: str
    # False: the algorithm solves its local problem itself in end_local (exact ADMM), without steps.
    takes_steps = True
    # True: each round's steps solve a new subproblem, so the optimizer's momentum must be forgotten.
    restarts_optimizer = False
    # False: messages carry something else than parameters (CHOCO's compressed differences), so the
    # peer's distance to its neighbours cannot be read from them.
    messages_hold_parameters = True

    def begin_local(self, round_: int) -> None:
        """Before this round's optimizer steps."""

    def before_step(self) -> None:
        """Between a backward pass and the optimizer's step: add this algorithm's terms to the gradients."""

    def end_local(self, round_: int, loss: float | None) -> float | None:
        """After this round's steps (``loss``: their mean batch loss, None if none ran); returns the loss
        to report."""
        return loss

    @abstractmethod
    def outgoing(self, round_: int) -> Tensors:
        """The tensors this peer sends to each out-neighbour this round."""

    @abstractmethod
    def update(self, round_: int, received: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Fold in what arrived this round (only the neighbours heard before the deadline)."""

    def fragment_at(self, round_: int) -> int | None:
        """The fragment of the model ``round_``'s message carries; None when it carries all of it."""
        return None

    def message_layouts(self) -> list[Tensors]:
        """One example of each kind of params message, in fragment order (the receiver's contract)."""
        return [self.outgoing(0)]

    def state_tensors(self) -> Tensors:
        """The whole model as a joining peer takes it, in the model's precision."""
        return self.outgoing(0)

    def parameters_in(self, message: Mapping[str, torch.Tensor]) -> Tensors:
        """The model parameters carried by one of this algorithm's messages."""
        return dict(message)

    def metrics(self) -> dict:
        """Numbers of the last round worth a column in metrics.jsonl."""
        return {}

    def state_dict(self) -> dict:
        """Algorithm state beyond the model's parameters (duals, sums), for checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned (here: nothing, and nothing may be given)."""
        if state:
            raise ValueError(f"{self.name} keeps no state, but the checkpoint holds {sorted(state)}: "
                             "it was written by another algorithm; resume with the same --algo")


def check_finite(tensors: Mapping[str, torch.Tensor], what: str, round_: int, advice: str) -> None:
    for name, tensor in tensors.items():
        if not all_finite(tensor):
            raise Diverged(f"round {round_}: {what} {name!r} holds NaN or Inf; {advice}")


