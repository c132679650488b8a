"""Tasks written as a user would write them, for the tests: not part of p2ptrain.

``batchnorm_adam``: an MLP with BatchNorm on the digits features, trained with Adam; its shard is a
DataLoader over a Dataset of dicts with a collate function of its own, not whole tensors.
``unbatched``: the same over a DataLoader with batch_size=None, to be refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, Dataset

import p2ptrain

_x, _y = load_digits(return_X_y=True)
FEATURES = torch.tensor(_x / 16, dtype=torch.float32)
LABELS = torch.tensor(_y)
TEST = slice(1500, None)  # the last 297 images, the same for every peer


class Examples(Dataset):
    """One dict per example, as many real datasets give them."""

    def __init__(self, rows: torch.Tensor):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = int(self.rows[i])
        return {"pixels": FEATURES[row], "label": LABELS[row]}


def stack(items: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([item["pixels"] for item in items]), torch.stack([item["label"] for item in items])


class BatchNormAdam(p2ptrain.Task):
    name = "batchnorm-adam"
    defaults = {"lr": 0.01, "lr_schedule": "constant"}

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))

    def shard(self, index: int, count: int, seed: int) -> DataLoader:
        rows = torch.randperm(1500, generator=torch.Generator().manual_seed(seed))[index::count]
        return DataLoader(Examples(rows), batch_size=16, collate_fn=stack)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        pixels, labels = batch
        return F.cross_entropy(model(pixels), labels)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        output = model(FEATURES[TEST])
        return {"test_accuracy": (output.argmax(1) == LABELS[TEST]).float().mean().item()}

    def optimizer(self, parameters, lr, momentum, weight_decay):
        return torch.optim.Adam(parameters, lr=lr)


batchnorm_adam = BatchNormAdam()


class Unbatched(BatchNormAdam):
    """The same data through a DataLoader with batch_size=None, which p2ptrain cannot draw batches from."""

    def shard(self, index: int, count: int, seed: int) -> DataLoader:
        return DataLoader(super().shard(index, count, seed).dataset, batch_size=None)


unbatched = Unbatched()


def make_task() -> BatchNormAdam:
    """A factory, as --task accepts too."""
    return BatchNormAdam()
