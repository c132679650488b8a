"""Decentralized consensus ADMM (Shi, Ling, Yuan, Wu, Yin, IEEE TSP 2014), one peer's share.

With penalty c, neighbours N_i (d = |N_i|), dual alpha_i (0 at the start), iteration k:

    x_i(k+1)     = argmin_x f_i(x) + <alpha_i(k), x> + c sum_j ||x - (x_i(k) + x_j(k)) / 2||^2
    alpha_i(k+1) = alpha_i(k) + c sum_j (x_i(k+1) - x_j(k+1))

Expanding the square, the x-update is argmin_x f_i(x) + q ||x||^2 - <v, x> with
q = c d and v = c (d x_i(k) + sum_j x_j(k)) - alpha_i(k); the local solver does that.

Missing messages. The dual is a sum over edges, alpha_i = sum_j lambda_ij with
lambda_ij(k) = c sum_{t<=k} (x_i(t) - x_j(t)), and it is only right while
lambda_ij = -lambda_ji: if one end of an edge applied an increment the other
did not see, the duals stop summing to zero and the iteration converges,
quietly, to the wrong point. So peers do not accumulate increments. Each
sends, with x_i(k), its running sum S_i(k) = sum_{t<=k} x_i(t), and
lambda_ij is *recomputed* as c (S_i(k) - S_j(k)) whenever j's message of
round k arrives; when it does not, lambda_ij and the x_j used in the next
x-update stay as they were. A lost message makes the two ends disagree only
until the next message over that edge gets through, and then both hold the
exact value again: nothing is lost for good, and no acknowledgement is needed.
"""

from __future__ import annotations

from typing import Mapping

import torch

from .base import Algorithm, Tensors, check_finite

X_PREFIX, SUM_PREFIX = "x/", "sum/"
DIVERGENCE_ADVICE = ("the ADMM penalty (--admm-penalty) is probably too small for this problem, or the "
                     "learning rate of the inexact solver (--lr) too large; try a larger penalty or a smaller lr")


class ADMM(Algorithm):
    """One peer's ADMM. With ``problem`` (problems.LocalProblem, a single parameter ``x``) the x-update
    is solved exactly in ``end_local``; without, it is inexact: the round's optimizer steps run on the
    loss plus q ||x||^2 - <v, x>, whose gradient ``before_step`` adds (DiNNO: Yu, Vincent, Schwager 2022)."""

    name = "admm"

    def __init__(self, neighbours: tuple[str, ...], parameters: Mapping[str, torch.nn.Parameter],
                 penalty: float, problem=None):
        if penalty <= 0:
            raise ValueError(f"the ADMM penalty must be > 0, got {penalty}")
        self.neighbours = tuple(neighbours)
        self.parameters = dict(parameters)
        self.c = float(penalty)
        self.problem = problem
        # Each x-update is a new subproblem (the penalty's centre and the dual moved): momentum
        # from the last one points the wrong way and makes the duals oscillate.
        self.takes_steps = self.restarts_optimizer = problem is None
        start = self._x()
        self.running_sum = {n: torch.zeros_like(t, dtype=torch.float64) for n, t in start.items()}
        # x_j(0) = x_i(0): every peer builds its model from the same seed.
        self.neighbour_x = {j: {n: t.clone() for n, t in start.items()} for j in self.neighbours}
        self.edge_dual = {j: {n: torch.zeros_like(t, dtype=torch.float64) for n, t in start.items()}
                          for j in self.neighbours}
        self._v: Tensors = {}
        self._q = 0.0
        self._primal_residual: float | None = None
        self._objective: float | None = None

    def _x(self) -> Tensors:
        return {n: p.detach() for n, p in self.parameters.items()}

    def dual(self) -> Tensors:
        """alpha_i = sum over neighbours of the edge duals."""
        alpha = {n: torch.zeros_like(s) for n, s in self.running_sum.items()}
        for duals in self.edge_dual.values():
            for n, value in duals.items():
                alpha[n] += value
        return alpha

    def begin_local(self, round_: int) -> None:
        """The x-update's v and q (module docstring) from the neighbours' x and the dual."""
        x, alpha, d = self._x(), self.dual(), len(self.neighbours)
        self._q = self.c * d
        self._v = {}
        for n, xi in x.items():
            total = d * xi.double()
            for j in self.neighbours:
                total = total + self.neighbour_x[j][n].double()
            self._v[n] = (self.c * total - alpha[n]).to(xi.dtype)
        for p in self.parameters.values():
            # The optimizer writes in place; x_i as sent last round must not change under ZeroMQ.
            p.data = p.data.clone()

    def before_step(self) -> None:
        # The gradient of q ||x||^2 - <v, x>, added to the loss's.
        with torch.no_grad():
            for n, p in self.parameters.items():
                penalty = 2 * self._q * p.detach() - self._v[n]
                if p.grad is None:
                    p.grad = penalty
                else:
                    p.grad.add_(penalty)

    def end_local(self, round_: int, loss: float | None) -> float | None:
        if self.problem is not None:
            x = self._x()["x"]
            # The problem holds the shard where it was loaded, in host memory; x may be on a GPU.
            new = self.problem.argmin_augmented(self._v["x"].double().cpu(), self._q, x.cpu())
            check_finite({"x": new}, "x", round_, DIVERGENCE_ADVICE)
            # New storage: the x sent last round may be queued.
            self.parameters["x"].data = new.to(device=x.device, dtype=x.dtype)
            loss = self.problem.objective(new)
        else:
            check_finite(self._x(), "x", round_, DIVERGENCE_ADVICE)
        for n, p in self.parameters.items():
            self.running_sum[n] = self.running_sum[n] + p.detach().double()
        self._objective = loss
        return loss

    def outgoing(self, round_: int) -> Tensors:
        x = self._x()
        return {X_PREFIX + n: x[n] for n in x} | {SUM_PREFIX + n: s for n, s in self.running_sum.items()}

    def parameters_in(self, message: Mapping[str, torch.Tensor]) -> Tensors:
        return {n: message[X_PREFIX + n] for n in self.parameters}

    def update(self, round_: int, received: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        x = self._x()
        residual = 0.0
        for j, tensors in received.items():
            if j not in self.edge_dual:
                continue
            self.neighbour_x[j] = self.parameters_in(tensors)
            self.edge_dual[j] = {n: self.c * (self.running_sum[n] - tensors[SUM_PREFIX + n]) for n in x}
            check_finite(self.edge_dual[j], f"dual of the edge to {j}", round_, DIVERGENCE_ADVICE)
            residual += float(torch.sqrt(sum(torch.sum((x[n].double() - self.neighbour_x[j][n].double()) ** 2)
                                             for n in x)))
        self._primal_residual = residual if received else None

    def metrics(self) -> dict:
        return {"primal_residual": self._primal_residual, "local_objective": self._objective}

    def state_dict(self) -> dict:
        return {"penalty": self.c, "running_sum": self.running_sum, "edge_dual": self.edge_dual,
                "neighbour_x": self.neighbour_x}

    def load_state_dict(self, state: dict) -> None:
        if state["penalty"] != self.c:
            raise ValueError(f"the checkpoint's ADMM penalty is {state['penalty']}, this run's {self.c}; "
                             "resume with the same --admm-penalty")
        self.running_sum = state["running_sum"]
        self.edge_dual = {j: state["edge_dual"][j] for j in self.neighbours}
        self.neighbour_x = {j: state["neighbour_x"][j] for j in self.neighbours}
