"""The wire format: exact round trips, zero-copy framing, and a typed error for every malformed message."""

from __future__ import annotations

import dataclasses
import gc

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


SPECS = (wire.TensorSpec("fc.weight", "float32", (64, 8)), wire.TensorSpec("fc.bias", "float32", (64,)))
GOSSIP = {"algorithm": "gossip"}
ADMM = {"algorithm": "admm", "admm_penalty": 100.0}


def replaced(index: int, **changes) -> tuple[wire.TensorSpec, ...]:
    specs = list(SPECS)
    specs[index] = dataclasses.replace(specs[index], **changes)
    return tuple(specs)


@pytest.mark.parametrize("specs", [
    replaced(0, name="fc.w"), replaced(1, dtype="float64"), replaced(0, shape=(32, 8)), replaced(1, shape=()),
    SPECS[::-1], SPECS[:1], SPECS + (wire.TensorSpec("extra", "float32", (1,)),),
], ids=["name", "dtype", "shape", "scalar", "order", "fewer", "more"])
def test_fingerprint_changes_with_any_tensor(specs):
    assert wire.fingerprint(specs, GOSSIP) != wire.fingerprint(SPECS, GOSSIP)


def test_fingerprint_changes_with_the_agreement():
    # 100 and 100.0, True and 1 are different JSON texts, hence different agreements.
    agreements = [GOSSIP, {"algorithm": "admm"}, ADMM, ADMM | {"admm_penalty": 10.0}, ADMM | {"admm_penalty": 100},
                  GOSSIP | {"extra": True}, GOSSIP | {"extra": 1}, {}]
    assert len({wire.fingerprint(SPECS, agreement) for agreement in agreements}) == len(agreements)


def test_fingerprint_is_the_same_for_the_same_inputs_in_any_insertion_order():
    reordered = {"admm_penalty": 100.0, "algorithm": "admm"}
    assert list(reordered) != list(ADMM)
    assert wire.fingerprint(SPECS, reordered) == wire.fingerprint(SPECS, ADMM) == wire.fingerprint(list(SPECS), ADMM)
    assert len(wire.fingerprint(SPECS, ADMM)) == 16


@pytest.mark.parametrize("agreement", [{"penalty": float("nan")}, {"penalty": float("inf")}, {"nested": {"a": 1}},
                                       {"none": None}, {1: "one"}])
def test_fingerprint_refuses_an_agreement_outside_the_documented_rule(agreement):
    with pytest.raises((TypeError, ValueError)):
        wire.fingerprint(SPECS, agreement)


def mismatch(sent: dict, contract_specs=SPECS, kind: str = "params", tensors_field=None) -> str:
    """decode's FingerprintMismatch text for a message of ``sent`` tensors at a peer holding ``contract_specs``."""
    frames = received(message(sent, kind=kind, fingerprint="0" * 16))
    if tensors_field is not None:
        header = msgpack.unpackb(bytes(frames[0]))
        frames[0] = bytearray(msgpack.packb(header | {"tensors": tensors_field}))
    contract = wire.Contract("run", "f" * 16, frozenset({"p1"}), tuple(contract_specs))
    with pytest.raises(wire.FingerprintMismatch) as raised:
        wire.decode(frames, contract)
    assert raised.value.reason == "fingerprint"
    text = str(raised.value)
    assert text.startswith("model fingerprint 0000000000000000 from 'p1', this peer's is ffffffffffffffff")
    return text


def tensors_of(specs) -> dict[str, torch.Tensor]:
    return {s.name: torch.zeros(s.shape, dtype=wire.DTYPES[s.dtype]) for s in specs}


def test_a_mismatch_names_a_shape_difference():
    text = mismatch(tensors_of(replaced(0, shape=(32, 8))))
    assert text.endswith("tensor 'fc.weight': shape [32, 8] from 'p1', [64, 8] here")


def test_a_mismatch_names_a_dtype_difference():
    text = mismatch(tensors_of(replaced(1, dtype="float64")))
    assert text.endswith("tensor 'fc.bias': dtype float64 from 'p1', float32 here")


def test_a_mismatch_names_a_name_difference():
    assert mismatch(tensors_of(replaced(1, name="fc.b"))).endswith("tensor 1 is 'fc.b' from 'p1', 'fc.bias' here")


def test_a_mismatch_names_a_count_difference():
    assert mismatch(tensors_of(SPECS[:1])).endswith(": 1 tensors from 'p1', 2 here")
    extra = SPECS + (wire.TensorSpec("fc2.weight", "float32", (1, 64)),)
    assert mismatch(tensors_of(extra)).endswith(": 3 tensors from 'p1', 2 here")


def test_a_mismatch_between_gossip_and_admm_says_the_algorithms_differ():
    admm = [wire.TensorSpec(f"x/{s.name}", s.dtype, s.shape) for s in SPECS] + \
           [wire.TensorSpec(f"sum/{s.name}", "float64", s.shape) for s in SPECS]
    for sent, here, named in [(admm, SPECS, "'p1' sends ADMM tensors and this peer gossip ones"),
                              (SPECS, admm, "'p1' sends gossip tensors and this peer ADMM ones")]:
        text = mismatch(tensors_of(sent), here)
        assert named in text and "x/NAME and sum/NAME" in text and "the peers run different algorithms" in text


def test_a_mismatch_with_the_same_tensors_blames_the_algorithm_settings():
    text = mismatch(tensors_of(SPECS))
    assert text.endswith(": same tensors, so the algorithm's settings differ (algorithm, ADMM penalty, "
                         "fragments): start every peer with the same ones")


def test_a_state_request_with_a_foreign_fingerprint_says_it_has_nothing_to_compare():
    assert "a state_request carries no tensors to compare" in mismatch({}, kind="state_request")


@pytest.mark.parametrize("tensors_field", [
    ["w"], [{"name": 1, "dtype": "float32", "shape": [2]}], [{"name": "w", "shape": [2]}],
    [{"name": "w", "dtype": "float32", "shape": "2"}], [{"name": "w", "dtype": "float32", "shape": [True]}],
    [{"name": "w", "dtype": "float32", "shape": [None]}], [None], [[1, 2]],
])
def test_a_malformed_tensor_list_only_says_the_fingerprints_differ(tensors_field):
    text = mismatch(tensors_of(SPECS), tensors_field=tensors_field)
    assert text.endswith("its tensor list is malformed, so what differs is unknown")


SCALARS = st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8)
HEADER_VALUES = st.recursive(
    SCALARS | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["name", "dtype", "shape"]), inner),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(HEADER_VALUES, max_size=4))
def test_any_tensor_list_with_a_foreign_fingerprint_raises_only_the_fingerprint_mismatch(tensors_field):
    # mismatch() fails unless decode raised exactly a FingerprintMismatch with the usual opening.
    mismatch(tensors_of(SPECS), tensors_field=tensors_field)


def test_a_mismatch_shortens_what_the_sender_wrote():
    long_name = "n" * 10_000
    text = mismatch(tensors_of(SPECS), tensors_field=[{"name": long_name, "dtype": "float32", "shape": [64, 8]},
                                                      {"name": "fc.bias", "dtype": "float32", "shape": [64]}])
    assert "tensor 0 is 'nnn" in text and len(text) < 300


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


@pytest.mark.parametrize("shape", [[True, 3], [2.0, 3], [2, 3.0]])
def test_a_shape_of_equal_but_not_integer_values_is_rejected(shape):
    # 2.0 == 2 and True == 1 in Python: the list a peer writes is recognised by more than equality.
    with pytest.raises(wire.ShapeMismatch):
        wire.decode(spec_changed(shape=shape), contract_for(TENSORS))


@pytest.mark.parametrize("depth", [10, 1000])  # msgpack packs up to about 1,400 levels
def test_a_spec_nested_deeper_than_the_interpreter_recurses_is_a_malformed_header(depth):
    nested = 0
    for _ in range(depth):
        nested = [nested]
    with pytest.raises(wire.MalformedHeader):
        wire.decode(with_header(tensors=[nested, {"name": "b", "dtype": "float32", "shape": [3]}]),
                    contract_for(TENSORS))


def test_a_header_of_a_million_objects_is_parsed_without_a_garbage_collection():
    # Each collection its allocations would trigger walks every object of the peer: half a second per
    # such header in a peer process, against 50 ms without them (nothing msgpack builds has a cycle).
    count = wire.MAX_HEADER_BYTES - 16
    header = b"\x81\xa7tensors\xdd" + count.to_bytes(4, "big") + b"\x90" * count  # {"tensors": [[], [], ...]}
    collections = []

    def note(phase, info):
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(note)
    try:
        assert len(wire.decode_header(header)["tensors"]) == count
        assert collections == []
        gc.collect()
    finally:
        gc.callbacks.remove(note)
    assert collections == [2] and gc.isenabled()  # the collector itself is back, and it was listening


B_SPEC = {"name": "b", "dtype": "float32", "shape": [3]}  # TENSORS' second tensor, as encode writes it


def nested(depth: int):
    value = 0
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("changes", [
    *({field: nested(1000)} for field in ("version", "kind", "sender", "run_id", "round", "fingerprint", "tensors",
                                          "fragment", "topology", "chunk")),
    *({"tensors": [{"name": "w", "dtype": "float32", "shape": [2, 3]} | {key: nested(1000)}, B_SPEC]}
      for key in ("name", "dtype")),
    {"fingerprint": "0" * 100_000},
    {"tensors": [{"name": "w", "dtype": "float32", "shape": nested(1000)}, B_SPEC]},
    {"tensors": [{"name": "w", "dtype": "float32", "shape": [nested(1000), 3]}, B_SPEC]},
    {"tensors": [{"name": "w" * 100_000, "dtype": "float32", "shape": [2, 3]}, B_SPEC]},
    {"tensors": [{"name": "w", "dtype": "f" * 100_000, "shape": [2, 3]}, B_SPEC]},
    {"run_id": "r" * 100_000}, {"sender": "s" * 100_000},
])
def test_whatever_a_sender_nests_or_lengthens_is_rejected_in_a_short_message(changes):
    # A deeply nested value once made the error message itself raise RecursionError, which no peer catches.
    contract = dataclasses.replace(contract_for(TENSORS), topology=("a" * 16,))
    with pytest.raises(wire.WireError) as raised:
        wire.decode(with_header(**({"topology": "a" * 16} | changes)), contract)
    assert len(str(raised.value)) < 600


def test_specs_written_with_their_keys_in_another_order_are_accepted():
    # PROTOCOL.md fixes the keys, not their order: another implementation may write them otherwise.
    specs = [{"shape": [2, 3], "name": "w", "dtype": "float32"}, {"dtype": "float32", "shape": [3], "name": "b"}]
    decoded = wire.decode(with_header(tensors=specs), contract_for(TENSORS))
    assert all(torch.equal(decoded.tensors[name], t) for name, t in TENSORS.items())


def test_every_tensor_passes_step_11_before_any_is_checked_for_nan():
    # PROTOCOL.md section 3: a later tensor's wrong length (step 11) is the reason, not an earlier NaN (step 12).
    tensors = {"w": torch.full((2, 3), float("nan")), "b": torch.zeros(3)}
    frames = received(message(tensors))
    frames[2] = frames[2][:-4]
    with pytest.raises(wire.FrameLengthMismatch, match="tensor 'b'"):
        wire.decode(frames, contract_for(tensors))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [wire._ONE_PASS_VALUES, wire._ONE_PASS_VALUES + 1])  # both ways of checking
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), None])
def test_large_and_small_tensors_are_checked_alike_for_nan_and_inf(dtype, size, bad):
    values = torch.full((size,), torch.finfo(dtype).max, dtype=dtype)
    values[::2] = torch.finfo(dtype).min  # finite however extreme: accepted
    if bad is not None:
        values[-1] = bad
    tensors = {"w": values}
    if bad is None:
        assert torch.equal(wire.decode(received(message(tensors)), contract_for(tensors)).tensors["w"], values)
    else:
        with pytest.raises(wire.NonFinite, match="tensor 'w' holds NaN or Inf"):
            wire.decode(received(message(tensors)), contract_for(tensors))


def test_a_message_of_round_r_must_carry_entry_r_mod_period_of_the_receivers_topology_digests():
    tensors = {"w": torch.zeros(2)}
    contract = dataclasses.replace(contract_for(tensors), topology=("a" * 16, "b" * 16))  # a schedule of period 2
    assert wire.decode(message(tensors, round=3, topology="b" * 16), contract).round == 3
    assert wire.decode(message(tensors, round=4, topology="a" * 16), contract).round == 4
    with pytest.raises(wire.TopologyMismatch, match="topology digest aaaaaaaaaaaaaaaa from 'p1' for round 3, this "
                                                    "peer's is bbbbbbbbbbbbbbbb: 'p1' was likely started with a "
                                                    "different topology file") as caught:
        wire.decode(message(tensors, round=3, topology="a" * 16), contract)
    assert caught.value.reason == "topology"
    with pytest.raises(wire.TopologyMismatch, match="topology digest none from 'p1'"):
        wire.decode(message(tensors, round=3), contract)  # a sender that does not send one
    with pytest.raises(wire.TopologyMismatch, match=r"topology digest \[1, 2\] from"):
        wire.decode(message(tensors, round=3, topology=[1, 2]), contract)
    assert wire.decode(message(tensors, round=3), contract_for(tensors)).round == 3  # a contract without: unchecked


# ---- tensors in chunks (PROTOCOL.md section 2) ----------------------------------------------------

CHUNK = wire.MIN_CHUNK_BYTES
# Every case of a tensor against the chunk: none of it, less than one chunk, exactly one, several
# with a rest, and several exactly.
CHUNKED = {"empty": torch.zeros(0), "small": tensor_of(torch.float32, (7,)),
           "one": tensor_of(torch.float64, (CHUNK // 8,), seed=1),
           "rest": tensor_of(torch.float32, (3, CHUNK // 4 + 5), seed=2),
           "exact": tensor_of(torch.int16, (2, CHUNK), seed=3), "half": tensor_of(torch.bfloat16, (CHUNK,), seed=4)}


def test_tensors_in_chunks_round_trip_bit_exactly_and_each_chunk_is_at_most_the_chunk():
    frames = message(CHUNKED, chunk=CHUNK)
    sizes = [memoryview(f).nbytes for f in frames[1:]]
    expected_frames = {"empty": 1, "small": 1, "one": 1, "rest": 4, "exact": 4, "half": 2}
    assert len(sizes) == sum(expected_frames.values())
    assert max(sizes) == CHUNK and sum(sizes) == sum(t.numel() * t.element_size() for t in CHUNKED.values())
    assert msgpack.unpackb(bytes(frames[0]))["chunk"] == CHUNK
    decoded = wire.decode(received(frames), contract_for(CHUNKED))
    for name, original in CHUNKED.items():
        assert decoded.tensors[name].dtype == original.dtype and decoded.tensors[name].shape == original.shape
        assert raw_bytes(decoded.tensors[name]) == raw_bytes(original)
    assert decoded.nbytes == sum(memoryview(f).nbytes for f in frames)


def test_chunks_share_memory_with_the_tensor_they_come_from():
    tensor = torch.zeros(CHUNK // 4 + 1)  # two chunks: CHUNK bytes, then 4
    frames = message({"w": tensor}, chunk=CHUNK)
    tensor[-1] = 5.0
    assert np.frombuffer(frames[2], dtype=np.float32)[-1] == 5.0


def test_a_message_without_a_chunk_is_read_as_one_frame_per_tensor_whatever_its_size():
    frames = message(CHUNKED)
    assert len(frames) == 1 + len(CHUNKED) and "chunk" not in msgpack.unpackb(bytes(frames[0]))
    assert wire.decode(received(frames), contract_for(CHUNKED)).tensors["exact"].equal(CHUNKED["exact"])


def chunked_with(**changes) -> list:
    frames = received(message(CHUNKED, chunk=CHUNK))
    header = msgpack.unpackb(bytes(frames[0])) | changes
    return [bytearray(msgpack.packb(header))] + frames[1:]


def rechunked(chunk: int) -> list:
    """The chunked message with its tensors split by ``chunk`` while the header still says CHUNK."""
    return chunked_with()[:1] + received(message(CHUNKED, chunk=chunk))[1:]


@pytest.mark.parametrize("frames, error", [
    (chunked_with(chunk=CHUNK - 1), wire.MalformedHeader),
    (chunked_with(chunk=0), wire.MalformedHeader),
    (chunked_with(chunk=True), wire.MalformedHeader),
    (chunked_with(chunk=float(CHUNK)), wire.MalformedHeader),
    (chunked_with(chunk=2 * CHUNK), wire.FrameCountMismatch),  # fewer frames than the header's chunk asks
    (rechunked(2 * CHUNK), wire.FrameCountMismatch),
    (received(message(CHUNKED, chunk=CHUNK))[:-1], wire.FrameCountMismatch),
    (received(message(CHUNKED, chunk=CHUNK)) + [bytearray(4)], wire.FrameCountMismatch),
])
def test_a_bad_chunk_or_chunk_count_raises_its_typed_error(frames, error):
    with pytest.raises(error):
        wire.decode(frames, contract_for(CHUNKED))


def test_every_chunk_must_have_its_exact_length():
    frames = received(message(CHUNKED, chunk=CHUNK))
    rest = 1 + 3  # the first frame of "rest": empty, small and one come before it
    short_then_long = frames[:rest] + [frames[rest][:-4], frames[rest + 1] + bytearray(4)] + frames[rest + 2:]
    with pytest.raises(wire.FrameLengthMismatch, match=r"'rest': chunk 0 of 65532 bytes, expected 65536"):
        wire.decode(short_then_long, contract_for(CHUNKED))


def test_a_nan_in_any_chunk_is_found():
    tensors = {name: t.clone() for name, t in CHUNKED.items()}
    tensors["rest"].view(-1)[-1] = float("nan")  # in the last chunk
    with pytest.raises(wire.NonFinite, match="'rest'"):
        wire.decode(received(message(tensors, chunk=CHUNK)), contract_for(CHUNKED))


@pytest.mark.parametrize("chunk", [CHUNK - 1, 0, True, 2.5e6])
def test_encode_refuses_a_chunk_below_the_smallest_or_not_a_whole_number(chunk):
    with pytest.raises(ValueError, match=f"at least {CHUNK}"):
        message(CHUNKED, chunk=chunk)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_values_too_large_to_add_up_are_accepted(dtype):
    tensors = {"w": torch.full((64,), torch.finfo(dtype).max, dtype=dtype)}
    decoded = wire.decode(received(message(tensors)), contract_for(tensors))
    assert torch.equal(decoded.tensors["w"], tensors["w"])
