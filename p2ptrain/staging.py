"""Moving a peer's tensors between its model's device and the host memory the wire carries.

The wire sees host memory only: ``wire.encode`` frames CPU tensors without
copying them and ``wire.decode`` builds CPU tensors on the received frames.
A model on a GPU therefore has its parameters copied to the host before
they are sent, and the neighbours' parameters copied to the device before
they are mixed. ``Staging`` does both, and nothing at all for a model on the
CPU, whose tensors go on the wire as they are.

The host copies go into buffers kept per tensor name and reused every round:
allocating (and, with CUDA, pinning) a model's worth of host memory each
round would cost more than the copy itself. Reuse has a price: the buffer is
overwritten next round while this round's message may still sit in a
ZeroMQ send queue (a slow neighbour, a full pipe). A zero-copy send would
then deliver next round's values under this round's header, so staged
messages are sent with ZeroMQ copying the bytes (``copy_on_send``).
"""

from __future__ import annotations

from typing import Mapping

import torch


class Staging:
    """Host buffers for one peer's outgoing tensors, and the way back to its device.

    ``always`` takes the staging path on a CPU device too, so that the
    copies, the buffer reuse and the copying send can be tested without a GPU.
    """

    def __init__(self, device: torch.device | str, always: bool = False):
        self.device = torch.device(device)
        self.always = always
        self._buffers: dict[str, torch.Tensor] = {}

    @property
    def active(self) -> bool:
        return self.device.type != "cpu" or self.always

    @property
    def copy_on_send(self) -> bool:
        """Whether ZeroMQ must copy the frames: staged frames point into buffers reused next round."""
        return self.active

    def to_host(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``tensors`` in host memory, ready for ``wire.encode``.

        When staging, the result is this object's buffers: valid until the
        next call, which overwrites them.
        """
        if not self.active:
            return {name: tensor.detach() for name, tensor in tensors.items()}
        staged = {}
        for name, tensor in tensors.items():
            buffer = self._buffer(name, tensor)
            # Asynchronous device-to-host copies (truly so into pinned memory),
            # all in flight together; one synchronization below waits for them.
            buffer.copy_(tensor.detach(), non_blocking=True)
            staged[name] = buffer
        _synchronize(self.device)
        return staged

    def to_device(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Received (host) tensors on this peer's device, for mixing with its own."""
        if not self.active:
            return dict(tensors)
        # A real copy even where the device is the CPU, so what comes back never
        # aliases ZeroMQ's frames, whatever the device.
        return {name: tensor.to(self.device, copy=True) for name, tensor in tensors.items()}

    def _buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != like.shape or buffer.dtype != like.dtype:
            # Pinned (page-locked) memory lets CUDA copy into it asynchronously, by DMA;
            # without CUDA there is nothing to pin for.
            buffer = torch.empty(like.shape, dtype=like.dtype, pin_memory=torch.cuda.is_available())
            self._buffers[name] = buffer
        return buffer


def _synchronize(device: torch.device) -> None:
    """Wait until the copies queued on ``device`` are done, so the host buffers hold their values."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu":
        # Other accelerators (mps, xpu) queue copies the same way, and their modules name the wait alike.
        backend = getattr(torch, device.type, None)
        if hasattr(backend, "synchronize"):
            backend.synchronize()
