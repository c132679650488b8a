"""The one name for what algorithms, attacks and fragments pass around: tensors by name; and the
per-round diagnostics computed over them."""

from __future__ import annotations

import math
from typing import Mapping

import torch

Tensors = dict[str, torch.Tensor]


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN and no Inf in ``tensor``: exactly ``isfinite(tensor).all()``, mostly in one pass of a sum.

    A sum is NaN or infinite whenever one of its terms is (in IEEE 754 arithmetic nothing adds a NaN
    or an infinity back to a finite value), so a finite sum proves every element finite. A non-finite
    sum comes from a non-finite element or from finite ones too large to add up; only then are the
    smallest and largest values looked at (a NaN makes both NaN, an Inf is one of them). float32 and
    float64 are summed in their own precision; half precision goes straight to the extremes, its sums
    overflowing too soon to be worth trying. On a 16 MiB float32 tensor the sum takes about a quarter
    of the time of the extremes and ``isfinite`` writes a boolean tensor of the input's size first."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    tensor = tensor.detach()
    if tensor.dtype in (torch.float32, torch.float64) and math.isfinite(tensor.sum()):
        return True
    smallest, largest = torch.aminmax(tensor)
    return bool(torch.isfinite(smallest)) and bool(torch.isfinite(largest))


def norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """The Euclidean norm of the floating-point tensors taken as one vector: each reduced in its own
    precision (half precision widened to float32), the squares summed in float64, with no float64 copy
    of the whole model (a per-round metric must cost little beside the round, docs/performance.md)."""
    squares = 0.0
    for tensor in tensors.values():
        if tensor.is_floating_point():
            tensor = tensor.detach()
            squares += float(torch.linalg.vector_norm(tensor, dtype=torch.promote_types(tensor.dtype,
                                                                                          torch.float32))) ** 2
    return math.sqrt(squares)


def relative_distance_to_mean(own: Mapping[str, torch.Tensor], neighbours: list[Mapping[str, torch.Tensor]]) -> float | None:
    """||x_i - mean_j x_j|| / ||x_i|| over the neighbours heard this round, before mixing.

    A diagnostic: tensor by tensor, in each tensor's own precision (half precision widened to float32),
    with at most one temporary the size of the largest tensor, instead of float64 copies of the whole
    model per message (docs/performance.md). The squares are summed across tensors in float64. Its value
    agrees with the all-float64 one to about five significant digits."""
    if not neighbours or not own:  # not own: the messages do not carry parameters (push-sum's running sums)
        return None
    squared_distance = 0.0
    count = len(neighbours)
    for name, mine in own.items():
        if not mine.is_floating_point():
            continue
        mine = mine.detach()
        precision = torch.promote_types(mine.dtype, torch.float32)
        if count == 1 and mine.dtype == precision:
            distance = torch.dist(neighbours[0][name], mine)  # one pass, no temporary
        else:
            total = neighbours[0][name].to(precision, copy=True)
            for other in neighbours[1:]:
                total.add_(other[name])
            # ||sum_j x_j - k x_i|| / k = ||mean_j x_j - x_i||
            distance = torch.linalg.vector_norm(total.sub_(mine, alpha=count)) / count
        squared_distance += float(distance) ** 2
    return math.sqrt(squared_distance) / max(norm(own), 1e-30)
