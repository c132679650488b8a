"""What every algorithm offers the peer: tensors out for the neighbours, tensors in from them.

Algorithms are pure math. They never see sockets, clocks or files: the peer
hands them what arrived, so the same inbox always gives the same update and
every algorithm can be checked against a numpy simulation of the whole graph.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping

import torch

Tensors = dict[str, torch.Tensor]


class Algorithm(ABC):
    name: str

    @abstractmethod
    def outgoing(self, round_: int) -> Tensors:
        """The tensors this peer sends to each out-neighbour this round."""

    @abstractmethod
    def update(self, round_: int, received: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Fold in what arrived this round (only the neighbours heard before the deadline)."""
