"""Push-sum (Kempe, Dobra, Gehrke 2003) and Stochastic Gradient Push (Assran et al. 2019), one peer's share.

For directed graphs whose weights are only column stochastic: each peer i holds
x_i and a scalar weight p_i (1 at the start), keeps the share W_ii of both and
sends the share W_ji of both to each out-neighbour j. Summing what arrives,

    x(k+1) = W x(k),   p(k+1) = W p(k),   z_i = x_i / p_i,

and because every column of W sums to 1 nothing is created or destroyed: sum x
and sum p stay put, and every z_i tends to sum_i x_i(0) / n, the exact mean,
although no row of W needs to sum to 1 and a sender needs to know nothing but
its own out-degree. The model holds z, the de-biased values that are trained and
evaluated. SGP's step is x <- x - a g(z): the displacement the optimizer gives
z in the round's local steps is added to x, so sum x moves by the plain sum of
the gradients and the fixed point is the optimum of sum_i f_i.

Lost messages. A message carries mass; if it is simply lost, sum x and sum p
shrink, and the peers then agree on a weighted mean of their values, quietly
biased, and the sender cannot know (there are no acknowledgements). So peers
send running sums instead (robust push-sum: Hadjicostis, Vaidya,
Dominguez-Garcia 2016): sigma_i(k) = sum_{t<=k} of the share sent in round t,
for x and for p. A receiver adds sigma_j(k) minus the sum it last took from j:
a lost message's mass is not lost but delayed, and arrives whole with the next
message from j that gets through. Mass held by peers plus mass in flight
(sigma_j minus what its receivers took) is conserved exactly, so z tends to
the exact mean as soon as every link delivers again. What it cannot survive: a
peer gone for good takes the mass it holds, and the mass sent to it, with it;
the others then agree on a weighted mean of the initial values, not the mean.

A sender's running sum is one number per tensor, so it must send every
out-neighbour the same share and the same out-neighbours every round: a static
graph whose columns give equal weight to each out-neighbour (mixing = "push").

The running sums, and the mass x held, are float64 whatever the model's dtype
(as ADMM's sums are): a sum k rounds old is about k shares large, so in the
model's precision every share sent would be rounded to the sum's coarser step,
an error that grows with the rounds (a float32 swarm averaging on exponential16
ended 4.4e-4 from the mean after 10,000 rounds, a float16 one 1.1 after 3,000).
"""

from __future__ import annotations

from typing import Mapping

import torch

from .base import Algorithm, Tensors, check_finite

SUM_PREFIX, WEIGHT = "xsum/", "psum"
DIVERGENCE_ADVICE = "the learning rate (--lr) is probably too large for this problem; try a smaller one"


class PushSum(Algorithm):
    """One peer's push-sum over ``parameters``: it sends ``share`` of x and p to each of its
    ``out_degree`` out-neighbours and keeps the rest; it receives from ``in_neighbours``."""

    name = "push-sum"

    def __init__(self, in_neighbours: tuple[str, ...], out_degree: int, share: float,
                 parameters: Mapping[str, torch.Tensor]):
        if not (0 < share and out_degree * share < 1):
            raise ValueError(f"push-sum: a share of {share} to each of {out_degree} out-neighbours leaves the "
                             "sender no weight of its own; give each column of W a positive diagonal")
        self.in_neighbours = tuple(in_neighbours)
        self.out_degree, self.share = out_degree, float(share)
        self.parameters = dict(parameters)
        z = self._z()
        scalar = {"dtype": torch.float64, "device": next(iter(z.values())).device}
        self.x: Tensors = {n: t.to(torch.float64, copy=True) for n, t in z.items()}  # never the model's storage
        self.p = torch.ones(1, **scalar)
        self.x_sum = {n: torch.zeros_like(t, dtype=torch.float64) for n, t in z.items()}
        self.p_sum = torch.zeros(1, **scalar)
        self.taken_x = {j: {n: torch.zeros_like(t, dtype=torch.float64) for n, t in z.items()}
                        for j in self.in_neighbours}
        self.taken_p = {j: torch.zeros(1, **scalar) for j in self.in_neighbours}
        # z as the last mix left it, a copy: forward passes change buffers (BatchNorm's statistics) in
        # place, and under the Python API they run before any hook of the round is called.
        self._start: Tensors = {n: t.clone() for n, t in z.items()}
        self._kept_x: Tensors = dict(self.x)
        self._kept_p = self.p.clone()
        self._held_z = False

    def _z(self) -> Tensors:
        return {n: p.detach() for n, p in self.parameters.items()}

    def end_local(self, round_: int, loss: float | None) -> float | None:
        """Apply the round's change of z (the optimizer's steps, buffers' updates) to x, then split x and
        p: the shares sent go into the running sums, the rest is kept."""
        z = self._z()
        half = {n: self.x[n] + (z[n] - self._start[n]).double() for n in z}
        check_finite(half, "parameter", round_, DIVERGENCE_ADVICE)
        self._kept_x, new_sums = {}, {}
        for n, value in half.items():
            new_sums[n] = self.x_sum[n] + self.share * value
            # What the running sum really grew by, rounding included, is what was sent: keeping exactly
            # the rest conserves the mass however large the sums grow (no drift of one rounding a round).
            self._kept_x[n] = value - self.out_degree * (new_sums[n] - self.x_sum[n])
        new_p_sum = self.p_sum + self.share * self.p
        self._kept_p = self.p - self.out_degree * (new_p_sum - self.p_sum)
        self.x_sum, self.p_sum = new_sums, new_p_sum
        return loss

    def outgoing(self, round_: int) -> Tensors:
        return {SUM_PREFIX + n: s for n, s in self.x_sum.items()} | {WEIGHT: self.p_sum}

    def parameters_in(self, message: Mapping[str, torch.Tensor]) -> Tensors:
        # A running sum of mass says nothing of where the sender's z is.
        return {}

    def state_tensors(self) -> Tensors:
        return self._z()

    def update(self, round_: int, received: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        x = {n: t.clone() for n, t in self._kept_x.items()}
        p = self._kept_p.clone()
        for j in self.in_neighbours:  # a fixed order: the float sums do not depend on arrival order
            if j not in received:
                continue  # its mass stays in its running sum and comes with its next message
            message = received[j]
            for n in x:
                x[n].add_(message[SUM_PREFIX + n] - self.taken_x[j][n])
            p.add_(message[WEIGHT] - self.taken_p[j])
            self.taken_x[j] = {n: message[SUM_PREFIX + n] for n in x}
            self.taken_p[j] = message[WEIGHT]
        self.x, self.p = x, p
        if p.item() <= 0:
            # Only after a neighbour came back from an older checkpoint: its running sums went backwards,
            # and the mass it sent twice is being taken back. The balance is exact, but x / p means
            # nothing until p is positive again: z keeps its last value meanwhile.
            self._held_z = True
            return
        self._held_z = False
        for n, param in self.parameters.items():
            # New storage: the running sums just sent may still be queued in ZeroMQ, zero-copy.
            param.data = (x[n] / p.item()).to(param.dtype)
        self._start = {n: t.clone() for n, t in self._z().items()}
        check_finite(self._z(), "parameter", round_, DIVERGENCE_ADVICE)

    def metrics(self) -> dict:
        return {"push_weight": self.p.item()} | ({"z_held": True} if self._held_z else {})

    def state_dict(self) -> dict:
        return {"x": self.x, "p": self.p, "x_sum": self.x_sum, "p_sum": self.p_sum, "taken_x": self.taken_x,
                "taken_p": self.taken_p}

    def load_state_dict(self, state: dict) -> None:
        missing = {"x", "p", "x_sum", "p_sum", "taken_x", "taken_p"} - set(state)
        if missing:
            raise ValueError(f"the checkpoint holds no push-sum state ({', '.join(sorted(missing))} missing): "
                             "it was written by another algorithm; resume with the same --algo")
        # Checkpoints written when the sums were in the model's dtype are widened (exactly).
        self.x, self.p = _float64(state["x"]), state["p"]
        self.x_sum, self.p_sum = _float64(state["x_sum"]), state["p_sum"]
        self.taken_x = {j: _float64(state["taken_x"][j]) for j in self.in_neighbours}
        self.taken_p = {j: state["taken_p"][j] for j in self.in_neighbours}
        self._kept_x, self._kept_p = dict(self.x), self.p.clone()
        # z as the last mix left it is the model just restored (Node._restore loads the model first): x / p,
        # or the z held while p was not positive, which x / p is not.
        self._start = {n: t.clone() for n, t in self._z().items()}
        self._held_z = self.p.item() <= 0


def _float64(tensors: Mapping[str, torch.Tensor]) -> Tensors:
    return {n: t.double() for n, t in tensors.items()}
