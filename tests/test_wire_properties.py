"""Properties of the wire decoder: whatever arrives, ``decode`` returns a Message that honours the
Contract exactly or raises a WireError, never anything else; and encode -> decode is bit-exact."""

from __future__ import annotations

import msgpack
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from p2ptrain import wire

# Modest example counts keep the file at a few seconds; the strategies aim at the edges instead.
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# The receiving peer's model: one tensor of several kinds, bool included for the 0/1 rule.
MODEL = {
    "w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
    "h": torch.tensor([0.5, -1.0, 2.0], dtype=torch.float16),
    "mask": torch.tensor([True, False, True, True]),
    "step": torch.tensor(7, dtype=torch.int64),
}
CONTRACT = wire.Contract("run", "f" * 16, frozenset({"p1", "p2"}), wire.specs_of(MODEL))
VALID_HEADER = {
    "version": wire.PROTOCOL_VERSION, "kind": "params", "sender": "p1", "run_id": "run", "round": 3,
    "fingerprint": "f" * 16,
    "tensors": [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in CONTRACT.specs],
}
MISSING = object()  # a header field left out


def valid_frames() -> list[bytearray]:
    frames = wire.encode(kind="params", sender="p1", run_id="run", round=3, fingerprint="f" * 16, tensors=MODEL)
    # What a socket hands over: writable buffers holding the same bytes.
    return [bytearray(bytes(frame)) for frame in frames]


def honours_contract(message: wire.Message, frames: list, contract: wire.Contract) -> None:
    """Everything a peer relies on after decode succeeded."""
    assert isinstance(message, wire.Message)
    assert message.kind in contract.kinds and isinstance(message.kind, str)
    assert message.sender in contract.senders
    assert message.run_id == contract.run_id and message.fingerprint == contract.fingerprint
    assert isinstance(message.round, int) and not isinstance(message.round, bool) and message.round >= 0
    # Some kinds (a state request) carry no tensors; every other kind carries exactly the model's.
    specs = () if message.kind in getattr(wire, "EMPTY_KINDS", frozenset()) else contract.specs
    assert len(frames) == 1 + len(specs)
    assert list(message.tensors) == [spec.name for spec in specs]
    for spec in specs:
        tensor = message.tensors[spec.name]
        assert tensor.dtype == wire.DTYPES[spec.dtype] and tuple(tensor.shape) == spec.shape
        if tensor.dtype == torch.bool and tensor.numel():
            assert int(tensor.view(torch.uint8).max()) <= 1
    assert message.nbytes == wire.frame_bytes(frames)


def decode_or_none(frames: list, contract: wire.Contract = CONTRACT) -> wire.Message | None:
    """decode's answer: a Message that honours the contract, or None for a WireError.

    Any other exception propagates, and hypothesis reports it with the example that raised it.
    """
    try:
        message = wire.decode(frames, contract)
    except wire.WireError as error:
        assert isinstance(error.reason, str) and error.reason  # what the peer counts it under
        event(f"rejected: {error.reason}")  # --hypothesis-show-statistics shows which checks were reached
        return None
    honours_contract(message, frames, contract)
    event("decoded")
    return message


def header_frame(header: dict) -> bytearray:
    return bytearray(msgpack.packb({k: v for k, v in header.items() if v is not MISSING}, use_bin_type=True))


# --- strategies --------------------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
           | st.text(max_size=8) | st.binary(max_size=8))
# Anything msgpack can carry, including maps whose keys are not strings (which the decoder refuses).
msgpack_values = st.recursive(
    scalars,
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=6), children, max_size=4)
                      | st.dictionaries(st.integers(-3, 3) | st.binary(max_size=3), children, max_size=2)),
    max_leaves=10,
)


def field(valid, *near_misses):
    """A header field: mostly valid (so that later checks are reached too), else a near miss, anything, or absent."""
    wrong = st.one_of(st.sampled_from(near_misses), msgpack_values, st.just(MISSING))
    return st.integers(0, 9).flatmap(lambda k: st.just(valid) if k < 9 else wrong)


dtype_names = st.sampled_from(list(wire.DTYPES) + ["complex64", "float8", "", "Float32"]) | st.text(max_size=6)
shapes = (st.lists(st.integers(-2, 7) | st.just(2**64 - 1) | st.booleans() | st.floats(0, 4), max_size=3)
          | msgpack_values)


@st.composite
def tensor_specs(draw):
    """The header's list of tensor specs: the right one, or specs that are off in name, dtype, shape or number."""
    specs = [dict(spec) for spec in VALID_HEADER["tensors"]]
    if draw(st.integers(0, 3)):
        return specs
    for spec in specs:
        if not draw(st.integers(0, 3)):
            spec["name"] = draw(st.sampled_from(["w", "h", "mask", "step", "v"]) | msgpack_values)
        if not draw(st.integers(0, 3)):
            spec["dtype"] = draw(dtype_names)
        if not draw(st.integers(0, 3)):
            spec["shape"] = draw(shapes)
    count = draw(st.integers(0, len(specs) + 2))
    extra = [draw(msgpack_values) for _ in range(max(0, count - len(specs)))]
    return (specs + extra)[:count]


headers = st.fixed_dictionaries({
    "version": field(wire.PROTOCOL_VERSION, 0, 2, -1, True, 1.0),
    "kind": field("params", "state", "state_request", "weights", "", "PARAMS"),
    "sender": field("p1", "p2", "p9", "", "p1 "),
    "run_id": field("run", "other", ""),
    "round": field(3, 0, -1, 2**64 - 1, True, False, 3.0, "3"),
    "fingerprint": field("f" * 16, "0" * 16, ""),
    "tensors": st.integers(0, 9).flatmap(lambda k: tensor_specs() if k < 8 else msgpack_values | st.just(MISSING)),
})


@st.composite
def tensor_frames(draw):
    """The tensor frames: right, or too few or too many, or one of the wrong length."""
    frames = valid_frames()[1:]
    choice = draw(st.sampled_from(["valid", "valid", "count", "length", "bytes"]))
    if choice == "count":
        count = draw(st.integers(0, len(frames) + 3))
        frames = (frames + [bytearray(draw(st.binary(max_size=16))) for _ in range(3)])[:count]
    elif choice == "length":
        index = draw(st.integers(0, len(frames) - 1))
        size = draw(st.integers(0, 64).filter(lambda n: n != len(frames[index])))
        frames[index] = bytearray(draw(st.binary(min_size=size, max_size=size)))
    elif choice == "bytes":  # right lengths, any content (NaN payloads, bool bytes other than 0 and 1)
        frames = [bytearray(draw(st.binary(min_size=len(f), max_size=len(f)))) for f in frames]
    return frames


# --- never anything but a WireError -------------------------------------------------------------------------


@SOME
@given(st.lists(st.binary(max_size=96), max_size=7))
def test_random_bytes(frames):
    assert decode_or_none([bytearray(f) for f in frames]) is None or len(frames) == 1 + len(MODEL)


@SOME
@given(msgpack_values)
def test_any_msgpack_value_as_the_header(value):
    frames = [bytearray(msgpack.packb(value, use_bin_type=True))] + valid_frames()[1:]
    decode_or_none(frames)


@SOME
@given(headers, tensor_frames())
def test_headers_and_frames_off_in_any_combination(header, frames):
    decode_or_none([header_frame(header)] + frames)


@FEW
@given(st.data())
def test_truncated_header_is_malformed(data):
    header = valid_frames()[0]
    cut = data.draw(st.integers(0, len(header) - 1))
    with pytest.raises(wire.MalformedHeader):
        wire.decode([header[:cut]] + valid_frames()[1:], CONTRACT)


@FEW
@given(st.binary(min_size=1, max_size=32))
def test_trailing_bytes_after_the_header_are_malformed(tail):
    frames = valid_frames()
    frames[0] += tail
    with pytest.raises(wire.MalformedHeader):
        wire.decode(frames, CONTRACT)


@settings(max_examples=5, deadline=None)
@given(st.integers(wire.MAX_HEADER_BYTES, wire.MAX_HEADER_BYTES + 100))
def test_oversized_header_is_malformed_even_if_it_is_valid_msgpack(padding):
    frames = valid_frames()
    frames[0] = header_frame(VALID_HEADER | {"padding": "x" * padding})
    with pytest.raises(wire.MalformedHeader):
        wire.decode(frames, CONTRACT)


@FEW
@given(st.integers(0, 8).filter(lambda n: n != len(MODEL)))
def test_wrong_frame_count(count):
    frames = valid_frames()
    tensors = (frames[1:] * 3)[:count]
    with pytest.raises(wire.FrameCountMismatch):
        wire.decode(frames[:1] + tensors, CONTRACT)


@FEW
@given(st.sampled_from(range(len(MODEL))), st.integers(0, 80))
def test_wrong_frame_length(index, size):
    frames = valid_frames()
    assume(size != len(frames[1 + index]))
    frames[1 + index] = bytearray(size)
    with pytest.raises(wire.FrameLengthMismatch):
        wire.decode(frames, CONTRACT)


@SOME
@given(st.sampled_from(range(len(MODEL))), dtype_names, shapes)
def test_wrong_dtype_or_shape_is_a_spec_mismatch(index, dtype, shape):
    header = dict(VALID_HEADER)
    expected = VALID_HEADER["tensors"][index]
    exactly_right = (type(shape) is list and all(type(d) is int for d in shape) and shape == expected["shape"])
    assume(not (dtype == expected["dtype"] and exactly_right))  # [2.0, 3.0] == [2, 3] in Python, not on the wire
    header["tensors"] = [dict(spec) for spec in VALID_HEADER["tensors"]]
    header["tensors"][index] = expected | {"dtype": dtype, "shape": shape}
    with pytest.raises((wire.TensorSpecMismatch, wire.MalformedHeader)):
        wire.decode([header_frame(header)] + valid_frames()[1:], CONTRACT)


@SOME
@given(st.binary(min_size=4, max_size=4))
def test_bool_payloads_hold_only_zero_and_one(payload):
    frames = valid_frames()
    frames[3] = bytearray(payload)  # the "mask" frame
    if set(payload) <= {0, 1}:
        message = decode_or_none(frames)
        assert message is not None
        assert message.tensors["mask"].tolist() == [byte == 1 for byte in payload]
    else:
        with pytest.raises(wire.DtypeMismatch):
            wire.decode(frames, CONTRACT)


# --- round trips --------------------------------------------------------------------------------------------

small_shapes = st.lists(st.integers(0, 5), max_size=3).map(tuple)


@st.composite
def any_tensor(draw):
    """A tensor of an allowed dtype and shape holding any bytes (NaN and Inf, -0.0, subnormals) or bools."""
    dtype = wire.DTYPES[draw(st.sampled_from(list(wire.DTYPES)))]
    shape = draw(small_shapes)
    count = 1
    for dim in shape:
        count *= dim
    if dtype == torch.bool:
        values = draw(st.lists(st.booleans(), min_size=count, max_size=count))
        return torch.tensor(values, dtype=torch.bool).reshape(shape)
    size = count * dtype.itemsize
    raw = draw(st.binary(min_size=size, max_size=size))
    if size == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape).clone()


def raw_bytes(tensor: torch.Tensor) -> bytes:
    return bytes(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


@SOME
@given(st.dictionaries(st.text(min_size=1, max_size=6), any_tensor(), min_size=1, max_size=4),
       st.integers(0, 2**64 - 1), st.booleans())
def test_encode_decode_round_trips_bit_exactly(tensors, round_, writable):
    contract = wire.Contract("run", "a" * 16, frozenset({"peer"}), wire.specs_of(tensors))
    frames = wire.encode(kind="params", sender="peer", run_id="run", round=round_, fingerprint="a" * 16,
                         tensors=tensors)
    # Writable frames are used in place; read-only ones (bytes) are copied first: both must round-trip.
    arrived = [bytearray(bytes(f)) if writable else bytes(f) for f in frames]
    message = decode_or_none(arrived, contract)
    if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors.values()):
        assert message is None  # NaN and Inf are refused (PROTOCOL.md section 3, step 11)
        with pytest.raises(wire.NonFinite):
            wire.decode(arrived, contract)
        return
    assert message is not None and message.round == round_ and message.sender == "peer"
    for name, original in tensors.items():
        assert raw_bytes(message.tensors[name]) == raw_bytes(original)
