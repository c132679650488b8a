"""The wire format: one msgpack header frame, then the raw bytes of each tensor in one frame or,
when the header gives a ``chunk`` size, in consecutive frames of that size.

Tensor bytes never pass through msgpack and are never pickled. ``encode``
returns buffers that share memory with the tensors (the transport sends them
with copy=False), and ``decode`` builds tensors on top of the received frames'
memory. The decoder trusts nothing: every field is checked against the
``Contract`` of the receiving peer, and any problem raises a ``WireError``
subclass whose ``reason`` is the short name a peer counts it under.

PROTOCOL.md at the top of the project is the normative description.
"""

from __future__ import annotations

import gc
import hashlib
import json
import reprlib
import sys
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Mapping, Sequence

import msgpack
import numpy as np
import torch

from .tensors import all_finite

PROTOCOL_VERSION = 1
# params: a round's parameters. state_request: a peer joining a running swarm
# asks a neighbour for its state; state: the answer, the neighbour's parameters
# and the round the asker should continue from. PROTOCOL.md section 6.
KINDS = frozenset({"params", "state_request", "state"})
# Kinds that carry no tensors; the others carry exactly the model's.
EMPTY_KINDS = frozenset({"state_request"})
# A header describes at most a few thousand tensors; anything bigger is not ours.
MAX_HEADER_BYTES = 1 << 20
# The smallest chunk a message may split its tensors into (PROTOCOL.md section 2): it bounds the frames
# a receiver must be ready to read for one message.
MIN_CHUNK_BYTES = 1 << 16
# The chunk a p2ptrain peer sends in over CurveZMQ. libzmq encrypts and decrypts a frame whole, on
# one I/O thread at each end: a tensor in one frame is encrypted entirely before its first byte
# leaves, and decrypted only once its last byte has arrived. In chunks, the receiver decrypts one
# while the sender encrypts the next (performance.md measures the sizes).
SECURE_CHUNK_BYTES = 1 << 20

# Wire dtype names, all little-endian on the wire.
DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
FLOATING = frozenset(name for name, dtype in DTYPES.items() if dtype.is_floating_point)

if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for is little-endian
    raise ImportError("p2ptrain's wire format is little-endian; this host is not")


class WireError(ValueError):
    """A message that must not be used. ``reason`` is the counter it is reported under."""

    reason = "malformed"


class MalformedHeader(WireError):
    reason = "malformed_header"


class VersionMismatch(WireError):
    reason = "version"


class UnknownKind(WireError):
    reason = "unknown_kind"


class UnknownSender(WireError):
    reason = "unknown_sender"


class RunMismatch(WireError):
    reason = "run_id"


class FingerprintMismatch(WireError):
    reason = "fingerprint"


class TensorSpecMismatch(WireError):
    reason = "tensor_spec"


class DtypeMismatch(TensorSpecMismatch):
    reason = "dtype"


class ShapeMismatch(TensorSpecMismatch):
    reason = "shape"


class FrameCountMismatch(WireError):
    reason = "frame_count"


class FrameLengthMismatch(WireError):
    reason = "frame_length"


class FragmentMismatch(WireError):
    reason = "fragment"


class TopologyMismatch(WireError):
    """The sender's graph or mixing weights for the message's round are not this peer's (PROTOCOL.md 2.6)."""

    reason = "topology"


class NonFinite(WireError):
    reason = "non_finite"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @cached_property  # asked twice per tensor of every message decoded
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * DTYPES[self.dtype].itemsize


def specs_of(tensors: Mapping[str, torch.Tensor]) -> tuple[TensorSpec, ...]:
    specs = []
    for name, tensor in tensors.items():
        if tensor.dtype not in DTYPE_NAMES:
            raise TypeError(f"tensor {name!r} has dtype {tensor.dtype}, which the wire does not carry; "
                            f"use one of {', '.join(DTYPES)}")
        specs.append(TensorSpec(name, DTYPE_NAMES[tensor.dtype], tuple(tensor.shape)))
    return tuple(specs)


# What an agreement may hold: flat settings whose JSON text is fixed by PROTOCOL.md section 2.3.
AgreementValue = str | int | float | bool


def canonical_text(specs: Sequence[TensorSpec], agreement: Mapping[str, AgreementValue]) -> str:
    """The JSON text the fingerprint hashes (PROTOCOL.md section 2.3)."""
    for key, value in agreement.items():
        # Nested values, None or non-string keys would make the text depend on more than the
        # documented rule (json turns 1 and "1" into the same key), so they are refused.
        if not isinstance(key, str) or not isinstance(value, (str, int, float, bool)):
            raise TypeError(f"agreement entry {key!r}: {value!r}; keys must be str and values str, int, float or bool")
    document = {"agreement": dict(agreement), "tensors": [[s.name, s.dtype, list(s.shape)] for s in specs]}
    # allow_nan=False: NaN and Infinity are not JSON, and a NaN setting would never equal itself anyway.
    return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)


def fingerprint(specs: Sequence[TensorSpec], agreement: Mapping[str, AgreementValue]) -> str:
    """A short hash of what every peer of a swarm must share: the tensors of a message and ``agreement``.

    ``agreement`` holds the algorithm's settings that must be equal on every peer, e.g.
    ``{"algorithm": "gossip"}`` or ``{"algorithm": "admm", "admm_penalty": 100.0}``. Options that only
    name things (``--model auto`` and ``--model mlp`` building the same network) do not belong in it:
    the tensors already show whether the networks agree.
    """
    return hashlib.blake2b(canonical_text(specs, agreement).encode("utf-8"), digest_size=8).hexdigest()


@dataclass(frozen=True)
class Contract:
    """What a receiving peer accepts: its run, its model layout, its in-neighbours.

    ``specs``: the tensors of a whole-model message (a state answer, and params messages unless the
    model travels in fragments). ``fragments``: the tensors of each fragment's params message, when it
    does; the fragment of round r is floor(r / period) mod len(fragments) (fragments.py). ``specs``
    and ``fragments`` are in the precision messages travel in (--wire-dtype)."""

    run_id: str
    fingerprint: str
    senders: frozenset[str]
    specs: tuple[TensorSpec, ...]
    kinds: frozenset[str] = KINDS
    fragments: tuple[tuple[TensorSpec, ...], ...] = ()
    period: int = 1
    # A state answer's tensors: the whole model in its own precision (None: the same as ``specs``).
    state_specs: tuple[TensorSpec, ...] | None = None
    # The digest of this peer's topology for each round of its period (PROTOCOL.md 2.6): a message of
    # round r must carry topology[r % period]. Empty: not checked (tests of the message format alone).
    topology: tuple[str, ...] = ()

    def expected(self, kind: str, fragment: int | None) -> tuple[TensorSpec, ...]:
        if kind in EMPTY_KINDS:
            return ()
        if kind == "state" and self.state_specs is not None:
            return self.state_specs
        return self.specs if fragment is None else self.fragments[fragment]

    def header_tensors(self, kind: str, fragment: int | None) -> list[dict]:
        """The ``tensors`` list ``encode`` writes for this kind (and fragment) of message, as msgpack reads
        it back (kept: it is compared with every message's)."""
        key = (kind, fragment)
        described = self._header_tensors.get(key)
        if described is None:
            described = self._header_tensors[key] = _header_tensors(self.expected(kind, fragment))
        return described

    @cached_property
    def _header_tensors(self) -> dict[tuple[str, int | None], list[dict]]:
        return {}


@dataclass
class Message:
    kind: str
    sender: str
    run_id: str
    round: int
    fingerprint: str
    tensors: dict[str, torch.Tensor]
    nbytes: int = 0  # every frame, header included


def encode(
    *,
    kind: str,
    sender: str,
    run_id: str,
    round: int,
    fingerprint: str,
    tensors: Mapping[str, torch.Tensor],
    fragment: int | None = None,
    topology: str | None = None,
    chunk: int | None = None,
) -> list[bytes | memoryview]:
    """Frames of one message. Tensor frames share memory with ``tensors``; with ``chunk``, a tensor of
    more bytes travels in consecutive frames of ``chunk`` bytes, the last holding the rest.

    The caller must not modify those tensors in place until the frames are
    sent (the peer replaces parameter storage when it mixes, so it never does).
    The tensors must be in host memory.
    """
    for name, tensor in tensors.items():
        if tensor.device.type != "cpu":
            raise TypeError(f"tensor {name!r} is on {tensor.device}; the wire carries host memory: "
                            "stage it with p2ptrain.staging.Staging.to_host first")
    specs = specs_of(tensors)
    header = {
        "version": PROTOCOL_VERSION,
        "kind": kind,
        "sender": sender,
        "run_id": run_id,
        "round": round,
        "fingerprint": fingerprint,
        "tensors": _header_tensors(specs),
    }
    if fragment is not None:
        header["fragment"] = fragment
    if topology is not None:
        header["topology"] = topology  # the digest of the sender's graph of this round (section 2.6)
    if chunk is not None:
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < MIN_CHUNK_BYTES:
            raise ValueError(f"chunk is {chunk!r}; a chunk is a whole number of bytes, at least {MIN_CHUNK_BYTES}")
        header["chunk"] = chunk
    frames: list[bytes | memoryview] = [msgpack.packb(header, use_bin_type=True)]
    for tensor in tensors.values():
        flat = tensor.detach().contiguous().reshape(-1)
        data = memoryview(flat.view(torch.uint8).numpy())
        if chunk is None or data.nbytes <= chunk:
            frames.append(data)
        else:
            frames.extend(data[start:start + chunk] for start in range(0, data.nbytes, chunk))
    return frames


def _header_tensors(specs: Sequence[TensorSpec]) -> list[dict]:
    return [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in specs]


def frames_per_tensor(nbytes: int, chunk: int | None) -> int:
    """How many frames carry a tensor of ``nbytes`` bytes in a message of chunk size ``chunk``."""
    return 1 if chunk is None else max(1, -(-nbytes // chunk))


def _require(header: dict, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in header:
        raise MalformedHeader(f"header has no {key!r} field")
    value = header[key]
    # bool is an int in Python but never a valid round or version on the wire.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MalformedHeader(f"header field {key!r} has type {type(value).__name__}")
    return value


def decode_header(frame: Any) -> dict:
    raw = _view(frame)
    if raw.nbytes > MAX_HEADER_BYTES:
        raise MalformedHeader(f"header frame of {raw.nbytes} bytes exceeds {MAX_HEADER_BYTES}")
    # Without the cyclic collector: a header of 1 MiB can hold a million empty lists, and each of the
    # collections their allocation triggers would walk every object of the peer (its model, torch),
    # about half a second per such header against 50 ms. Nothing msgpack builds holds a cycle, so
    # reference counting frees it all the same.
    collecting = gc.isenabled()
    gc.disable()
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except Exception as error:  # msgpack raises several unrelated types for bad input
        raise MalformedHeader(f"header is not valid msgpack: {error}") from None
    finally:
        if collecting:
            gc.enable()
    if not isinstance(header, dict):
        raise MalformedHeader(f"header is a msgpack {type(header).__name__}, not a map")
    return header


def decode(frames: Sequence[Any], contract: Contract) -> Message:
    """Check ``frames`` against ``contract`` and return the message; raise a WireError if anything is off."""
    if not frames:
        raise FrameCountMismatch("empty message")
    header = decode_header(frames[0])
    version = _require(header, "version", int)
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(f"protocol version {version}, this peer speaks {PROTOCOL_VERSION}")
    kind = _require(header, "kind", str)
    sender = _require(header, "sender", str)
    run_id = _require(header, "run_id", str)
    round_ = _require(header, "round", int)
    fp = _require(header, "fingerprint", str)
    specs = _require(header, "tensors", list)
    if kind not in contract.kinds:
        raise UnknownKind(f"message kind {_shown(kind)} is not one of {sorted(contract.kinds)}")
    if sender not in contract.senders:
        raise UnknownSender(f"sender {_shown(sender)} is not an in-neighbour of this peer")
    if run_id != contract.run_id:
        raise RunMismatch(f"run id {_shown(run_id)} from {sender!r}, this peer runs {contract.run_id!r}")
    if round_ < 0:
        raise MalformedHeader(f"negative round {round_}")
    fragment = header.get("fragment")
    if fp != contract.fingerprint:
        raise _fingerprint_mismatch(fp, sender, kind, specs, contract, fragment)
    if contract.topology:
        _check_topology(header.get("topology"), sender, round_, contract.topology)
    _check_fragment(fragment, "fragment" in header, kind, round_, contract)
    chunk = _chunk_of(header)
    expected_specs = contract.expected(kind, fragment)
    if len(specs) != len(expected_specs):
        raise TensorSpecMismatch(f"{len(specs)} tensors described, a {kind} message of this model has "
                                 f"{len(expected_specs)}")
    counts = [frames_per_tensor(spec.nbytes, chunk) for spec in expected_specs]
    if len(frames) != 1 + sum(counts):
        carried = f"{len(expected_specs)} tensors"
        if chunk is not None:
            carried += f" in {sum(counts)} frames of at most {chunk} bytes"
        raise FrameCountMismatch(f"{len(frames)} frames, expected 1 header + {carried}")

    buffers = _checked_buffers(frames, specs, expected_specs, counts, chunk,
                               specs_known=_as_written(specs, contract.header_tensors(kind, fragment)))
    # Step 12, once every tensor passed step 11. One NaN or Inf mixed in would spread to every peer
    # within a diameter's worth of rounds.
    for buffer, expected in zip(buffers, expected_specs):
        if expected.dtype in FLOATING and expected.nbytes and _holds_non_finite(buffer, expected.dtype):
            raise NonFinite(f"tensor {expected.name!r} holds NaN or Inf")
    tensors = {expected.name: _tensor_from(buffer, expected) for buffer, expected in zip(buffers, expected_specs)}
    nbytes = _view(frames[0]).nbytes + sum(buffer.nbytes for buffer in buffers)
    return Message(kind, sender, run_id, round_, fp, tensors, nbytes)


def _as_written(specs: list, written: list[dict]) -> bool:
    """Whether a header's tensor list is the very one ``encode`` writes for this message: equal, and every
    dimension an int (1.0 and True equal 1). The comparison stops at the first difference, however deep
    what a sender nested there."""
    return specs == written and all(type(dim) is int for spec in specs for dim in spec["shape"])


def _checked_buffers(frames: Sequence[Any], specs: list, expected_specs: tuple[TensorSpec, ...], counts: list[int],
                     chunk: int | None, specs_known: bool) -> list[memoryview]:
    """Step 11 of PROTOCOL.md section 3, tensor by tensor: its spec, its frames' lengths, a bool tensor's
    bytes; returns each tensor's bytes, writable. ``specs_known``: the header's list is the very one a peer
    of this model writes (``_as_written``), so its specs need no checking one by one; any other list, even
    a valid one, has each checked."""
    buffers = []
    first = 1
    for described, expected, count in zip(specs, expected_specs, counts):
        if not specs_known:
            _check_spec(described, expected)
        if count == 1:
            buffer = _view(frames[first])
            if buffer.nbytes != expected.nbytes:
                raise FrameLengthMismatch(
                    f"tensor {expected.name!r}: frame of {buffer.nbytes} bytes, expected {expected.nbytes}"
                )
        else:
            buffer = _joined([_view(frame) for frame in frames[first:first + count]], expected, chunk)
        first += count
        if buffer.readonly and expected.nbytes:
            # Frames from ZeroMQ are writable and used in place; a read-only buffer
            # (bytes from a test or a file) is copied once rather than aliased.
            buffer = memoryview(bytearray(buffer))
        if expected.dtype == "bool" and expected.nbytes and np.frombuffer(buffer, dtype=np.uint8).max() > 1:
            raise DtypeMismatch(f"tensor {expected.name!r} is bool but holds bytes other than 0 and 1")
        buffers.append(buffer)
    return buffers


def _chunk_of(header: dict) -> int | None:
    if "chunk" not in header:
        return None
    chunk = _require(header, "chunk", int)
    if chunk < MIN_CHUNK_BYTES:
        raise MalformedHeader(f"chunk of {chunk} bytes; a chunk is at least {MIN_CHUNK_BYTES}")
    return chunk


def _joined(buffers: list[memoryview], spec: TensorSpec, chunk: int) -> memoryview:
    """One buffer of a tensor's chunks, in order, each checked for its exact length first."""
    for index, buffer in enumerate(buffers):
        wanted = chunk if index < len(buffers) - 1 else spec.nbytes - chunk * (len(buffers) - 1)
        if buffer.nbytes != wanted:
            raise FrameLengthMismatch(f"tensor {spec.name!r}: chunk {index} of {buffer.nbytes} bytes, "
                                      f"expected {wanted}")
    joined = np.empty(spec.nbytes, dtype=np.uint8)
    for index, buffer in enumerate(buffers):
        joined[index * chunk:index * chunk + buffer.nbytes] = np.frombuffer(buffer, dtype=np.uint8)
    return memoryview(joined)


def _check_fragment(fragment: Any, named: bool, kind: str, round_: int, contract: Contract) -> None:
    """A params message of a fragmented model names the fragment its round carries; no other message names one
    (``named``: the header has the field, be it nil)."""
    if kind != "params" or not contract.fragments:
        if named:
            raise FragmentMismatch(f"a {kind} message names fragment {_shown(fragment)}, but this peer exchanges "
                                   "the whole model in it")
        return
    if type(fragment) is not int:
        raise FragmentMismatch(f"no fragment index in a params message; this peer exchanges its model in "
                               f"{len(contract.fragments)} fragments (--fragments)")
    scheduled = (round_ // contract.period) % len(contract.fragments)
    if fragment != scheduled:
        raise FragmentMismatch(f"fragment {fragment} in round {round_}, whose fragment is {scheduled} of "
                               f"{len(contract.fragments)}")


def _check_topology(digest: Any, sender: str, round_: int, ours: tuple[str, ...]) -> None:
    expected = ours[round_ % len(ours)]
    if digest != expected:
        if digest is None:
            shown = "none"
        else:
            shown = digest if isinstance(digest, str) and digest.isalnum() and len(digest) <= 32 else _shown(digest)
        raise TopologyMismatch(f"topology digest {shown} from {sender!r} for round {round_}, this peer's is "
                               f"{expected}: {sender!r} was likely started with a different topology file (its "
                               "graph or mixing weights differ from this peer's)")


SAME_TENSORS = ("same tensors, so the algorithm's settings differ (algorithm, ADMM penalty, fragments): "
                "start every peer with the same ones")


def _fingerprint_mismatch(fp: str, sender: str, kind: str, described: list, contract: Contract,
                          fragment: Any = None) -> FingerprintMismatch:
    """The error for a foreign fingerprint, saying what differs where the header shows it.

    The header's tensor list comes from the sender and is not checked yet (that is step 9), so
    nothing in it is trusted: a malformed list only leaves the reason unexplained.
    """
    shown = fp if len(fp) <= 32 else _shown(fp)
    head = f"model fingerprint {shown} from {sender!r}, this peer's is {contract.fingerprint}"
    if kind in EMPTY_KINDS:
        return FingerprintMismatch(f"{head}: the peers' models or algorithm settings differ "
                                   f"(a {kind} carries no tensors to compare)")
    theirs = _described_specs(described)
    if theirs is None:
        return FingerprintMismatch(f"{head}; its tensor list is malformed, so what differs is unknown")
    if fragment is not None and not contract.fragments:
        return FingerprintMismatch(f"{head}: {sender!r} sends its model in fragments and this peer whole; start "
                                   "every peer with the same --fragments")
    if contract.fragments and kind == "params":
        if type(fragment) is not int or not 0 <= fragment < len(contract.fragments):
            return FingerprintMismatch(f"{head}: this peer sends its model in {len(contract.fragments)} fragments "
                                       f"and {sender!r} does not; start every peer with the same --fragments")
        ours = contract.fragments[fragment]
    else:
        ours = contract.specs
    return FingerprintMismatch(f"{head}: {_difference(theirs, ours, sender)}")


def _described_specs(described: list) -> list[TensorSpec] | None:
    specs = []
    for item in described:
        if not isinstance(item, dict):
            return None
        name, dtype, shape = item.get("name"), item.get("dtype"), item.get("shape")
        if not (isinstance(name, str) and isinstance(dtype, str) and isinstance(shape, list)
                and all(type(dim) is int for dim in shape)):
            return None
        specs.append(TensorSpec(name, dtype, tuple(shape)))
    return specs


# CHOCO sends its model flat as "copy", or "base" then its compressor's tensors (PROTOCOL.md section 10).
CHOCO_NAMES = frozenset({"copy", "base", "q", "scale", "index", "value"})


def _algorithm_named(specs: Sequence[TensorSpec]) -> str:
    # ADMM sends x/NAME and sum/NAME; parameter names (gossip) never hold a slash.
    if specs and all(s.name.startswith(("x/", "sum/")) for s in specs):
        return "ADMM"
    if specs and {s.name for s in specs} <= CHOCO_NAMES and specs[0].name in ("copy", "base"):
        return "CHOCO"
    return "gossip"


# How a sender's containers are shown: a few levels and items of each. repr or str would recurse as deep as
# the sender nested them (msgpack reads a thousand levels) and raise RecursionError instead of a rejection.
_SENDERS_VALUE = reprlib.Repr()
_SENDERS_VALUE.maxlevel, _SENDERS_VALUE.maxlist, _SENDERS_VALUE.maxdict = 3, 6, 4
_SENDERS_VALUE.maxstring = _SENDERS_VALUE.maxother = 80


def _shown(value: Any) -> str:
    """A value of a sender's header for an error message: short (the header may be 1 MiB), whatever it is."""
    if isinstance(value, (list, dict)):
        text = _SENDERS_VALUE.repr(value)
    else:
        text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _difference(theirs: Sequence[TensorSpec], ours: Sequence[TensorSpec], sender: str) -> str:
    their_algorithm, our_algorithm = _algorithm_named(theirs), _algorithm_named(ours)
    if theirs and ours and their_algorithm != our_algorithm:
        return (f"{sender!r} sends {their_algorithm} tensors and this peer {our_algorithm} ones (gossip messages "
                "carry the parameter names, ADMM messages x/NAME and sum/NAME, CHOCO messages copy, or base and "
                "its compressor's): the peers run different algorithms; start every peer with the same one")
    differences = []
    if len(theirs) != len(ours):
        differences.append(f"{len(theirs)} tensors from {sender!r}, {len(ours)} here")
    first = _first_tensor_difference(theirs, ours, sender)
    if first:
        differences.append(first)
    return "; ".join(differences) or SAME_TENSORS


def _first_tensor_difference(theirs: Sequence[TensorSpec], ours: Sequence[TensorSpec], sender: str) -> str | None:
    # The first is enough to find the cause; the ones after it usually follow from it.
    for index, (their, our) in enumerate(zip(theirs, ours)):
        if their.name != our.name:
            return f"tensor {index} is {_shown(their.name)} from {sender!r}, {our.name!r} here"
        if their.dtype != our.dtype:
            # A wire dtype name as it is; anything else quoted, as the sender's text it is.
            dtype = their.dtype if their.dtype in DTYPES else _shown(their.dtype)
            return f"tensor {our.name!r}: dtype {dtype} from {sender!r}, {our.dtype} here"
        if their.shape != our.shape:
            return f"tensor {our.name!r}: shape {_shown(list(their.shape))} from {sender!r}, {list(our.shape)} here"
    return None


def _check_spec(described: Any, expected: TensorSpec) -> None:
    if not isinstance(described, dict):
        raise MalformedHeader("a tensor spec is not a map")
    name = _require(described, "name", str)
    dtype = _require(described, "dtype", str)
    shape = _require(described, "shape", list)
    if name != expected.name:
        raise TensorSpecMismatch(f"tensor {_shown(name)} where {expected.name!r} was expected")
    if dtype != expected.dtype:
        raise DtypeMismatch(f"tensor {name!r} has dtype {_shown(dtype)}, expected {expected.dtype}")
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape) or tuple(shape) != expected.shape:
        raise ShapeMismatch(f"tensor {name!r} has shape {_shown(shape)}, expected {list(expected.shape)}")


def _tensor_from(buffer: memoryview, spec: TensorSpec) -> torch.Tensor:
    """The tensor over a checked, writable buffer."""
    dtype = DTYPES[spec.dtype]
    if spec.nbytes == 0:
        return torch.empty(spec.shape, dtype=dtype)
    flat = torch.frombuffer(buffer, dtype=dtype)
    return flat if len(spec.shape) == 1 else flat.reshape(spec.shape)


# Of the half-precision formats: the sign bit off, a value is NaN or infinite exactly when its bits
# are at least those of the exponent field all set.
_HALF_EXPONENT_BITS = {"float16": np.uint16(0x7C00), "bfloat16": np.uint16(0x7F80)}
_HALF_ALL_BUT_SIGN = np.uint16(0x7FFF)


# Up to this many values a float tensor is checked in one numpy call, with a temporary of a byte per value.
_ONE_PASS_VALUES = 1 << 16


def _holds_non_finite(buffer: memoryview, dtype: str) -> bool:
    """float32 and float64: a small tensor in one numpy call (every value finite, through a temporary
    of a byte per value: the fewest calls for the many small tensors of small models); a larger one
    by tensors.all_finite (one pass of a sum, the extremes only if it is not finite). The
    half-precision formats (bfloat16, which numpy lacks, and float16, whose arithmetic numpy emulates
    slowly) on the raw bits (IEEE 754: a value is NaN or infinite exactly when all its exponent bits
    are set)."""
    if dtype in ("float32", "float64"):
        if buffer.nbytes // DTYPES[dtype].itemsize <= _ONE_PASS_VALUES:
            return not np.logical_and.reduce(np.isfinite(np.frombuffer(buffer, dtype=dtype)))
        return not all_finite(torch.frombuffer(buffer, dtype=DTYPES[dtype]))
    bits = np.frombuffer(buffer, dtype=np.uint16)
    return bool((bits & _HALF_ALL_BUT_SIGN).max(initial=0) >= _HALF_EXPONENT_BITS[dtype])


def frame_bytes(frames: Iterable[Any]) -> int:
    return sum(_view(f).nbytes for f in frames)


def _view(frame: Any) -> memoryview:
    """The bytes of a frame: a ZeroMQ frame's buffer, or any buffer given directly (tests, encode's output)."""
    return memoryview(getattr(frame, "buffer", frame))
