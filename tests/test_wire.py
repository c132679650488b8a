"""The wire format: exact round trips, zero-copy framing, and a typed error for every malformed message."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from p2ptrain import wire

DTYPES = list(wire.DTYPES)


def tensor_of(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 100).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=torch.int64).to(dtype)


def contract_for(tensors, senders=("p1",), run_id="run", fp="f" * 16) -> wire.Contract:
    return wire.Contract(run_id, fp, frozenset(senders), wire.specs_of(tensors))


def message(tensors, **overrides) -> list:
    fields = dict(kind="params", sender="p1", run_id="run", round=3, fingerprint="f" * 16, tensors=tensors)
    return wire.encode(**(fields | overrides))


def raw_bytes(t: torch.Tensor) -> bytes:
    return bytes(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def received(frames) -> list[bytearray]:
    # What a socket hands over: writable buffers with the same bytes.
    return [bytearray(bytes(f)) for f in frames]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 4), (2, 3, 5)])
def test_every_dtype_round_trips_bit_exactly(dtype, shape):
    tensors = {"a": tensor_of(wire.DTYPES[dtype], shape), "b": tensor_of(wire.DTYPES[dtype], (2,), seed=1)}
    decoded = wire.decode(received(message(tensors)), contract_for(tensors))
    assert decoded.sender == "p1" and decoded.round == 3 and decoded.kind == "params"
    for name, original in tensors.items():
        got = decoded.tensors[name]
        assert got.dtype == original.dtype and got.shape == original.shape
        # Compare bytes, so NaN payloads and negative zeros count too.
        assert raw_bytes(got) == raw_bytes(original)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(DTYPES), st.lists(st.integers(0, 6), max_size=4), st.integers(0, 2**31))
def test_round_trip_property(dtype, shape, seed):
    tensors = {"w": tensor_of(wire.DTYPES[dtype], tuple(shape), seed)}
    decoded = wire.decode(received(message(tensors)), contract_for(tensors))
    assert decoded.tensors["w"].shape == tensors["w"].shape
    assert raw_bytes(decoded.tensors["w"]) == raw_bytes(tensors["w"])


def test_encode_shares_memory_with_the_tensor():
    t = torch.arange(1024, dtype=torch.float32)
    frames = message({"w": t})
    assert np.frombuffer(frames[1], dtype=np.uint8).ctypes.data == t.data_ptr()


def test_decode_builds_tensors_on_the_received_buffer():
    tensors = {"w": torch.arange(4096, dtype=torch.float32)}
    frames = received(message(tensors))
    decoded = wire.decode(frames, contract_for(tensors))
    assert decoded.tensors["w"].data_ptr() == np.frombuffer(frames[1], dtype=np.uint8).ctypes.data
    assert decoded.nbytes == sum(len(f) for f in frames)


def test_header_is_plain_msgpack_without_tensor_bytes():
    tensors = {"w": torch.zeros(3, 2, dtype=torch.float16)}
    header = msgpack.unpackb(bytes(message(tensors)[0]))
    assert header == {
        "version": wire.PROTOCOL_VERSION, "kind": "params", "sender": "p1", "run_id": "run", "round": 3,
        "fingerprint": "f" * 16, "tensors": [{"name": "w", "dtype": "float16", "shape": [3, 2]}],
    }


def test_fingerprint_depends_on_layout_and_salt():
    a = wire.specs_of({"w": torch.zeros(3, 2)})
    b = wire.specs_of({"w": torch.zeros(2, 3)})
    assert wire.fingerprint(a, "mlp") == wire.fingerprint(a, "mlp")
    assert wire.fingerprint(a, "mlp") != wire.fingerprint(b, "mlp")
    assert wire.fingerprint(a, "mlp") != wire.fingerprint(a, "logreg")


TENSORS = {"w": torch.ones(2, 3), "b": torch.zeros(3)}


def with_header(**changes) -> list:
    frames = received(message(TENSORS))
    header = msgpack.unpackb(bytes(frames[0]))
    for key, value in changes.items():
        if value is KeyError:
            del header[key]
        else:
            header[key] = value
    frames[0] = bytearray(msgpack.packb(header))
    return frames


def spec_changed(**changes) -> list:
    specs = [{"name": "w", "dtype": "float32", "shape": [2, 3]} | changes, {"name": "b", "dtype": "float32", "shape": [3]}]
    return with_header(tensors=specs)


@pytest.mark.parametrize(
    "frames, error",
    [
        ([], wire.FrameCountMismatch),
        ([b"\xc1not msgpack"] + received(message(TENSORS))[1:], wire.MalformedHeader),
        ([msgpack.packb([1, 2, 3])] + received(message(TENSORS))[1:], wire.MalformedHeader),
        ([b"\x00" * (wire.MAX_HEADER_BYTES + 1)], wire.MalformedHeader),
        (with_header(round=KeyError), wire.MalformedHeader),
        (with_header(sender=KeyError), wire.MalformedHeader),
        (with_header(round="3"), wire.MalformedHeader),
        (with_header(round=True), wire.MalformedHeader),
        (with_header(round=-1), wire.MalformedHeader),
        (with_header(version=2), wire.VersionMismatch),
        (with_header(kind="weights"), wire.UnknownKind),
        (with_header(sender="p9"), wire.UnknownSender),
        (with_header(run_id="other"), wire.RunMismatch),
        (with_header(fingerprint="0" * 16), wire.FingerprintMismatch),
        (with_header(tensors="w"), wire.MalformedHeader),
        (with_header(tensors=[]), wire.TensorSpecMismatch),
        (with_header(tensors=["w", "b"]), wire.MalformedHeader),
        (spec_changed(name="v"), wire.TensorSpecMismatch),
        (spec_changed(dtype="float64"), wire.DtypeMismatch),
        (spec_changed(dtype="complex64"), wire.DtypeMismatch),
        (spec_changed(shape=[3, 2]), wire.ShapeMismatch),
        (spec_changed(shape=[2, "3"]), wire.ShapeMismatch),
        (received(message(TENSORS))[:2], wire.FrameCountMismatch),
        (received(message(TENSORS)) + [bytearray(4)], wire.FrameCountMismatch),
        (received(message(TENSORS))[:2] + [bytearray(8)], wire.FrameLengthMismatch),
        (received(message(TENSORS))[:1] + [bytearray(28)] + received(message(TENSORS))[2:], wire.FrameLengthMismatch),
    ],
)
def test_each_malformed_message_raises_its_typed_error(frames, error):
    with pytest.raises(error) as raised:
        wire.decode(frames, contract_for(TENSORS))
    assert isinstance(raised.value, wire.WireError)
    assert raised.value.reason


def test_bool_frames_must_hold_zero_or_one():
    tensors = {"mask": torch.tensor([True, False, True])}
    frames = received(message(tensors))
    frames[1] = bytearray(b"\x01\x00\x07")
    with pytest.raises(wire.DtypeMismatch):
        wire.decode(frames, contract_for(tensors))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=4))
def test_random_bytes_never_escape_as_anything_but_a_wire_error(frames):
    with pytest.raises(wire.WireError):
        wire.decode([bytearray(f) for f in frames], contract_for(TENSORS))


def test_unsupported_dtype_is_refused_when_encoding():
    with pytest.raises(TypeError, match="the wire does not carry"):
        message({"z": torch.zeros(2, dtype=torch.complex64)})


def test_unknown_header_fields_are_ignored_for_forward_compatibility():
    frames = with_header(priority="high")
    assert wire.decode(frames, contract_for(TENSORS)).round == 3


def test_a_state_request_carries_no_tensors_and_a_state_carries_the_model():
    contract = contract_for(TENSORS)
    request = wire.decode(received(message({}, kind="state_request", round=0)), contract)
    assert (request.kind, request.sender, request.tensors) == ("state_request", "p1", {})
    state = wire.decode(received(message(TENSORS, kind="state", round=41)), contract)
    assert state.round == 41 and all(torch.equal(state.tensors[n], t) for n, t in TENSORS.items())
    with pytest.raises(wire.TensorSpecMismatch):  # a request with tensors attached is not one
        wire.decode(received(message(TENSORS, kind="state_request")), contract)
    with pytest.raises(wire.TensorSpecMismatch):  # a state without the model is not one
        wire.decode(received(message({}, kind="state")), contract)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_payloads_are_rejected(bad):
    tensors = {name: t.clone() for name, t in TENSORS.items()}
    tensors["b"][1] = bad
    with pytest.raises(wire.NonFinite) as raised:
        wire.decode(received(message(tensors)), contract_for(TENSORS))
    assert raised.value.reason == "non_finite" and "'b'" in str(raised.value)
