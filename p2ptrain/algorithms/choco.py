"""CHOCO gossip (Koloskova, Stich, Jaggi, "Decentralized stochastic optimization and gossip algorithms
with compressed communication", 2019): peers send a compressed difference, not their parameters.

Every peer i keeps a public copy x_hat_i of itself and one of each in-neighbour
j, x_hat_j, which j keeps too; all start at zero. In round r, after the local
steps:

    q_i      = Q(x_i - x_hat_i)                    sent to the out-neighbours
    x_hat_j <- x_hat_j + q_j                        for i itself and every j heard
    x_i     <- x_i + gamma sum_j W_ij (x_hat_j - x_hat_i)

With a doubly stochastic W the last line moves no mass: summed over the
peers it is zero, so the swarm's mean is kept whatever Q does. It is computed
as (x_i - x_hat_i) + ((1 - gamma) x_hat_i + gamma m_i), with m_i the gossip
mix (``gossip.mix``) of the public copies: with the identity, x_hat_i is x_i
exactly and gamma = 1 leaves m_i itself, which is plain gossip bit for bit.

Rounds where a peer sends its whole x instead of q (``full_round``): every
round with the identity, and every ``refresh_every``-th round otherwise. Such
a round sets x_hat_i, and the neighbours' copy of it, to x_i exactly.

Missing messages. A lost q leaves the receiver's copy of the sender behind
the sender's own for good: later q's are differences from a copy it no
longer has. So every compressed message also carries ``base``, the digest of
the sender's x_hat_i before the round (compressors.digest); a receiver adds a
q only to a copy with that digest, and otherwise leaves the sender out of its
mix (its weight to itself, as gossip does for a missing neighbour) until the
sender's next full round resets the copy. PROTOCOL.md section 10.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..compressors import build_compressor, digest, flatten, unflatten
from ..tensors import relative_distance_to_mean
from .base import Algorithm, Tensors, check_finite
from .gossip import mix

DIVERGENCE_ADVICE = ("the learning rate (--lr) or the CHOCO step (--choco-gamma) is probably too large for this "
                     "compressor; try a smaller one")


class Choco(Algorithm):
    """One peer's CHOCO gossip over ``parameters`` (one floating-point dtype), with the static mixing
    ``row`` of W, the compressor named by ``compressor`` (choices.parse_compressor), the step ``gamma``
    and a full round every ``refresh_every`` rounds (0: never; the identity sends x every round)."""

    name = "choco"
    messages_hold_parameters = False

    def __init__(self, self_id: str, row: Mapping[str, float], parameters: Mapping[str, torch.Tensor],
                 compressor: str = "int8", gamma: float = 1.0, refresh_every: int = 100, seed: int = 0):
        if not 0 < gamma <= 1:
            raise ValueError(f"the CHOCO step gamma must be in (0, 1], got {gamma}")
        if refresh_every < 0:
            raise ValueError(f"refresh_every must be 0 (never) or a number of rounds, got {refresh_every}")
        self.self_id = self_id
        self.row = dict(row)
        self.parameters = dict(parameters)
        dtypes = {t.dtype for t in self.parameters.values()}
        if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
            raise ValueError(f"CHOCO compresses one flat vector of one floating-point dtype, and this model's "
                             f"exchanged tensors have {sorted(map(str, dtypes))}; give them one dtype "
                             "(model.to(torch.float32)) or use gossip")
        self.dtype = dtypes.pop()
        self.gamma, self.refresh_every, self.spec = float(gamma), refresh_every, compressor
        self.compressor = build_compressor(compressor, {n: t.numel() for n, t in self.parameters.items()},
                                           self.dtype, seed)
        self.own_copy: Tensors = self._zeros()
        self.copies: dict[str, Tensors] = {j: self._zeros() for j in self.row if j != self_id}
        self.layouts = self._layouts()
        self._pending: tuple[int, Tensors] | None = None  # (round, x_hat_i after it): outgoing's, for update
        self._unsynced: list[str] = []
        self._copy_error: float | None = None

    def _zeros(self) -> Tensors:
        return {n: torch.zeros_like(t.detach()) for n, t in self.parameters.items()}

    def _x(self) -> Tensors:
        return {n: p.detach() for n, p in self.parameters.items()}

    # ---- what travels -----------------------------------------------------------------------

    def full_round(self, round_: int) -> bool:
        """Whether ``round_`` sends x itself (resetting the public copies) rather than a compressed q."""
        return self.compressor is None or (self.refresh_every > 0 and round_ % self.refresh_every == 0)

    def _layouts(self) -> list[Tensors]:
        full = {"copy": torch.zeros(sum(t.numel() for t in self.parameters.values()), dtype=self.dtype)}
        if self.compressor is None or self.refresh_every == 1:
            return [full]
        compressed = {"base": torch.zeros(1, dtype=torch.int64)} | self.compressor.layout()
        if self.refresh_every == 0:
            return [compressed]
        return [full] + [compressed] * (self.refresh_every - 1)

    def message_layouts(self) -> list[Tensors]:
        # Several layouts go by round, through the wire's fragment schedule: layout r mod refresh_every.
        return self.layouts

    def fragment_at(self, round_: int) -> int | None:
        return round_ % self.refresh_every if len(self.layouts) > 1 else None

    def state_tensors(self) -> Tensors:
        return self._x()

    def outgoing(self, round_: int) -> Tensors:
        x = self._x()
        if self.full_round(round_):
            message = {"copy": flatten(x)}
            new_copy = unflatten(message["copy"], x)
        else:
            difference = flatten(x) - flatten(self.own_copy)
            tensors, decoded = self.compressor.compress(difference, self.self_id, round_)
            message = {"base": digest(self.own_copy)} | tensors
            new_copy = {n: self.own_copy[n] + piece for n, piece in unflatten(decoded, x).items()}
        self._pending = (round_, new_copy)
        return message

    # ---- the update -------------------------------------------------------------------------

    def update(self, round_: int, received: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        if self._pending is None or self._pending[0] != round_:
            self.outgoing(round_)  # the update needs this round's own q even if nothing was sent
        self.own_copy = self._pending[1]
        self._pending = None
        heard = self._take(round_, received)
        x = self._x()
        self._copy_error = relative_distance_to_mean(x, [self.own_copy])
        m = mix(self.self_id, self.own_copy, {j: self.copies[j] for j in heard}, self.row)
        new = {n: (x[n] - self.own_copy[n]) + (self.own_copy[n] * (1 - self.gamma)).add_(m[n], alpha=self.gamma)
               for n in x}
        check_finite(new, "parameter", round_, DIVERGENCE_ADVICE)
        for name, tensor in new.items():
            # New storage: the tensors just sent may still be queued in ZeroMQ, zero-copy.
            self.parameters[name].data = tensor

    def _take(self, round_: int, received: Mapping[str, Mapping[str, torch.Tensor]]) -> set[str]:
        """Fold each neighbour's message into its copy; returns those whose copy is now the sender's own."""
        heard, self._unsynced = set(), []
        for j in self.copies:  # the row's order: the result never depends on arrival order
            if j not in received:
                continue
            message, copy = received[j], self.copies[j]
            if "copy" in message:
                # A copy of the values: on the CPU a received tensor lives in its frame's buffer.
                self.copies[j] = {n: t.clone() for n, t in unflatten(message["copy"], copy).items()}
                heard.add(j)
                continue
            if int(message["base"][0]) != int(digest(copy)[0]):
                self._unsynced.append(j)  # its q is a difference from a copy this peer does not hold
                continue
            try:
                decoded = self.compressor.decode(message, j, round_)
            except ValueError:
                self._unsynced.append(j)
                continue
            self.copies[j] = {n: copy[n] + piece for n, piece in unflatten(decoded, copy).items()}
            heard.add(j)
        return heard

    def metrics(self) -> dict:
        # copy_error: ||x_i - x_hat_i|| / ||x_i|| before the mix, how far the public copy trails the model.
        return {"choco_unsynced": list(self._unsynced), "copy_error": self._copy_error}

    # ---- checkpoints ------------------------------------------------------------------------

    def settings(self) -> dict:
        return {"compressor": self.spec, "gamma": self.gamma, "refresh_every": self.refresh_every}

    def state_dict(self) -> dict:
        return self.settings() | {"own_copy": self.own_copy, "copies": self.copies}

    def load_state_dict(self, state: dict) -> None:
        saved = {key: state.get(key) for key in self.settings()}
        if saved != self.settings():
            raise ValueError(f"the checkpoint's CHOCO settings are {saved}, this run's {self.settings()}; resume "
                             "with the same --compressor, --choco-gamma and --choco-refresh-every")
        self.own_copy = dict(state["own_copy"])
        self.copies = {j: dict(state["copies"][j]) for j in self.copies}
