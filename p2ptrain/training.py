"""Local training on one peer's shard: reproducible batches, and optimizer steps that the algorithm can amend.

``Batches`` draws batches from a Dataset in shuffled epochs from the peer's
own seed and can say exactly where it stands, so a checkpoint resumes mid-epoch
and ``--resume`` stays bit-exact. ``LocalTrainer`` runs the task's loss through
the optimizer; between the backward pass and the step it lets the algorithm
add to the gradients (ADMM's penalty), the same hook the Python API puts on a
user's own optimizer.
"""

from __future__ import annotations

from typing import Any, Callable

import os

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset, default_collate


def as_dataset(shard: Any) -> tuple[Dataset, Callable | None, int | None]:
    """(dataset, collate_fn, batch size) of what a task's ``shard`` returned: a Dataset or a DataLoader.
    Of a DataLoader the dataset, collate_fn and batch size are used; the batches are drawn here.

    Drawing them here (``Batches``) is what makes a run reproducible and a resumed one exact, so the
    dataset must be one that can be indexed and counted; the errors say how to give one."""
    if isinstance(shard, DataLoader):
        # batch_size is None with a batch_sampler too (batching on, its size the sampler's); with neither,
        # automatic batching is off.
        if shard.batch_size is None and shard.batch_sampler is None and not isinstance(shard.dataset, IterableDataset):
            raise TypeError("the task's DataLoader has batch_size=None (its dataset's items would be whole "
                            "batches), but a peer draws batches of examples itself, in an order of its seed: "
                            "give the DataLoader a batch_size (the examples per local step), or return its "
                            "Dataset and pass --batch-size")
        dataset, collate = shard.dataset, shard.collate_fn
        batch_size = shard.batch_size or getattr(shard.batch_sampler, "batch_size", None)
    else:
        dataset, collate, batch_size = shard, None, None
    if isinstance(dataset, IterableDataset) or not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        what = "an IterableDataset" if isinstance(dataset, IterableDataset) else f"a {type(dataset).__name__}"
        raise TypeError(f"a task's shard must be a map-style torch Dataset (with __getitem__ and __len__) or a "
                        f"DataLoader over one, not {what}: a peer draws its batches by index, in an order of its "
                        "seed, so a run repeats and a resumed one continues exactly. Give the examples of the "
                        "shard as a Dataset (a TensorDataset of the tensors, or a list of examples)")
    return dataset, collate, batch_size


class Batches:
    """Batches of ``batch_size`` in epochs over a fresh permutation from ``seed``: every example once per pass."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, collate: Callable | None = None):
        if len(dataset) == 0:
            raise ValueError("this peer's shard is empty; give every peer at least one example")
        self.dataset = dataset
        self.batch_size = min(batch_size, len(dataset))
        self.collate = collate or default_collate
        self.generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.long)
        self._cursor = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def next(self):
        if self._cursor + self.batch_size > len(self._order):
            self._order = torch.randperm(len(self.dataset), generator=self.generator)
            self._cursor = 0
        index = self._order[self._cursor:self._cursor + self.batch_size]
        self._cursor += self.batch_size
        if isinstance(self.dataset, TensorDataset) and self.collate is default_collate:
            # Whole tensors indexed at once: the same values as collating rows, without the per-row cost
            # (a collate_fn of the task's own is called as given).
            return tuple(tensor[index] for tensor in self.dataset.tensors)
        return self.collate([self.dataset[i] for i in index.tolist()])

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self._order, "cursor": self._cursor}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._order, self._cursor = state["order"], state["cursor"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the GPU of this process's local rank ($LOCAL_RANK, as torchrun sets it) when CUDA is
    present, else the CPU; anything else is a torch device name (cpu, cuda, cuda:1, mps)."""
    if name and name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError as error:
            raise ValueError(f"--device {name}: {error}; use cpu, cuda, cuda:N or auto") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {name}: this machine has no CUDA device (or torch was built without "
                             "CUDA); use --device cpu, or auto to take a GPU where there is one")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch with every tensor in it moved to ``device`` (tuples, namedtuples, lists and dicts are walked)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple: its fields are its arguments
        return type(batch)(*(to_device(item, device) for item in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    return batch


class LocalTrainer:
    """Optimizer steps on the task's loss. ``before_step`` runs between backward and step (the algorithm's
    hook); the loss returned is the task's alone, without anything the hook adds."""

    def __init__(self, model: torch.nn.Module, task: Any, batches: Batches, optimizer: torch.optim.Optimizer,
                 device: torch.device, before_step: Callable[[], None] = lambda: None):
        self.model, self.task, self.batches, self.optimizer = model, task, batches, optimizer
        self.device = device
        self.before_step = before_step
        # The schedule scales each group's own learning rate: a task's optimizer may give groups different ones.
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]

    def set_lr(self, schedule: Callable[[float], float]) -> None:
        """Set every group's learning rate to ``schedule(its base rate)``."""
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = schedule(base)

    def reset_optimizer_state(self) -> None:
        """Forget momentum and moment estimates: the next steps start a new subproblem (an ADMM local solve)."""
        self.optimizer.state.clear()

    def steps(self, count: int) -> float:
        """Run ``count`` optimizer steps; returns the mean batch loss."""
        self.model.train()
        total = 0.0
        for _ in range(count):
            batch = to_device(self.batches.next(), self.device)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.task.loss(self.model, batch)
            loss.backward()
            self.before_step()
            self.optimizer.step()
            total += loss.item()
        return total / max(count, 1)

    def state_dict(self) -> dict:
        """Optimizer state and where the batch sampler stands, for checkpoints."""
        return {"optimizer": self.optimizer.state_dict(), "batches": self.batches.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["batches"])
