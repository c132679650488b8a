"""Tasks: what a swarm trains. One object builds the model, hands each peer its shard, computes a batch's
loss and evaluates; the built-in datasets are tasks like any other.

A task is named on the command line as a built-in name (``digits``), as
``package.module:attribute`` (the convention of uvicorn and gunicorn) or as
``path/to/file.py:attribute``. The attribute is a task object, or a callable
(a class, a function) that makes one when called with no arguments.

What a task must guarantee (docs/api.md): ``build_model`` gives the same
model on every peer once p2ptrain has seeded torch (it does so before the
call), and ``shard`` is a pure function of (index, count, seed), so every
peer computes the same partition and keeps only its own part.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import sys
import traceback
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn


class TaskError(ValueError):
    """A task that cannot be found or used; the message says how to fix it."""


class Task:
    """The task protocol, with the optional parts filled in. Subclass it, or write any object whose
    required methods have these signatures (p2ptrain checks for them, not for the base class)."""

    name: str = "task"
    # Options this task runs best with (lr, batch_size, rounds, local_steps, ...), used wherever
    # the command line does not set them.
    defaults: Mapping[str, Any] = {}
    # The figure of evaluate() that the launcher shows and the experiment runner compares runs by.
    headline: str = "test_accuracy"

    def build_model(self) -> nn.Module:
        """A fresh model. torch is seeded before the call, so every peer builds the same one."""
        raise NotImplementedError

    def shard(self, index: int, count: int, seed: int):
        """Peer ``index`` of ``count``'s training data: a torch Dataset, or a DataLoader (its dataset,
        batch size and collate_fn are used; p2ptrain draws the batches itself, see training.Batches)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        """The loss of one batch (as the shard's dataset and collate_fn make it), on the model's device."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Held-out figures, the same data for every peer: e.g. {"test_loss": .., "test_accuracy": ..}."""
        return {}

    def optimizer(self, parameters, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
        """The local optimizer; --lr, --momentum and --weight-decay are passed in. Default: SGD."""
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)


REQUIRED = ("build_model", "shard", "loss")


def load_task(spec: str, arguments: Mapping[str, Any] | None = None, written: Mapping[str, str] | None = None) -> Any:
    """The task named by ``spec``: MODULE:ATTRIBUTE or FILE.py:ATTRIBUTE (built-in names are resolved
    by builtin_tasks.task_from_options, which calls this for everything else). A class or function
    is called with ``arguments`` (--task-args) as keyword arguments; a parameter annotated ``str`` gets the
    text as ``written`` (a file name like 007, a prompt like 0123), not the number it reads as."""
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise TaskError(f"--task {spec!r}: name a task as package.module:attribute or path/to/file.py:attribute "
                        "(e.g. examples/custom_model.py:task), or use a built-in one")
    module = _import(module_name, spec)
    try:
        found = getattr(module, attribute)
    except AttributeError:
        public = sorted(name for name in vars(module) if not name.startswith("_"))
        raise TaskError(f"--task {spec!r}: {module_name} has no attribute {attribute!r} "
                        f"(it has {', '.join(public[:12]) or 'nothing public'})") from None
    # A class or function makes the task; any other object is one (check_task says what it lacks).
    if callable(found) and not _is_task(found):
        task = _call(found, spec, dict(arguments or {}), dict(written or {}))
    elif arguments:
        raise TaskError(f"--task {spec!r} is a task object, which takes no --task-args; point --task at a "
                        "class or function that makes the task from them")
    else:
        task = found
    check_task(task, spec)
    return task


def _import(module_name: str, spec: str):
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise TaskError(f"--task {spec!r}: no file {path} (relative paths are from {Path.cwd()})")
        # A module name of its own per file, so two task files named alike do not replace each other.
        name = f"p2ptrain_task_{abs(hash(str(path.resolve())))}"
        if name in sys.modules:
            return sys.modules[name]
        loader_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        try:
            loader_spec.loader.exec_module(module)
        except BaseException as error:
            del sys.modules[name]
            if isinstance(error, Exception):
                raise TaskError(f"--task {spec!r}: {path} failed to import: {_failure(error)}") from None
            raise
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        top = module_name.partition(".")[0]
        here = str(Path.cwd())
        if error.name == top and here not in sys.path and importlib.machinery.PathFinder.find_spec(top, [here]):
            # A module of the current directory, as `python -m` finds it (a launcher script does not).
            sys.path.insert(0, here)
            return _import(module_name, spec)
        raise TaskError(f"--task {spec!r}: cannot import {module_name} ({error}); is it installed, or on "
                        "PYTHONPATH? A file is named path/to/file.py:attribute") from None
    except Exception as error:  # the module's own code failed
        raise TaskError(f"--task {spec!r}: {module_name} failed to import: {_failure(error)}") from None


def _failure(error: Exception) -> str:
    """Where the task's own code failed and why, in one line: FILE:LINE: Error: message."""
    if isinstance(error, SyntaxError):
        return f"{error.filename}:{error.lineno}: SyntaxError: {error.msg}"
    frames = traceback.extract_tb(error.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""
    return f"{where}{type(error).__name__}: {error}"


def _is_task(value: Any) -> bool:
    return not isinstance(value, type) and all(callable(getattr(value, m, None)) for m in REQUIRED)


def _call(factory: Any, spec: str, arguments: dict[str, Any], written: dict[str, str]) -> Any:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to read (some built-in callables): called as given
        parameters = None
    if parameters is not None:
        names = [name for name, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(arguments) - set(names))
        if unknown and not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            raise TaskError(f"--task {spec!r} takes no --task-args {', '.join(unknown)}; it takes "
                            f"{', '.join(names) or 'none'}")
        texts = {name for name in names if parameters[name].annotation in (str, "str")}
        arguments = {key: written[key] if key in texts and key in written else value
                     for key, value in arguments.items()}
    try:
        return factory(**arguments)
    except TypeError as error:
        given = ", ".join(f"{k}={v!r}" for k, v in arguments.items()) or "no arguments"
        raise TaskError(f"--task {spec!r}: calling it with {given} failed ({error}); point --task at a task "
                        "object, or at a function or class that makes one from --task-args") from None


def check_task(task: Any, spec: str) -> None:
    missing = [m for m in REQUIRED if not callable(getattr(task, m, None))]
    if missing:
        raise TaskError(f"--task {spec!r} gives a {type(task).__name__}, which lacks {', '.join(missing)}: a task "
                        "builds the model, gives a peer its shard and computes a batch's loss (docs/api.md)")


def task_name(task: Any) -> str:
    return getattr(task, "name", type(task).__name__)


def headline_figure(task: Any) -> str:
    """The figure of ``evaluate`` that runs are shown and compared by: the task's ``headline``, else test_accuracy."""
    return getattr(task, "headline", "test_accuracy")


def task_defaults(task: Any) -> dict[str, Any]:
    return dict(getattr(task, "defaults", {}) or {})


def build_optimizer(task: Any, parameters, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    make = getattr(task, "optimizer", None)
    if make is None:
        return Task.optimizer(task, parameters, lr, momentum, weight_decay)
    return make(parameters, lr, momentum, weight_decay)


def in_eval_mode(model: nn.Module, work):
    """``work()`` with the model in eval mode and no gradients; the mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return work()
    finally:
        model.train(was_training)


def evaluate(task: Any, model: nn.Module) -> dict[str, float]:
    """The task's held-out figures, with the model in eval mode and no gradients."""
    judge = getattr(task, "evaluate", None)
    if judge is None:
        return {}
    figures = in_eval_mode(model, lambda: judge(model))
    return {name: float(value) for name, value in (figures or {}).items() if value is not None}
