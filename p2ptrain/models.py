"""Models a peer can train, and local SGD on one shard.

Models are built from the seed, so every peer starts from the same replica.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

MODELS = ("auto", "logreg", "mlp", "linear")


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
                hidden: int = 64, seed: int = 0) -> nn.Module:
    name = resolve_model_name(name, task)
    # Same seed on every peer: decentralized SGD and ADMM assume a common starting point.
    torch.manual_seed(seed)
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


class Trainer:
    """Local SGD on one shard, with batches drawn from the peer's own generator."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, task: str = "classification",
                 batch_size: int, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, seed: int = 0):
        self.model = model
        self.task = task
        self.x, self.y = x, y
        self.batch_size = min(batch_size, len(x))
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.long)
        self._cursor = 0

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Epochs over a fresh permutation: every example is seen once per pass.
        if self._cursor + self.batch_size > len(self._order):
            self._order = torch.randperm(len(self.x), generator=self.generator)
            self._cursor = 0
        index = self._order[self._cursor:self._cursor + self.batch_size]
        self._cursor += self.batch_size
        return self.x[index], self.y[index]

    def reset_optimizer_state(self) -> None:
        """Forget momentum: the next steps start a new subproblem (an ADMM local solve)."""
        self.optimizer.state.clear()

    def state_dict(self) -> dict:
        """Optimizer state and where the batch sampler stands, for checkpoints."""
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "order": self._order, "cursor": self._cursor}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self._order, self._cursor = state["order"], state["cursor"]

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def local_steps(self, steps: int, penalty: Callable[[], torch.Tensor] | None = None) -> float:
        """Run ``steps`` SGD steps on the batch loss (plus ``penalty()`` if given); returns the mean batch loss."""
        self.model.train()
        total = 0.0
        for _ in range(steps):
            x, y = self._next_batch()
            self.optimizer.zero_grad(set_to_none=True)
            loss = task_loss(self.task, self.model(x), y)
            objective = loss + penalty() if penalty is not None else loss
            objective.backward()
            self.optimizer.step()
            total += loss.item()
        return total / max(steps, 1)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float | None, float | None]:
        """(loss, accuracy) of the current model on (x, y); None where it does not apply or there is no data."""
        if len(x) == 0:
            return None, None
        self.model.eval()
        output = self.model(x)
        loss = float(task_loss(self.task, output, y))
        if self.task == "classification":
            return loss, float((output.argmax(1) == y).float().mean())
        if self.task == "binary":
            return loss, float(((output > 0).long() == y).float().mean())
        return loss, None
