"""Staging: tensors of any device through the host-only wire, exact and without aliasing where it matters.

There is no GPU in the test runs, so ``Staging(..., always=True)`` takes the
staging path on the CPU: the same copies, buffer reuse and copying sends.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from p2ptrain import wire
from p2ptrain.algorithms.gossip import mix
from p2ptrain.staging import Staging
from p2ptrain.transport import ZmqTransport

from .test_wire import tensor_of

ROOT = Path(__file__).resolve().parent.parent
_names = itertools.count()


def raw_bytes(t: torch.Tensor) -> bytes:
    return bytes(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def contract_for(tensors, senders=("p1",)) -> wire.Contract:
    return wire.Contract("run", "f" * 16, frozenset(senders), wire.specs_of(tensors))


def received(frames) -> list[bytearray]:
    # What a socket hands over: writable buffers with the same bytes.
    return [bytearray(bytes(f)) for f in frames]


def memory_range(thing) -> tuple[int, int]:
    """[start, end) of the memory behind a tensor (its whole storage) or a frame."""
    if isinstance(thing, torch.Tensor):
        storage = thing.untyped_storage()
        return storage.data_ptr(), storage.data_ptr() + storage.nbytes()
    array = np.frombuffer(thing, dtype=np.uint8)
    return array.ctypes.data, array.ctypes.data + array.nbytes


def overlap(a, b) -> bool:
    (a0, a1), (b0, b1) = memory_range(a), memory_range(b)
    return a0 < b1 and b0 < a1


def send_through_wire(tensors, staging: Staging, sender="p1"):
    """Stage, encode, 'receive' (writable copies of the frames, as a socket hands them over), decode."""
    frames = received(wire.encode(kind="params", sender=sender, run_id="run", round=0, fingerprint="f" * 16,
                                  tensors=staging.to_host(tensors)))
    message = wire.decode(frames, contract_for(tensors, senders=(sender,)))
    return frames, message


def inputs_of(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {
        "matrix": tensor_of(dtype, (3, 4), seed=1),
        "scalar": tensor_of(dtype, (), seed=2),
        "empty": tensor_of(dtype, (0,)),
        "empty2d": tensor_of(dtype, (2, 0)),
        # Views whose elements are not laid out in order: a transpose and a strided slice.
        "transposed": tensor_of(dtype, (5, 3), seed=3).t(),
        "strided": tensor_of(dtype, (4, 6), seed=4)[:, ::2],
    }


@pytest.mark.parametrize("dtype", list(wire.DTYPES))
def test_every_dtype_round_trips_bit_exactly_through_staging(dtype):
    tensors = inputs_of(wire.DTYPES[dtype])
    assert not tensors["transposed"].is_contiguous() and not tensors["strided"].is_contiguous()
    staging = Staging("cpu", always=True)
    assert staging.active and staging.copy_on_send
    frames, message = send_through_wire(tensors, staging)
    back = staging.to_device(message.tensors)

    assert list(back) == list(tensors)
    for name, original in tensors.items():
        got = back[name]
        assert got.device == staging.device
        assert got.dtype == original.dtype and got.shape == original.shape
        # Bytes, so NaN payloads and negative zeros count too.
        assert raw_bytes(got) == raw_bytes(original), name
        if got.numel():
            assert not overlap(got, original)
            assert not any(overlap(got, frame) for frame in frames)
            assert not overlap(got, message.tensors[name])


def test_to_host_copies_into_host_buffers_the_wire_frames_without_copying():
    staging = Staging("cpu", always=True)
    tensors = {"w": torch.arange(1000, dtype=torch.float32), "v": torch.arange(12.0).reshape(3, 4).t()}
    staged = staging.to_host(tensors)
    for name in tensors:
        assert staged[name].device.type == "cpu" and staged[name].is_contiguous()
        assert torch.equal(staged[name], tensors[name])
        assert not overlap(staged[name], tensors[name])
    frames = wire.encode(kind="params", sender="p1", run_id="run", round=0, fingerprint="f", tensors=staged)
    assert memory_range(frames[1])[0] == staged["w"].data_ptr()
    assert memory_range(frames[2])[0] == staged["v"].data_ptr()


def test_to_host_reuses_its_buffers_and_holds_the_latest_values():
    staging = Staging("cpu", always=True)
    first = staging.to_host({"w": torch.zeros(64), "b": torch.zeros(3, dtype=torch.int64)})
    pointers = {name: t.data_ptr() for name, t in first.items()}
    second = staging.to_host({"w": torch.arange(64.0), "b": torch.tensor([7, 8, 9])})
    assert {name: t.data_ptr() for name, t in second.items()} == pointers
    assert torch.equal(second["w"], torch.arange(64.0))
    assert second["b"].tolist() == [7, 8, 9]
    # The first call's result is the same buffer: it now reads the new values.
    assert first["w"][5].item() == 5.0


def test_to_host_reallocates_a_buffer_whose_shape_or_dtype_changed():
    staging = Staging("cpu", always=True)
    staging.to_host({"w": torch.zeros(4)})
    reshaped = staging.to_host({"w": torch.arange(6.0).reshape(2, 3)})["w"]
    assert reshaped.shape == (2, 3) and reshaped.sum().item() == 15.0
    retyped = staging.to_host({"w": torch.tensor([[1, 2, 3], [4, 5, 6]], dtype=torch.int16)})["w"]
    assert retyped.dtype == torch.int16 and retyped.sum().item() == 21
    assert staging.to_host({"w": torch.full((2, 3), 2, dtype=torch.int16)})["w"].data_ptr() == retyped.data_ptr()


def test_on_the_cpu_staging_is_inactive_and_copies_nothing():
    staging = Staging("cpu")
    assert not staging.active and not staging.copy_on_send
    tensors = {"w": torch.randn(100, requires_grad=True), "b": torch.arange(10)}
    host = staging.to_host(tensors)
    for name, tensor in tensors.items():
        assert host[name].data_ptr() == tensor.data_ptr()
        assert not host[name].requires_grad
    frames, message = send_through_wire({"w": tensors["w"].detach()}, staging)
    back = staging.to_device(message.tensors)
    assert back["w"] is message.tensors["w"]
    assert back["w"].data_ptr() == memory_range(frames[1])[0]


def test_a_non_cpu_device_is_active_without_being_forced():
    # Constructing one needs no such device: nothing is allocated until tensors come.
    assert Staging("cuda").active and Staging(torch.device("cuda", 1)).copy_on_send
    assert Staging("cpu", always=True).active and not Staging(torch.device("cpu")).active


def test_mixing_staged_neighbours_on_the_models_device_equals_mixing_the_originals():
    staging = Staging("cpu", always=True)
    g = torch.Generator().manual_seed(0)

    def model():
        return {"w": torch.randn(20, 10, generator=g), "b": torch.randn(10, generator=g).double()}

    own, neighbours = model(), {"p1": model(), "p2": model()}
    row = {"p0": 0.5, "p1": 0.3, "p2": 0.2}
    expected = mix("p0", own, neighbours, row)

    arrived = {}
    for peer_id, tensors in neighbours.items():
        _, message = send_through_wire(tensors, staging, sender=peer_id)
        arrived[peer_id] = staging.to_device(message.tensors)
    mixed = mix("p0", own, arrived, row)

    for name in own:
        assert mixed[name].device == own[name].device
        assert torch.equal(mixed[name], expected[name]), name
    # And the numbers themselves: a weighted mean of three known tensors.
    want_b = 0.5 * own["b"] + 0.3 * neighbours["p1"]["b"] + 0.2 * neighbours["p2"]["b"]
    assert torch.allclose(mixed["b"], want_b, rtol=0, atol=1e-12)


def test_a_missing_neighbour_weight_stays_with_the_peer_after_staging():
    staging = Staging("cpu", always=True)
    own = {"w": torch.full((4,), 2.0)}
    _, message = send_through_wire({"w": torch.full((4,), 6.0)}, staging)
    mixed = mix("p0", own, {"p1": staging.to_device(message.tensors)}, {"p0": 0.5, "p1": 0.25, "p2": 0.25})
    assert mixed["w"].tolist() == [3.0] * 4  # 0.75 * 2 + 0.25 * 6


def transport_pair(context) -> tuple[ZmqTransport, ZmqTransport]:
    a_end, b_end = (f"inproc://staging{next(_names)}" for _ in range(2))
    return ZmqTransport(context, a_end, {"b": b_end}), ZmqTransport(context, b_end, {})


# Large enough that pyzmq would not copy it on its own (it copies frames under 64 KiB even with copy=False).
BIG = 1 << 16


async def send_two_rounds(context, copy: bool) -> list[dict[str, torch.Tensor]]:
    """Stage and send round 0, overwrite the staging buffers with round 1, send it; receive both."""
    a, b = transport_pair(context)
    staging = Staging("cpu", always=True)
    rounds = [{"w": torch.full((BIG,), 1.0), "i": torch.arange(BIG, dtype=torch.int32)},
              {"w": torch.full((BIG,), 2.0), "i": -torch.arange(BIG, dtype=torch.int32)}]
    contract = wire.Contract("run", "fp", frozenset({"a"}), wire.specs_of(rounds[0]))
    try:
        for round_, tensors in enumerate(rounds):
            frames = wire.encode(kind="params", sender="a", run_id="run", round=round_, fingerprint="fp",
                                 tensors=staging.to_host(tensors))
            assert a.send("b", frames, copy=copy)
        # Both messages are queued before the receiver reads either.
        got = []
        for _ in rounds:
            message = wire.decode((await b.receive(timeout=10)).frames, contract)
            got.append(staging.to_device(message.tensors) | {"round": message.round})
        return got
    finally:
        a.close()
        b.close()


@pytest.mark.asyncio
async def test_a_staged_message_sent_with_copy_keeps_its_values_when_the_buffer_is_reused(context):
    first, second = await send_two_rounds(context, copy=True)
    assert first["round"] == 0 and second["round"] == 1
    assert torch.equal(first["w"], torch.full((BIG,), 1.0))
    assert torch.equal(first["i"], torch.arange(BIG, dtype=torch.int32))
    assert torch.equal(second["w"], torch.full((BIG,), 2.0))
    assert torch.equal(second["i"], -torch.arange(BIG, dtype=torch.int32))


@pytest.mark.asyncio
async def test_without_copy_the_reused_buffer_would_leak_the_next_round_into_a_queued_message(context):
    # Why staged messages need copy=True: inproc hands the receiver the sender's
    # memory, so round 0 arrives carrying round 1's values.
    first, _ = await send_two_rounds(context, copy=False)
    assert first["round"] == 0
    assert torch.equal(first["w"], torch.full((BIG,), 2.0))


def test_encode_refuses_a_tensor_off_the_cpu_and_names_the_fix():
    tensors = {"x": torch.empty(3, device="meta")}
    with pytest.raises(TypeError, match=r"tensor 'x' is on meta; .*host memory.*Staging\.to_host"):
        wire.encode(kind="params", sender="p1", run_id="run", round=0, fingerprint="f", tensors=tensors)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present: gpu_check.py runs for real, not skipped")
def test_gpu_check_skips_cleanly_without_cuda():
    # -X importtime lists every module imported: the skip must come before p2ptrain's and ZeroMQ's.
    result = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "scripts" / "gpu_check.py")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "gpu_check: skipped: no CUDA device here; this script checks the GPU path on a machine that has one"]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in imported
    assert not {name for name in imported if name.split(".")[0] in ("p2ptrain", "zmq")}
