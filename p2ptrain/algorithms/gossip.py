"""Gossip averaging: x_i <- sum_j W_ij x_j over itself and the neighbours heard this round.

With local SGD steps before each exchange this is adapt-then-combine
decentralized SGD (D-PSGD). A neighbour that did not arrive gives its weight
back to the peer itself, so each row of the weights used stays stochastic.
``Gossip(..., aggregator=...)`` swaps the weighted mean for one of the robust
rules of ``robust.py`` (ClippedGossip, trimmed mean) when neighbours may lie.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch

from ..choices import check_aggregator
from ..fragments import cut, fragment_at, paste, plan
from ..tensors import all_finite
from .base import Algorithm, Diverged, Tensors, check_finite
from .robust import clipped_gossip, trimmed_mean


def effective_weights(self_id: str, row: Mapping[str, float], heard: set[str] | frozenset[str]) -> dict[str, float]:
    """The mixing row for this round: weights of missing neighbours move to ``self_id``."""
    weights = {self_id: row[self_id]}
    for peer_id, weight in row.items():
        if peer_id == self_id:
            continue
        if peer_id in heard:
            weights[peer_id] = weight
        else:
            weights[self_id] += weight
    return weights


# Large tensors are mixed a block of this many elements at a time (1 MiB of float32): the block's
# running sum stays in the core's cache while every neighbour's term is added to it, so a tensor is
# read once per message and written once, instead of the sum going through memory once per term.
# Every element still gets the same operations in the same order, so the result is bit for bit the
# same as mixing whole tensors; blocks are a multiple of any vector width, so the vectorized kernels
# split them as they split the whole.
MIX_BLOCK = 1 << 18


def mix(
    self_id: str,
    own: Mapping[str, torch.Tensor],
    received: Mapping[str, Mapping[str, torch.Tensor]],
    row: Mapping[str, float],
) -> Tensors:
    """Weighted average of ``own`` and ``received`` into new tensors (inputs are never modified)."""
    weights = effective_weights(self_id, row, set(received))
    mixed: Tensors = {}
    for name, tensor in own.items():
        # A fixed order (the row's, not arrival order) makes the float sums, and
        # so the result, the same however the messages raced each other.
        terms = [(received[peer_id][name], weights[peer_id]) for peer_id in row if peer_id in received]
        mixed[name] = weighted_sum(tensor.detach(), weights[self_id], terms)
    return mixed


def weighted_sum(first: torch.Tensor, weight: float, terms: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """first * weight + the terms' tensor * weight, added in order, as a new tensor."""
    if first.numel() <= MIX_BLOCK or not all(t.is_contiguous() for t in (first, *(term for term, _ in terms))):
        # ``*`` allocates a fresh tensor, so the in-place adds below touch nothing shared.
        acc = first * weight
        for term, term_weight in terms:
            acc.add_(term, alpha=term_weight)
        return acc
    acc = torch.empty_like(first)
    flat, flat_terms = acc.view(-1), [(term.reshape(-1), w) for term, w in terms]
    own = first.reshape(-1)
    for start in range(0, flat.numel(), MIX_BLOCK):
        block = flat[start:start + MIX_BLOCK]
        torch.mul(own[start:start + MIX_BLOCK], weight, out=block)
        for term, term_weight in flat_terms:
            block.add_(term[start:start + MIX_BLOCK], alpha=term_weight)
    return acc


class Gossip(Algorithm):
    """Mix the model's tensors (its parameters and floating-point buffers) with the neighbours' after
    the local steps.

    ``aggregator`` is how: "mean" (``mix``, the default), "clipped"
    (ClippedGossip) or "trimmed-mean", the robust ones tolerating ``robust_b``
    bad neighbours (see ``robust.py``).

    ``fragments`` > 1 exchanges and mixes one fragment of the model per round
    (fragments.py; ``period`` is the topology's). ``wire_dtype`` (bfloat16,
    float16) is the precision messages travel in: what arrives is widened back
    to the model's precision and mixed there with this peer's own, unrounded,
    values, so the local copy is never rounded.
    """

    name = "gossip"

    def __init__(self, self_id: str, row: Mapping[str, float] | Callable[[int], Mapping[str, float]],
                 parameters: Mapping[str, torch.Tensor], aggregator: str = "mean", robust_b: int = 1,
                 fragments: int = 1, period: int = 1, wire_dtype: torch.dtype | None = None):
        check_aggregator(aggregator, robust_b)
        self.self_id = self_id
        # A fixed row, or one per round for a time-varying topology.
        self.row_at = row if callable(row) else (lambda round_, fixed=dict(row): fixed)
        self.parameters = dict(parameters)
        self.aggregator = aggregator
        self.robust_b = robust_b
        self.fragments, self.period = fragments, period
        self.plan = plan({name: p.numel() for name, p in self.parameters.items()}, fragments) if fragments > 1 else None
        self.wire_dtype = wire_dtype
        self.round_metrics: dict = {}

    def fragment_at(self, round_: int) -> int | None:
        return fragment_at(round_, self.fragments, self.period) if self.plan else None

    def state_tensors(self) -> Tensors:
        return {name: p.detach() for name, p in self.parameters.items()}

    def message_layouts(self) -> list[Tensors]:
        # Fragment f is first sent in round f * period.
        return [self.outgoing(f * self.period) for f in range(self.fragments)]

    def _own(self, round_: int) -> Tensors:
        """This round's share of the model (a fragment's pieces, or all of it), in the model's precision."""
        own = self.state_tensors()
        return cut(own, self.plan[self.fragment_at(round_)]) if self.plan else own

    def outgoing(self, round_: int) -> Tensors:
        own = self._own(round_)
        if self.wire_dtype is None:
            return own
        narrowed = {key: tensor.to(self.wire_dtype) for key, tensor in own.items()}
        if self.wire_dtype == torch.float16:
            # float16 ends at 65504: a larger value (a raw feature's BatchNorm variance) would travel as Inf,
            # and every neighbour would refuse every message of this peer without it ever knowing.
            for key, tensor in narrowed.items():
                if not all_finite(tensor):
                    raise Diverged(f"round {round_}: {key!r} holds values beyond float16's range (65504) and cannot "
                                   "travel as --wire-dtype float16; use --wire-dtype bfloat16, which has float32's")
        return narrowed

    def update(self, round_: int, received: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        own = self._own(round_)
        if self.wire_dtype is not None:
            # Widened exactly (every half-precision value is a float32 value), then mixed in full precision.
            received = {j: {key: t.to(own[key].dtype) for key, t in tensors.items()} for j, tensors in received.items()}
        mixed = self.aggregate(round_, own, received)
        check_finite(mixed, "parameter", round_, "the learning rate (--lr) is probably too large for this "
                     "problem; try a smaller one")
        if self.plan:
            mixed = paste(self.state_tensors(), self.plan[self.fragment_at(round_)], mixed)
        for name, tensor in mixed.items():
            # New storage rather than an in-place copy: the tensors just sent
            # may still be queued in ZeroMQ, zero-copy, and must not change.
            self.parameters[name].data = tensor

    def aggregate(self, round_: int, own: Mapping[str, torch.Tensor],
                  received: Mapping[str, Mapping[str, torch.Tensor]]) -> Tensors:
        """This round's new values of ``own`` by the chosen rule, as new tensors."""
        row = self.row_at(round_)
        if self.aggregator == "clipped":
            clipping = clipped_gossip(self.self_id, own, received, row, self.robust_b)
            # json has no infinity: a radius set by neighbours at infinite distance is logged as null.
            radius = clipping.radius if math.isfinite(clipping.radius) else None
            self.round_metrics = {"clipping_radius": radius, "clipped": clipping.clipped}
            return clipping.tensors
        if self.aggregator == "trimmed-mean":
            return trimmed_mean(self.self_id, own, received, row, self.robust_b)
        return mix(self.self_id, own, received, row)

    def metrics(self) -> dict:
        # Empty for "mean", so plain gossip's metrics lines stay as they were.
        return dict(self.round_metrics)
