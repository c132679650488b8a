"""The built-in tasks: the datasets of data.py with the models of models.py, as tasks like any plugin.

``--dataset`` and ``--model`` name one of these; ``--task`` names one too, or
a task of the user's own (task.py). The convex ones (least squares, L2
logistic regression) also give ADMM its exact local problem and the
centralized optimum to measure the swarm against.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn
from torch.utils.data import TensorDataset

from .config import NAMED_TASKS, parse_task_args, task_args_as_written
from .data import DATASETS, TASKS, DataError, check_partition, load_dataset, shard_indices
from .models import build_model, resolve_model_name, task_loss
from .problems import LocalProblem, local_problem
from .task import TaskError, load_task

# ADMM's penalty c depends on the scale of the local objectives: these are the
# best values of the sweep in docs/admm.md (ring8), used unless --admm-penalty is given.
ADMM_PENALTY = {"synthetic-lstsq": 100.0, "breast-cancer": 1.0, "digits": 0.1, "synthetic": 0.1}
BUILTIN_TASKS = DATASETS + NAMED_TASKS


@lru_cache(maxsize=8)
def _dataset(name: str, n_peers: int):
    # Loading (and for synthetic-lstsq, generating) is deterministic, so one copy per process serves
    # every peer of an in-process swarm and the lockstep simulation.
    return load_dataset(name, n_peers)


class DatasetTask:
    """A dataset of data.py, split by ``partition``, with one of the models of models.py."""

    def __init__(self, dataset: str = "digits", model: str = "auto", hidden: int = 64, partition: str = "iid"):
        if dataset not in DATASETS:
            raise TaskError(f"unknown built-in task {dataset!r}; choose from {', '.join(DATASETS)}, or name "
                            "your own as module:attribute or file.py:attribute")
        self.name = dataset
        self.kind = TASKS[dataset]  # classification, binary or regression
        try:
            self.model_name = resolve_model_name(model, self.kind)
            check_partition(dataset, partition)
        except ValueError as error:  # DataError is one
            raise TaskError(str(error)) from None
        self.hidden = hidden
        self.partition = partition
        self.admm_penalty = ADMM_PENALTY[dataset]

    def _data(self, count: int = 1):
        return _dataset(self.name, count)

    def build_model(self) -> nn.Module:
        data = self._data()
        return build_model(self.model_name, data.n_features, data.n_classes, task=self.kind, hidden=self.hidden)

    def shard(self, index: int, count: int, seed: int) -> TensorDataset:
        data = self._data(count)
        try:
            indices = shard_indices(data, self.partition, count, seed)[index]
        except DataError as error:
            raise TaskError(str(error)) from None
        return TensorDataset(torch.from_numpy(data.x_train[indices]), torch.from_numpy(data.y_train[indices]))

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        x, y = batch
        return task_loss(self.kind, model(x), y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        data = self._data()
        if len(data.x_test) == 0:
            return {}
        device = next(model.parameters()).device
        x, y = torch.from_numpy(data.x_test).to(device), torch.from_numpy(data.y_test).to(device)
        output = model(x)
        figures = {"test_loss": float(task_loss(self.kind, output, y))}
        if self.kind == "classification":
            figures["test_accuracy"] = float((output.argmax(1) == y).float().mean())
        elif self.kind == "binary":
            figures["test_accuracy"] = float(((output > 0).long() == y).float().mean())
        return figures


class ConvexTask(DatasetTask):
    """A convex dataset: its f_i is known in closed form, so ADMM can solve locally exactly, and the
    centralized optimum x* can be computed in one place to measure the swarm against."""

    def local_problem(self, shard: TensorDataset, count: int) -> LocalProblem:
        a, y = shard.tensors
        return local_problem(self.kind, a, y, count)

    def centralized_optimum(self, count: int) -> torch.Tensor:
        from .problems import centralized_optimum

        return centralized_optimum(self.name, count)


def builtin_task(dataset: str, model: str = "auto", hidden: int = 64, partition: str = "iid") -> DatasetTask:
    kind = ConvexTask if dataset in ("synthetic-lstsq", "breast-cancer") else DatasetTask
    return kind(dataset, model, hidden, partition)


def task_from_options(task: str, dataset: str = "digits", model: str = "auto", hidden: int = 64,
                      partition: str = "iid", task_args: str = ""):
    """The task a configuration names: --task (built-in or plugin), else --dataset with --model."""
    arguments = parse_task_args(task_args)
    if not task or task in DATASETS:
        if arguments:
            raise TaskError(f"the dataset tasks take --model, --hidden and --partition, not --task-args {task_args}")
        if task and dataset not in (task, "digits"):  # digits: --dataset's default, so perhaps not given
            raise TaskError(f"--task {task} and --dataset {dataset} name two tasks; give one of them")
        return builtin_task(task or dataset, model, hidden, partition)
    if model != "auto" or partition != "iid" or dataset != "digits" or hidden != 64:
        raise TaskError(f"--dataset, --model, --hidden and --partition choose among the built-in tasks' data, models "
                        f"and splits; the task {task} loads its own data, builds its own model and shards its data: "
                        "drop them")
    if task == "gpt-char":
        return load_task("p2ptrain.language:CharTask", arguments, task_args_as_written(task_args))
    return load_task(task, arguments, task_args_as_written(task_args))
