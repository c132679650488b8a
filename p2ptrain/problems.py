"""Convex problems with a known centralized optimum: each peer's f_i, the exact ADMM local solves, and x*.

For these the swarm's goal is the minimiser x* of F(x) = sum_i f_i(x), and
it can be computed centrally to check the swarm against:

- least squares (``synthetic-lstsq``): f_i(x) = 1/2 ||A_i x - b_i||^2, so x* is
  numpy.linalg.lstsq of the stacked data;
- L2-regularised logistic regression (``breast-cancer``): f_i(x) = sum over the
  peer's examples of log(1 + exp(-y a^T x)) + lam / (2 n) ||x||^2 with y in
  {-1, +1}, so F carries lam/2 ||x||^2 once; x* by Newton's method.

ADMM's local step minimises f_i(x) + q ||x||^2 - <v, x> for a vector v and a
scalar q that the algorithm supplies (see algorithms/admm.py); ``argmin_augmented``
does that exactly (least squares) or to a tolerance far below any target
(Newton for logistic regression).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from .data import load_dataset

# Global L2 weight of the logistic problem (on the sum of per-example losses).
LOGISTIC_L2 = 1.0
# Newton stops when the objective is within this (relative) of its minimum: near
# float64's resolution, so x is within about sqrt of it of the minimiser.
NEWTON_TOLERANCE = 1e-20
NEWTON_MAX_STEPS = 100


class LocalProblem(ABC):
    @abstractmethod
    def objective(self, x: torch.Tensor) -> float:
        """f_i(x)."""

    @abstractmethod
    def argmin_augmented(self, v: torch.Tensor, q: float, start: torch.Tensor) -> torch.Tensor:
        """argmin_x f_i(x) + q ||x||^2 - <v, x>."""


class LeastSquares(LocalProblem):
    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        self.a, self.b = a.double(), b.double()
        self.gram = self.a.T @ self.a
        self.atb = self.a.T @ self.b
        self._factor: tuple[float, torch.Tensor] | None = None

    def objective(self, x: torch.Tensor) -> float:
        return 0.5 * float(torch.sum((self.a @ x - self.b) ** 2))

    def argmin_augmented(self, v: torch.Tensor, q: float, start: torch.Tensor) -> torch.Tensor:
        # (A^T A + 2q I) x = A^T b + v. The matrix only changes with q, which is
        # fixed for a run, so it is factored once and every solve is two triangular solves.
        if self._factor is None or self._factor[0] != q:
            eye = torch.eye(self.gram.shape[0], dtype=torch.float64)
            self._factor = (q, torch.linalg.cholesky(self.gram + 2 * q * eye))
        rhs = (self.atb + v).unsqueeze(1)
        return torch.cholesky_solve(rhs, self._factor[1]).squeeze(1)


class LogisticL2(LocalProblem):
    def __init__(self, a: torch.Tensor, labels01: torch.Tensor, l2: float):
        self.a = a.double()
        self.y = labels01.double() * 2 - 1  # {0, 1} -> {-1, +1}
        self.l2 = l2

    def objective(self, x: torch.Tensor) -> float:
        margins = self.y * (self.a @ x)
        return float(torch.nn.functional.softplus(-margins).sum() + 0.5 * self.l2 * x @ x)

    def _augmented(self, x, v, q):
        return self.objective(x) + q * float(x @ x) - float(v @ x)

    def argmin_augmented(self, v: torch.Tensor, q: float, start: torch.Tensor) -> torch.Tensor:
        # Damped Newton: the augmented objective is strongly convex (l2 + 2q > 0),
        # and backtracking keeps early steps from far starting points safe.
        x = start.double().clone()
        eye = torch.eye(x.shape[0], dtype=torch.float64)
        for _ in range(NEWTON_MAX_STEPS):
            p = torch.sigmoid(-self.y * (self.a @ x))  # per-example weight of the gradient
            grad = -(self.a.T @ (self.y * p)) + (self.l2 + 2 * q) * x - v
            hess = self.a.T @ (self.a * (p * (1 - p)).unsqueeze(1)) + (self.l2 + 2 * q) * eye
            step = torch.linalg.solve(hess, grad)
            # Half the squared Newton decrement bounds how far the objective is from
            # its minimum; below float64's resolution of the objective, stop.
            decrement = float(grad @ step)
            current = self._augmented(x, v, q)
            if decrement / 2 <= NEWTON_TOLERANCE * max(1.0, abs(current)):
                break
            t = 1.0
            # Close to the minimum a full Newton step is right, and an objective
            # comparison there would only measure rounding; damp only far from it.
            if decrement > 1e-6 * max(1.0, abs(current)):
                while t > 1e-10 and self._augmented(x - t * step, v, q) > current - 0.25 * t * decrement:
                    t *= 0.5
            x = x - t * step
        return x


def local_problem(task: str, a: torch.Tensor, y: torch.Tensor, n_peers: int) -> LocalProblem:
    """A peer's f_i from its own shard (features ``a``, targets ``y``) of a convex dataset."""
    if task == "regression":
        return LeastSquares(a, y)
    if task == "binary":
        return LogisticL2(a, y, LOGISTIC_L2 / n_peers)
    raise ValueError(f"a {task} dataset has no convex problem with a known optimum")


def has_reference(dataset: str) -> bool:
    return dataset in ("synthetic-lstsq", "breast-cancer")


def centralized_optimum(dataset: str, n_peers: int) -> torch.Tensor:
    """x* of the whole problem, computed in one place from all the data."""
    data = load_dataset(dataset, n_peers)
    if data.task == "regression":
        solution, *_ = np.linalg.lstsq(data.x_train, data.y_train, rcond=None)
        return torch.from_numpy(solution)
    # One "peer" holding all the data carries the full L2 weight once.
    whole = local_problem(data.task, torch.from_numpy(data.x_train), torch.from_numpy(data.y_train), 1)
    zero = torch.zeros(data.n_features, dtype=torch.float64)
    return whole.argmin_augmented(zero, 0.0, zero)
