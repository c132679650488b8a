"""Models a peer can train. Built from the seed, so every peer starts from the same replica."""

from __future__ import annotations

import torch
from torch import nn

MODELS = ("logreg", "mlp")


def build_model(name: str, n_features: int, n_classes: int, *, hidden: int = 64, seed: int = 0) -> nn.Module:
    # Same seed on every peer: decentralized SGD assumes a common starting point.
    torch.manual_seed(seed)
    if name == "logreg":
        return nn.Linear(n_features, n_classes)
    if name == "mlp":
        return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, n_classes))
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


class Trainer:
    """Local SGD on one shard, with batches drawn from the peer's own generator."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int,
                 lr: float, momentum: float = 0.0, weight_decay: float = 0.0, seed: int = 0):
        self.model = model
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

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def local_steps(self, steps: int) -> float:
        """Run ``steps`` SGD steps; returns the mean training loss over them."""
        self.model.train()
        total = 0.0
        for _ in range(steps):
            x, y = self._next_batch()
            self.optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(self.model(x), y)
            loss.backward()
            self.optimizer.step()
            total += loss.item()
        return total / max(steps, 1)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(loss, accuracy) of the current model on (x, y)."""
        self.model.eval()
        logits = self.model(x)
        return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())
