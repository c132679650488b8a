"""The built-in tasks' models: a linear classifier, a one-hidden-layer MLP, and the vector x of the convex problems.

The seed is set before a model is built, so every peer starts from the same replica.
"""

from __future__ import annotations

import torch
from torch import nn


class VectorModel(nn.Module):
    """A linear predictor a^T x with one float64 parameter vector ``x``: the variable of the convex problems."""

    def __init__(self, n_features: int):
        super().__init__()
        self.x = nn.Parameter(torch.zeros(n_features, dtype=torch.float64))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a.double() @ self.x


def resolve_model_name(name: str, task: str) -> str:
    if task == "classification":
        if name == "linear":
            raise ValueError("--model linear is for the convex datasets (synthetic-lstsq, breast-cancer); "
                             "use logreg or mlp for classification")
        return "mlp" if name == "auto" else name
    if name not in ("auto", "linear"):
        raise ValueError(f"the {task} datasets train the linear model x of a convex problem; "
                         f"use --model linear (or leave --model at auto), not {name}")
    return "linear"


def build_model(name: str, n_features: int, n_classes: int, *, task: str = "classification",
                hidden: int = 64) -> nn.Module:
    """The model, drawn from torch's global generator: the caller seeds it (replica.build_replica)."""
    name = resolve_model_name(name, task)
    if name == "linear":
        return VectorModel(n_features)
    if name == "logreg":
        return nn.Linear(n_features, n_classes)
    return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))


def task_loss(task: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if task == "classification":
        return nn.functional.cross_entropy(output, target)
    if task == "binary":
        return nn.functional.binary_cross_entropy_with_logits(output, target.to(output.dtype))
    return 0.5 * torch.mean((output - target.to(output.dtype)) ** 2)
