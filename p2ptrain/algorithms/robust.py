"""Robust mixing for gossip: self-centered clipping (ClippedGossip) and the coordinate-wise trimmed mean.

Plain gossip, x_i <- sum_j W_ij x_j, lets a single neighbour that sends
garbage move x_i as far as it likes. The two rules here bound that:

- ``clipped``: ClippedGossip (He, Karimireddy and Jaggi, "Byzantine-robust
  decentralized learning via ClippedGossip", 2022),
  x_i <- x_i + sum_j W_ij clip_tau(x_j - x_i), with an adaptive radius tau
  (``clipping_radius``). A bad neighbour j moves x_i by at most W_ij * tau.
- ``trimmed-mean``: the coordinate-wise trimmed mean of x_i and the
  neighbours' x_j, dropping the b largest and b smallest values of every
  coordinate.

``b`` is the number of bad neighbours a peer is meant to tolerate. Like
``gossip.mix``, every function here takes the peer's own tensors, what
arrived this round and the peer's row of W, never modifies its inputs,
returns new tensors, and visits neighbours in the row's order, so the result
does not depend on the order in which messages arrived.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from ..tensors import Tensors


# Weights such as 1/3 or 1/6 are not exact in binary, so two sets of
# neighbours whose weights are equal as fractions can sum to floats a few
# ulps apart; without this slack such a tie would be decided by rounding.
WEIGHT_TOLERANCE = 1e-12


def neighbours_heard(self_id: str, row: Mapping[str, float], received: Mapping[str, object]) -> list[str]:
    """The in-neighbours of this round's row that arrived, in the row's order (never the arrival order)."""
    return [peer_id for peer_id in row if peer_id != self_id and peer_id in received]


def distance(theirs: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> float:
    """||theirs - own|| over all tensors as one flat vector; inf if the difference is not finite."""
    squares = []
    for name, tensor in own.items():
        # float64 sums: a float32 model with millions of entries would lose digits otherwise.
        norm = torch.linalg.vector_norm(theirs[name] - tensor.detach(), dtype=torch.float64).item()
        squares.append(norm * norm)
    total = math.sqrt(math.fsum(squares))
    # NaN counts as infinitely far: it must never look close, and it must sort.
    return total if math.isfinite(total) else math.inf


def clipping_radius(distances: Mapping[str, float], weights: Mapping[str, float], b: int) -> float:
    """ClippedGossip's adaptive radius: a weighted quantile of the neighbours' distances.

    The paper clips so that the mixing weight of the clipped neighbours is
    delta_i, the total weight of peer i's bad neighbours. A peer does not know
    which neighbours are bad, only that there are at most ``b``, so delta_i is
    taken as the most weight any ``b`` of the neighbours heard could hold
    (the sum of the ``b`` largest weights). The radius is then the smallest
    tau >= 0 such that

        sum of W_ij over the neighbours j with ||x_j - x_i|| > tau  <=  delta_i.

    Why this rule: just below tau, the neighbours at distance >= tau weigh
    more than any b neighbours can, so at least one of them is honest and tau
    is at most the distance of an honest neighbour. A bad neighbour can
    therefore never push tau up by moving away, and it moves x_i by at most
    W_ij * tau, a distance set by the honest neighbours.

    With equal weights this is the (b+1)-th largest distance (the b farthest
    neighbours are clipped to the next one's distance); with unequal weights
    more than b light neighbours may be clipped when they weigh no more than b
    heavy ones. When no more than b neighbours were heard, tau is 0: all of
    them may be bad, so the peer keeps its own parameters this round. b = 0
    gives the largest distance: nothing is clipped.

    The price: a neighbour that disagrees with all the others is clipped
    like a bad one, honest or not. In pure averaging (no local steps) peers
    can therefore settle in clusters that never merge: with b = 1 on a ring,
    and even on a 4x4 torus, ClippedGossip stops short of consensus without
    any attacker (so does the trimmed mean).
    """
    budget = math.fsum(sorted((weights[peer_id] for peer_id in distances), reverse=True)[:b])

    def weight_beyond(radius: float) -> float:
        return math.fsum(weights[peer_id] for peer_id, d in distances.items() if d > radius)

    # The weight beyond a radius only falls as the radius grows, and it is 0 at
    # the largest distance, so the first candidate that fits is the smallest tau.
    candidates = sorted({0.0, *distances.values()})
    return next(radius for radius in candidates if weight_beyond(radius) <= budget + WEIGHT_TOLERANCE)


def clip_scale(distance_: float, radius: float) -> float:
    """The factor clip_tau applies to a difference of norm ``distance_``: min(1, tau / ||z||)."""
    if math.isinf(distance_):
        # The direction of an infinite (or NaN) difference is undefined: such a neighbour adds nothing.
        return 0.0
    return 1.0 if distance_ <= radius else radius / distance_


@dataclass(frozen=True)
class Clipping:
    """One round of ClippedGossip: the mixed tensors and how they were clipped."""

    tensors: Tensors
    radius: float
    distances: dict[str, float]

    @property
    def clipped(self) -> list[str]:
        """Neighbours whose difference was shortened to the radius (in the row's order)."""
        return [peer_id for peer_id, d in self.distances.items() if d > self.radius]


def clipped_gossip(
    self_id: str,
    own: Mapping[str, torch.Tensor],
    received: Mapping[str, Mapping[str, torch.Tensor]],
    row: Mapping[str, float],
    b: int = 1,
    radius: float | None = None,
) -> Clipping:
    """x_i + sum_j W_ij clip_tau(x_j - x_i) over the neighbours heard, into new tensors.

    ``radius`` fixes tau; None (the default) picks it per round with
    ``clipping_radius``. A neighbour that did not arrive adds nothing, which
    is exactly gossip's rule of giving its weight to the peer itself (the
    self term x_i - x_i is zero).
    """
    heard = neighbours_heard(self_id, row, received)
    distances = {peer_id: distance(received[peer_id], own) for peer_id in heard}
    if radius is None:
        radius = clipping_radius(distances, {peer_id: row[peer_id] for peer_id in heard}, b)
    scales = {peer_id: clip_scale(distances[peer_id], radius) for peer_id in heard}
    mixed: Tensors = {}
    for name, tensor in own.items():
        base = tensor.detach()
        acc = base.clone()
        for peer_id in heard:
            if scales[peer_id]:
                acc.add_(received[peer_id][name] - base, alpha=row[peer_id] * scales[peer_id])
        mixed[name] = acc
    return Clipping(mixed, radius, distances)


def clipped_mix(
    self_id: str,
    own: Mapping[str, torch.Tensor],
    received: Mapping[str, Mapping[str, torch.Tensor]],
    row: Mapping[str, float],
    b: int = 1,
    radius: float | None = None,
) -> Tensors:
    """``clipped_gossip``'s tensors alone, with the same arguments as ``gossip.mix`` plus b and radius."""
    return clipped_gossip(self_id, own, received, row, b, radius).tensors


def trim_per_end(count: int, b: int) -> int:
    """How many values to drop at each end of ``count``: b, or as many as still leave the median.

    With count <= 2b there are too few values to drop b at both ends; dropping
    (count - 1) // 2 instead leaves the middle one (count odd) or the middle
    two, whose mean is the median (count even). So the fallback is the
    coordinate-wise median, never an empty set.
    """
    return min(b, (count - 1) // 2)


def trimmed_mean(
    self_id: str,
    own: Mapping[str, torch.Tensor],
    received: Mapping[str, Mapping[str, torch.Tensor]],
    row: Mapping[str, float],
    b: int = 1,
) -> Tensors:
    """Coordinate-wise trimmed mean of x_i and the neighbours heard, into new tensors.

    Every value counts the same: the weights of W are not used, only which
    peers the row names as neighbours (a weighted trimmed mean has no single
    standard definition, and the unweighted one is what the robustness
    results for it are about). Each coordinate drops its b largest and b
    smallest values and averages the rest; see ``trim_per_end`` for fewer
    than 2b + 1 values. NaN sorts above every number, so up to b NaN values
    per coordinate are trimmed like any other outlier.
    """
    heard = neighbours_heard(self_id, row, received)
    count = 1 + len(heard)
    trim = trim_per_end(count, b)
    mixed: Tensors = {}
    for name, tensor in own.items():
        stacked = torch.stack([tensor.detach()] + [received[peer_id][name] for peer_id in heard])
        # Sorting makes the kept values, and so their sum, independent of arrival order.
        kept = stacked.sort(dim=0).values[trim:count - trim]
        mixed[name] = kept.mean(dim=0)
    return mixed
