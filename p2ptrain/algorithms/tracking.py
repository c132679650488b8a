"""Gradient tracking (DIGing: Nedic, Olshevsky, Shi 2017; Qu, Li 2018), one peer's share.

Each peer keeps y_i, its estimate of the swarm's average gradient, and steps along it
instead of along its own gradient g_i (doubly stochastic W, step a):

    x(k+1) = W x(k) - a y(k)
    y(k+1) = W y(k) + g(x(k+1)) - g(x(k)),        y(0) = g(x(0))

Since W keeps the mean, mean(y) = mean(g) in every round, so at a fixed point
(consensus, y = 0) the average gradient is zero: the exact optimum of
sum_i f_i, with a constant step, where plain gossip stops at a biased point.

Running sums instead of y. Unrolling the y-update,

    y_i(k) = g_i(x_i(k)) + c_i(k),   c_i(k) = sum_{j in N_i} W_ij (S_j(k-1) - S_i(k-1)),

with S_i(k) = y_i(0) + ... + y_i(k), the running sum of y_i. Peers send x_i(k)
and S_i(k) (the same bytes as x and y), and the correction c_i is recomputed
from the newest running sum heard from each neighbour. The tracking property
rests on sum_i c_i = 0 (true for any doubly stochastic W). If y were mixed
directly, a lost message would move weight to the receiver for one round and
change sum_i y_i for good: the iteration would converge, quietly, to a wrong
point. Here a lost message leaves c_i using j's older S_j until j's next
message gets through, and then sum_i c_i = 0 holds exactly again: the fixed
point does not move. x mixes as gossip does (a missing neighbour's weight goes
to the peer itself); x carries no such invariant, its errors are corrected by
the iteration.

The steps are the optimizer's: ``before_step`` adds c_i to the gradient, so
one plain SGD step with learning rate a is exactly x - a y, and ``update``
adds the step's displacement to the mix of the x's sent, W x. With several
local steps per round each step follows its own gradient plus c_i, and y_i(k)
uses the mean of the round's gradients.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..tensors import norm
from .base import Algorithm, Tensors, check_finite
from .gossip import mix

X_PREFIX, SUM_PREFIX = "x/", "ysum/"
DIVERGENCE_ADVICE = ("the step (--lr) is probably too large for gradient tracking on this problem (it needs a "
                     "smaller step than gossip, the smaller the slower the graph mixes); try a smaller one")


class GradientTracking(Algorithm):
    """One peer's DIGing over ``parameters`` with its mixing ``row`` (itself and its in-neighbours)."""

    name = "gradient-tracking"

    def __init__(self, self_id: str, row: Mapping[str, float], parameters: Mapping[str, torch.Tensor]):
        self.self_id = self_id
        self.row = dict(row)
        self.neighbours = tuple(j for j in self.row if j != self_id)
        self.parameters = dict(parameters)
        x = self._x()
        self.start: Tensors = dict(x)  # x_i(k), as sent: the steps of round k move the parameters away from it
        self.running_sum = {n: torch.zeros_like(t) for n, t in x.items()}
        # Every running sum starts at 0, so before any message c_i = 0 and y_i(0) = g_i(x_i(0)).
        self.neighbour_sums = {j: {n: torch.zeros_like(t) for n, t in x.items()} for j in self.neighbours}
        self.correction = {n: torch.zeros_like(t) for n, t in x.items()}
        self._gradient_sum: Tensors = {}
        self._steps = 0
        self._tracker_norm: float | None = None

    def _x(self) -> Tensors:
        return {n: p.detach() for n, p in self.parameters.items()}

    def begin_local(self, round_: int) -> None:
        self.start = self._x()
        for p in self.parameters.values():
            # The optimizer writes in place; x_i(k) as it will be sent must not change under it or ZeroMQ.
            p.data = p.data.clone()
        self._gradient_sum = {n: torch.zeros_like(t) for n, t in self.start.items()}
        self._steps = 0

    def before_step(self) -> None:
        with torch.no_grad():
            for n, p in self.parameters.items():
                if p.grad is None:
                    p.grad = self.correction[n].clone()
                    continue
                self._gradient_sum[n].add_(p.grad)
                p.grad.add_(self.correction[n])
        self._steps += 1

    def end_local(self, round_: int, loss: float | None) -> float | None:
        if self._steps == 0:
            raise RuntimeError("gradient tracking needs at least one optimizer step per round (its gradient "
                               "feeds y); use --local-steps 1 or more")
        y = {n: self._gradient_sum[n] / self._steps + self.correction[n] for n in self.correction}
        check_finite(y, "tracker y", round_, DIVERGENCE_ADVICE)
        self.running_sum = {n: self.running_sum[n] + y[n] for n in y}
        self._tracker_norm = norm(y)
        return loss

    def outgoing(self, round_: int) -> Tensors:
        return ({X_PREFIX + n: t for n, t in self.start.items()}
                | {SUM_PREFIX + n: s for n, s in self.running_sum.items()})

    def parameters_in(self, message: Mapping[str, torch.Tensor]) -> Tensors:
        return {n: message[X_PREFIX + n] for n in self.parameters}

    def state_tensors(self) -> Tensors:
        return self._x()

    def update(self, round_: int, received: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        heard = {j: tensors for j, tensors in received.items() if j in self.row}
        mixed = mix(self.self_id, self.start, {j: self.parameters_in(t) for j, t in heard.items()}, self.row)
        x_end = self._x()
        for n, p in self.parameters.items():
            # W x(k) - a y(k): the mix of the x's sent, plus this round's steps (-a y with plain SGD).
            p.data = mixed[n] + (x_end[n] - self.start[n])
        check_finite(self._x(), "parameter", round_, DIVERGENCE_ADVICE)
        for j, tensors in heard.items():
            self.neighbour_sums[j] = {n: tensors[SUM_PREFIX + n] for n in self.parameters}
        self.correction = self._correction()

    def _correction(self) -> Tensors:
        """c_i = sum_j W_ij (S_j - S_i), over the in-neighbours in the row's fixed order."""
        correction = {}
        for n, own in self.running_sum.items():
            total = torch.zeros_like(own)
            for j in self.neighbours:
                total.add_(self.neighbour_sums[j][n] - own, alpha=self.row[j])
            correction[n] = total
        return correction

    def metrics(self) -> dict:
        return {"tracker_norm": self._tracker_norm}

    def state_dict(self) -> dict:
        return {"running_sum": self.running_sum, "neighbour_sums": self.neighbour_sums}

    def load_state_dict(self, state: dict) -> None:
        missing = {"running_sum", "neighbour_sums"} - set(state)
        if missing:
            raise ValueError(f"the checkpoint holds no gradient-tracking state ({', '.join(sorted(missing))} "
                             "missing): it was written by another algorithm; resume with the same --algo")
        self.running_sum = state["running_sum"]
        self.neighbour_sums = {j: state["neighbour_sums"][j] for j in self.neighbours}
        self.correction = self._correction()
