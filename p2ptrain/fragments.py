"""Model-fragment messages: each round a peer exchanges one of K fragments of its model, not the whole.

Think of the exchanged tensors, flattened in row-major order and laid end to
end in their fixed order, as one vector of N values. Fragment k is the range
[floor(k N / K), floor((k + 1) N / K)) of it, so fragments differ in size by
at most one value however the tensors are shaped, and a big tensor (an
embedding) may be cut between two fragments. A fragment's message carries one
flat piece per tensor it overlaps, named ``NAME[START:STOP]`` (offsets into
that tensor's own flattening; PROTOCOL.md section 2.5).

Which fragment a round carries: floor(round / P) mod K, where P is the
topology's period (1 for a static graph). Every peer sends and mixes the same
fragment in the same round, so each fragment is mixed with a doubly
stochastic W exactly as whole-model gossip would mix it; holding a fragment
for a whole period means a time-varying graph (the one-peer exponential
graph) mixes each fragment through its entire sequence of graphs rather than
always through the same one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from .tensors import Tensors



@dataclass(frozen=True)
class Piece:
    """Values [start, stop) of tensor ``name``'s row-major flattening."""

    name: str
    start: int
    stop: int

    @property
    def key(self) -> str:
        return f"{self.name}[{self.start}:{self.stop}]"

    @property
    def size(self) -> int:
        return self.stop - self.start


def plan(sizes: Mapping[str, int], count: int) -> list[list[Piece]]:
    """The pieces of each of ``count`` fragments of tensors of ``sizes`` values (in that order).

    Every value belongs to exactly one fragment; fragment sizes differ by at most one value."""
    if count < 1:
        raise ValueError(f"a model is cut into at least 1 fragment, not {count}")
    total = sum(sizes.values())
    if count > total:
        raise ValueError(f"{count} fragments of a model of {total} values would leave some empty; use at most {total}")
    bounds = [k * total // count for k in range(count + 1)]
    fragments: list[list[Piece]] = []
    for k in range(count):
        low, high = bounds[k], bounds[k + 1]
        pieces, offset = [], 0
        for name, size in sizes.items():
            # The overlap of [low, high) with this tensor's range [offset, offset + size).
            start, stop = max(low, offset), min(high, offset + size)
            if start < stop:
                pieces.append(Piece(name, start - offset, stop - offset))
            offset += size
        fragments.append(pieces)
    return fragments


def fragment_at(round_: int, count: int, period: int = 1) -> int:
    """The fragment exchanged in ``round_``: each is held for a whole period of the topology's schedule."""
    return (round_ // max(period, 1)) % count


def cut(tensors: Mapping[str, torch.Tensor], pieces: list[Piece]) -> Tensors:
    """The pieces of ``tensors``, as flat views where the tensor is contiguous (no copy)."""
    return {piece.key: tensors[piece.name].detach().reshape(-1)[piece.start:piece.stop] for piece in pieces}


def paste(tensors: Mapping[str, torch.Tensor], pieces: list[Piece], values: Mapping[str, torch.Tensor]) -> Tensors:
    """New tensors for those the pieces touch: copies of ``tensors`` with each piece's range replaced by
    its value in ``values``. Copies, never in place: the old storage may still be queued in ZeroMQ."""
    touched: Tensors = {}
    for piece in pieces:
        if piece.name not in touched:
            touched[piece.name] = tensors[piece.name].detach().clone(memory_format=torch.contiguous_format)
        touched[piece.name].view(-1)[piece.start:piece.stop] = values[piece.key]
    return touched
