"""Malformed messages for fuzzing a running peer: every one must be rejected, none may change its model.

``hostile_messages(n, contract, sender, seed)`` cycles through the ways a
message can be wrong (PROTOCOL.md section 3) and draws the details from a
seeded generator, so a failing run can be repeated exactly. Replays and
far-future rounds are well-formed but outside the receiver's round window:
the peer drops those as stale or too far ahead instead of rejecting them.
"""

from __future__ import annotations

import random
from typing import Callable, Iterator

import msgpack
import torch

from p2ptrain import wire

Frames = list[bytes]


def _valid(contract: wire.Contract, sender: str, round_: int, fill: float = 0.0, kind: str = "params") -> Frames:
    tensors = {s.name: torch.full(s.shape, fill, dtype=wire.DTYPES[s.dtype]) for s in contract.specs}
    frames = wire.encode(kind=kind, sender=sender, run_id=contract.run_id, round=round_,
                         fingerprint=contract.fingerprint, tensors=tensors, topology=topology_of(contract, round_))
    return [bytes(f) for f in frames]


def topology_of(contract: wire.Contract, round_: int) -> str | None:
    """The topology digest a neighbour of the receiver sends in ``round_`` (PROTOCOL.md 2.6)."""
    return contract.topology[round_ % len(contract.topology)] if contract.topology else None


def _header(frames: Frames) -> dict:
    return msgpack.unpackb(frames[0])


def _with_header(frames: Frames, header) -> Frames:
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


class Hostile:
    """The generators of hostile messages, each a method taking the random source."""

    def __init__(self, contract: wire.Contract, sender: str, far_round: int):
        self.contract, self.sender, self.far_round = contract, sender, far_round

    def base(self, rng: random.Random) -> Frames:
        # A round far in the future unless a generator changes it: a message whose only flaw
        # turned out harmless is then still outside the window, never accepted.
        return _valid(self.contract, self.sender, self.far_round + rng.randrange(1000))

    def random_bytes(self, rng):
        return [rng.randbytes(rng.randrange(0, 600)) for _ in range(rng.randrange(1, 6))]

    def truncated_header(self, rng):
        frames = self.base(rng)
        return [frames[0][: rng.randrange(0, len(frames[0]))], *frames[1:]]

    def oversized_header(self, rng):
        return [b"\x92" + b"\x00" * (wire.MAX_HEADER_BYTES + rng.randrange(1, 100))]

    def header_not_a_map(self, rng):
        return _with_header(self.base(rng), rng.choice([[1, 2, 3], "params", 7, None, b"\x00\x01"]))

    def wrong_field_type(self, rng):
        frames = self.base(rng)
        header = _header(frames)
        key = rng.choice(["version", "kind", "sender", "run_id", "round", "fingerprint", "tensors"])
        header[key] = rng.choice([1.5, True, None, b"bytes", {"a": 1}, "text", -3])
        if key == "version" and header[key] == wire.PROTOCOL_VERSION:
            header[key] = "1"
        return _with_header(frames, header)

    def missing_field(self, rng):
        frames = self.base(rng)
        header = _header(frames)
        del header[rng.choice(["version", "kind", "sender", "run_id", "round", "fingerprint", "tensors"])]
        return _with_header(frames, header)

    def wrong_identity(self, rng):
        frames = self.base(rng)
        header = _header(frames)
        key, value = rng.choice([("version", 99), ("kind", "weights"), ("run_id", "another-run"),
                                 ("fingerprint", "0123456789abcdef"), ("round", -rng.randrange(1, 10))])
        header[key] = value
        return _with_header(frames, header)

    def wrong_frame_count(self, rng):
        frames = self.base(rng)
        return frames[:-1] if rng.random() < 0.5 else [*frames, rng.randbytes(8)]

    def wrong_frame_length(self, rng):
        frames = self.base(rng)
        i = rng.randrange(1, len(frames))
        cut = rng.randrange(0, len(frames[i]))
        frames[i] = frames[i][:cut] if rng.random() < 0.5 else frames[i] + rng.randbytes(rng.randrange(1, 9))
        return frames

    def wrong_dtype_or_shape(self, rng):
        frames = self.base(rng)
        header = _header(frames)
        spec = rng.choice(header["tensors"])
        if rng.random() < 0.5:
            spec["dtype"] = rng.choice([d for d in [*wire.DTYPES, "complex64", "float128"] if d != spec["dtype"]])
        else:
            spec["shape"] = [*spec["shape"], 1] if rng.random() < 0.5 else list(reversed(spec["shape"])) + [2]
        return _with_header(frames, header)

    def non_finite(self, rng):
        return _valid(self.contract, self.sender, self.far_round, fill=rng.choice([float("nan"), float("inf")]))

    def replayed_round(self, rng):
        return _valid(self.contract, self.sender, rng.randrange(0, 3))  # long past when the fuzzing starts

    def future_round(self, rng):
        return _valid(self.contract, self.sender, self.far_round + rng.randrange(10**6))

    def all(self) -> list[Callable[[random.Random], Frames]]:
        return [self.random_bytes, self.truncated_header, self.header_not_a_map, self.wrong_field_type,
                self.missing_field, self.wrong_identity, self.wrong_frame_count, self.wrong_frame_length,
                self.wrong_dtype_or_shape, self.non_finite, self.replayed_round, self.future_round]


def hostile_messages(count: int, contract: wire.Contract, sender: str, far_round: int,
                     seed: int = 0) -> Iterator[tuple[str, Frames]]:
    """``count`` hostile messages as (generator name, frames); a few oversized headers among them."""
    rng = random.Random(seed)
    hostile = Hostile(contract, sender, far_round)
    makers = hostile.all()
    for i in range(count):
        # Oversized headers are a megabyte each: a handful show the limit works.
        maker = hostile.oversized_header if i % 1000 == 999 else makers[i % len(makers)]
        yield maker.__name__, maker(rng)
