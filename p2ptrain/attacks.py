"""Misbehaving peers for experiments and tests: what one peer sends instead of its true tensors.

An attack is written ``PEER:KIND[:VALUE]``:

- ``p3:scale:-10``  sends its tensors times -10 (any finite factor);
- ``p3:noise:5``    sends its tensors plus N(0, 5^2) noise in every entry (sigma >= 0);
- ``p3:random``     sends random tensors of the right shape and dtype, normal
                    with mean 0 and standard deviation 10 times each tensor's
                    root mean square (1 for an all-zero tensor), so the values
                    are of the model's order of magnitude but carry no
                    information; ``p3:random:3`` uses 3 instead of 10.

An attack only changes what the peer sends: its own state, and so its own
training, stays honest. ``corrupt`` is a pure function of the tensors, the run
seed, the peer and the round: a run repeated with the same seed sees the same
lies, whatever happened before. It corrupts every tensor of a message (for
ADMM, x and its running sum alike). Only floating-point tensors are
corrupted; integer and bool tensors are sent unchanged (as copies).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch

from .choices import ATTACK_EXAMPLES, ATTACK_KINDS, AttackSpecError, check_attackers, read_attack
from .tensors import Tensors



@dataclass(frozen=True)
class Attack:
    peer_id: str
    kind: str
    value: float
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ATTACK_KINDS:
            raise AttackSpecError(f"attack kind {self.kind!r} is unknown; use one of {', '.join(ATTACK_KINDS)}, "
                                  f"or build the attack from text with parse_attack (e.g. {ATTACK_EXAMPLES})")

    def applies_to(self, peer_id: str) -> bool:
        return peer_id == self.peer_id

    def corrupt(self, tensors: Mapping[str, torch.Tensor], round_: int) -> Tensors:
        """What the attacker sends in ``round_`` instead of ``tensors``: new tensors, the inputs untouched."""
        return {name: self._corrupt_one(name, tensor.detach(), round_) for name, tensor in tensors.items()}

    def _corrupt_one(self, name: str, tensor: torch.Tensor, round_: int) -> torch.Tensor:
        if not tensor.is_floating_point():
            return tensor.clone()
        if self.kind == "scale":
            return tensor * self.value
        # One generator per tensor, so a tensor's draw depends neither on the
        # others nor on the order in which they are visited.
        generator = torch.Generator().manual_seed(draw_seed(self.seed, self.peer_id, round_, name))
        if self.kind == "noise":
            return tensor + self.value * standard_normal(tensor, generator)
        return random_like(tensor, self.value, generator)


def draw_seed(seed: int, peer_id: str, round_: int, name: str) -> int:
    """A 63-bit seed from the run seed, the attacker, the round and the tensor's name.

    A hash rather than arithmetic on the seed so that nearby seeds, rounds or
    peers do not give related streams; blake2b rather than ``hash`` because
    Python salts string hashes per process.
    """
    digest = hashlib.blake2b(f"{seed}\0{peer_id}\0{round_}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def standard_normal(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Drawn in float64 or float32 and then cast: half-precision draws are not available everywhere.
    draw_dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.randn(like.shape, generator=generator, dtype=draw_dtype).to(like.dtype)


def random_like(tensor: torch.Tensor, magnitude: float, generator: torch.Generator) -> torch.Tensor:
    """Normal noise with standard deviation ``magnitude`` times the tensor's root mean square."""
    rms = torch.linalg.vector_norm(tensor, dtype=torch.float64).item() / math.sqrt(max(tensor.numel(), 1))
    # An all-zero tensor (a bias at initialisation) has no scale of its own: use 1.
    scale = rms if rms > 0 and math.isfinite(rms) else 1.0
    return magnitude * scale * standard_normal(tensor, generator)


def parse_attack(spec: str, seed: int = 0, peers: Iterable[str] | None = None) -> Attack:
    """``PEER:KIND[:VALUE]`` as an Attack; with ``peers``, the attacker must be one of them."""
    return Attack(*read_attack(spec, peers), seed)


def parse_attacks(specs: Iterable[str], seed: int = 0, peers: Iterable[str] | None = None) -> tuple[Attack, ...]:
    """Several attacks (one per attacker), e.g. from a repeated --attack option."""
    known = None if peers is None else tuple(peers)
    attacks = tuple(parse_attack(spec, seed, known) for spec in specs)
    check_attackers([attack.peer_id for attack in attacks])
    return attacks


def attack_for(attacks: Iterable[Attack], peer_id: str) -> Attack | None:
    """The attack this peer carries out, if any."""
    return next((attack for attack in attacks if attack.applies_to(peer_id)), None)
