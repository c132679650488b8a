"""Compressors for CHOCO gossip: what a peer sends instead of the difference d = x - x_hat, and how
both ends turn it back into the same decoded difference.

A compressor works on one flat vector: the exchanged tensors flattened in
row-major order and laid end to end in message order (as fragments.py does),
N values of one floating-point dtype. ``compress`` returns the message's
tensors and the decoded difference; ``decode`` rebuilds that decoded
difference from the message alone. The two are equal bit for bit, and that is
what keeps the sender's public copy of itself and its neighbours' copies of
it identical: both add the same decoded difference.

- ``int8``: d / s rounded to the nearest integer in [-127, 127], with one
  float32 scale s = max|d| / 127 per tensor (``int8``) or per chunk of
  CHUNK values of a tensor (``int8:CHUNK``; chunks never straddle tensors).
- ``top-k:F``: the k = max(1, floor(F N)) entries of largest magnitude, sent
  as their indices (ascending, in the smallest integer dtype that holds
  N - 1) and their values.
- ``random-k:F``: k entries drawn uniformly with replacement from a seed both
  ends compute (the run's seed, the sender, the round: ``random_indices``),
  so only the values travel. A repeated index carries the same value twice.

PROTOCOL.md section 10 is the normative description of the frames.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from typing import Mapping, Sequence

import numpy as np
import torch

from .choices import parse_compressor
from .tensors import Tensors

INT8_LEVELS = 127
# SplitMix64 (Steele, Lea, Flood 2014): a counter-based generator any language can reproduce in a few lines.
GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
MIX_1, MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def index_dtype(total: int) -> torch.dtype:
    """The smallest wire integer dtype holding every index 0 .. total - 1."""
    for dtype, largest in ((torch.uint8, 255), (torch.int16, 2**15 - 1), (torch.int32, 2**31 - 1)):
        if total - 1 <= largest:
            return dtype
    return torch.int64


def sample_size(fraction: float, total: int) -> int:
    """k = max(1, floor(F N)), F N evaluated in double precision."""
    return max(1, min(total, int(math.floor(fraction * total))))


def random_indices(seed: int, sender: str, round_: int, count: int, total: int) -> torch.Tensor:
    """The ``count`` indices into N = ``total`` values that ``sender`` keeps in ``round_`` (PROTOCOL.md 10.3).

    s is the BLAKE2b-64 digest of the UTF-8 text "SEED:SENDER:ROUND", read as a little-endian unsigned
    64-bit integer; index m (from 0) is splitmix64(s + (m + 1) * 0x9E3779B97F4A7C15 mod 2^64) mod N."""
    digest = hashlib.blake2b(f"{seed}:{sender}:{round_}".encode("utf-8"), digest_size=8).digest()
    start = np.uint64(int.from_bytes(digest, "little"))
    with np.errstate(over="ignore"):  # arithmetic modulo 2^64 is the point
        z = start + (np.arange(1, count + 1, dtype=np.uint64) * GOLDEN_GAMMA)
        z = (z ^ (z >> np.uint64(30))) * MIX_1
        z = (z ^ (z >> np.uint64(27))) * MIX_2
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z % np.uint64(total)).astype(np.int64))


class Compressor(ABC):
    """Q for a flat vector of ``sizes`` (tensor name -> values, in message order) of ``dtype``."""

    name: str

    def __init__(self, sizes: Mapping[str, int], dtype: torch.dtype):
        self.sizes = dict(sizes)
        self.total = sum(self.sizes.values())
        self.dtype = dtype

    @abstractmethod
    def layout(self) -> Tensors:
        """Zeros shaped like a message's compressor tensors (for the receiver's contract)."""

    @abstractmethod
    def compress(self, difference: torch.Tensor, sender: str, round_: int) -> tuple[Tensors, torch.Tensor]:
        """(the message's tensors, the decoded difference both ends add to the sender's public copy)."""

    @abstractmethod
    def decode(self, message: Mapping[str, torch.Tensor], sender: str, round_: int) -> torch.Tensor:
        """The decoded difference from ``message`` alone: equal bit for bit to ``compress``'s."""


class Int8(Compressor):
    """Symmetric int8 quantization, one scale per tensor or per chunk of ``chunk`` values of a tensor."""

    def __init__(self, sizes: Mapping[str, int], dtype: torch.dtype, chunk: int | None = None):
        super().__init__(sizes, dtype)
        self.chunk = chunk
        # How many values each scale covers, in order: whole tensors, or chunks (the last of a tensor shorter).
        spans: list[int] = []
        for size in self.sizes.values():
            if chunk is None:
                spans.append(size)
            else:
                spans += [chunk] * (size // chunk) + ([size % chunk] if size % chunk else [])
        self.spans = torch.tensor(spans, dtype=torch.int64)
        self.name = "int8" if chunk is None else f"int8:{chunk}"

    def layout(self) -> Tensors:
        return {"q": torch.zeros(self.total, dtype=torch.int8), "scale": torch.zeros(len(self.spans))}

    def _largest(self, magnitude: torch.Tensor) -> torch.Tensor:
        """max |d| of every span, in span order: a loop over tensors, never over chunks."""
        largest = []
        for piece in torch.split(magnitude, list(self.sizes.values())):
            if self.chunk is None:  # a tensor of no values (an empty buffer) is a span whose scale is 0
                largest.append(piece.max().reshape(1) if piece.numel() else piece.new_zeros(1))
                continue
            whole = piece.numel() // self.chunk * self.chunk
            largest.append(piece[:whole].reshape(-1, self.chunk).amax(dim=1))
            if whole < piece.numel():
                largest.append(piece[whole:].max().reshape(1))
        return torch.cat(largest)

    def _expand(self, scale: torch.Tensor) -> torch.Tensor:
        return scale.to(self.dtype).repeat_interleave(self.spans.to(scale.device))

    def compress(self, difference: torch.Tensor, sender: str, round_: int) -> tuple[Tensors, torch.Tensor]:
        scale = (self._largest(difference.abs()) / INT8_LEVELS).float()
        expanded = self._expand(scale)
        # An all-zero span has scale 0 and sends zeros; dividing by 1 there avoids 0/0.
        divisor = torch.where(expanded > 0, expanded, torch.ones_like(expanded))
        q = torch.round(difference / divisor).clamp_(-INT8_LEVELS, INT8_LEVELS).to(torch.int8)
        message = {"q": q, "scale": scale}
        return message, self.decode(message, sender, round_)

    def decode(self, message: Mapping[str, torch.Tensor], sender: str, round_: int) -> torch.Tensor:
        return message["q"].to(self.dtype) * self._expand(message["scale"])


class TopK(Compressor):
    """The k entries of largest magnitude, with their indices."""

    def __init__(self, sizes: Mapping[str, int], dtype: torch.dtype, fraction: float):
        super().__init__(sizes, dtype)
        self.k = sample_size(fraction, self.total)
        self.index_dtype = index_dtype(self.total)
        self.name = f"top-k:{fraction!r}"

    def layout(self) -> Tensors:
        return {"index": torch.zeros(self.k, dtype=self.index_dtype), "value": torch.zeros(self.k, dtype=self.dtype)}

    def compress(self, difference: torch.Tensor, sender: str, round_: int) -> tuple[Tensors, torch.Tensor]:
        chosen = torch.topk(difference.abs(), self.k, sorted=False).indices.sort().values
        message = {"index": chosen.to(self.index_dtype), "value": difference[chosen]}
        return message, self.decode(message, sender, round_)

    def decode(self, message: Mapping[str, torch.Tensor], sender: str, round_: int) -> torch.Tensor:
        index = message["index"].long()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.total):
            raise ValueError(f"top-k indices from {sender} outside 0..{self.total - 1}")
        # Distinct: an index written twice with two values would leave whichever write came last, which
        # torch does not define, so receivers' copies of the sender could differ.
        if not bool((index[1:] > index[:-1]).all()):
            raise ValueError(f"top-k indices from {sender} not distinct and ascending")
        decoded = torch.zeros(self.total, dtype=self.dtype, device=message["value"].device)
        decoded[index] = message["value"]
        return decoded


class RandomK(Compressor):
    """k entries drawn from a seed both ends know (``random_indices``): only the values are sent."""

    def __init__(self, sizes: Mapping[str, int], dtype: torch.dtype, fraction: float, seed: int):
        super().__init__(sizes, dtype)
        self.k = sample_size(fraction, self.total)
        self.seed = seed
        self.name = f"random-k:{fraction!r}"

    def layout(self) -> Tensors:
        return {"value": torch.zeros(self.k, dtype=self.dtype)}

    def _indices(self, sender: str, round_: int, device: torch.device) -> torch.Tensor:
        return random_indices(self.seed, sender, round_, self.k, self.total).to(device)

    def compress(self, difference: torch.Tensor, sender: str, round_: int) -> tuple[Tensors, torch.Tensor]:
        message = {"value": difference[self._indices(sender, round_, difference.device)]}
        return message, self.decode(message, sender, round_)

    def decode(self, message: Mapping[str, torch.Tensor], sender: str, round_: int) -> torch.Tensor:
        value = message["value"]
        decoded = torch.zeros(self.total, dtype=self.dtype, device=value.device)
        # A repeated index carries the same value each time, so the order of the writes does not matter.
        decoded[self._indices(sender, round_, value.device)] = value
        return decoded


def build_compressor(spec: str, sizes: Mapping[str, int], dtype: torch.dtype, seed: int = 0) -> Compressor | None:
    """The compressor named by ``spec`` (choices.parse_compressor); None for the identity, which sends x itself."""
    kind, value = parse_compressor(spec)
    if kind == "identity":
        return None
    if kind == "int8":
        return Int8(sizes, dtype, None if value is None else int(value))
    if kind == "top-k":
        return TopK(sizes, dtype, value)
    return RandomK(sizes, dtype, value, seed)


def flatten(tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The tensors' values end to end in their order, as one new flat tensor."""
    return torch.cat([t.detach().reshape(-1) for t in tensors.values()])


def unflatten(flat: torch.Tensor, like: Mapping[str, torch.Tensor]) -> Tensors:
    """``flat`` cut back into tensors shaped like ``like`` (views of ``flat``)."""
    sizes: Sequence[int] = [t.numel() for t in like.values()]
    return {name: piece.view(t.shape) for (name, t), piece in zip(like.items(), torch.split(flat, sizes))}


def digest(tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """BLAKE2b-64 of the tensors' bytes (row-major, little-endian, in order) as one int64: two public
    copies with equal digests are, for all practical purposes, equal bit for bit."""
    hasher = hashlib.blake2b(digest_size=8)
    for tensor in tensors.values():
        flat = tensor.detach().contiguous().reshape(-1).cpu()
        hasher.update(memoryview(flat.view(torch.uint8).numpy()))
    return torch.tensor([int.from_bytes(hasher.digest(), "little", signed=True)], dtype=torch.int64)
