"""Copies between host and device that do not make the host wait for the device.

A copy from ordinary (pageable) host memory to a CUDA device, and any copy back, blocks the
Python thread until everything queued before it has run, so one such copy per chunk per step
leaves the GPU idle while Python prepares the next call. Host tensors are pinned here and copied
with ``non_blocking``; PyTorch keeps a pinned block alive until the copy that reads it is done.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``tensor`` on ``device`` (in ``dtype``) without waiting for the device's queue."""
    device = torch.device(device)
    if tensor.device == device or (tensor.device.type == device.type and device.index is None):
        return tensor if dtype is None else tensor.to(dtype)
    if tensor.device.type == "cpu" and device.type == "cuda":
        if dtype is not None and dtype.itemsize < tensor.dtype.itemsize:
            tensor = tensor.to(dtype)  # cast where it is smaller to send
        if not tensor.is_pinned():
            tensor = tensor.pin_memory()
        moved = tensor.to(device, non_blocking=True)
        return moved if dtype is None else moved.to(dtype)
    return tensor.to(device=device, dtype=dtype)


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A host copy of ``tensor`` that later device work cannot change; from a CUDA device the
    copy is queued (into pinned memory) and is complete once :func:`wait` has returned."""
    if tensor.device.type == "cuda":
        return tensor.to("cpu", non_blocking=True)
    return tensor.detach().to("cpu").clone()


def wait(device: torch.device | str) -> None:
    """Block until the copies queued by :func:`to_host` on ``device`` have landed."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


__all__ = ["to_device", "to_host", "wait"]
