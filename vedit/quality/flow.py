"""Optical flow between consecutive frames: the backend protocol, streamed flows of a clip, the
bilinear warp and the check that says where a flow can be trusted.

A flow backend is a plugin (``register_flow_backends``) with a ``name`` and

    flow(first, second) -> flows

taking two ``(n, H, W, 3)`` uint8 RGB stacks and returning ``(n, H, W, 2)`` float32: for every
pixel ``(x, y)`` of ``first[i]``, the displacement ``(dx, dy)`` in pixels to where that point is in
``second[i]``. Built in: ``dis`` (OpenCV's dense inverse search, no weights) and ``raft``
(torchvision's RAFT, when torchvision and its weights are on this machine).

Which pixels count (Ruder et al., GCPR 2016, as Lai et al., ECCV 2018 use it for warp error): a
pixel of frame t is left out when the forward flow and the backward flow sampled where it points
disagree, ``|F + B(x + F)|² > 0.01 (|F|² + |B(x + F)|²) + 0.5``, or when ``x + F`` is outside the
frame (either way it is not visible in frame t+1: occluded), or
when the forward flow changes fast around it, ``|∇F_x|² + |∇F_y|² > 0.01 |F|² + 0.002`` (a motion
boundary). Gradients are forward differences, zero in the last row and column.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

DEFAULT_FLOW = "dis"
FLOW_BATCH = 8  # frame pairs whose flows are computed in one backend call


class FlowBackend(Protocol):
    name: str

    def flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray: ...


def flow_backend(name: str = DEFAULT_FLOW, config: Any = None) -> FlowBackend:
    """The registered flow backend ``name``, with its options from ``config`` (a RunConfig: ``--raft-weights``)
    when there is one; unknown or unusable names are one-line errors."""
    from .. import plugins

    return plugins.get("flow_backend", name, config=config)


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample ``image`` (H, W) or (H, W, C) at ``(x + dx, y + dy)`` for every pixel: bilinear, with
    sample positions clamped to the frame (edge pixels repeat). Returns float64 of image's shape.

    ``warp(frame_t1, forward_flow_t)`` brings frame t+1 onto frame t's grid.
    """
    image = np.asarray(image, dtype=np.float64)
    flat = image.ndim == 2
    if flat:
        image = image[..., None]
    h, w = flow.shape[:2]
    if image.shape[:2] != (h, w):
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} but the flow is {w}x{h}")
    x = np.clip(np.arange(w, dtype=np.float64)[None, :] + flow[..., 0], 0, w - 1)
    y = np.clip(np.arange(h, dtype=np.float64)[:, None] + flow[..., 1], 0, h - 1)
    x0 = np.floor(x).astype(np.intp)
    y0 = np.floor(y).astype(np.intp)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    ax = (x - x0)[..., None]
    ay = (y - y0)[..., None]
    top = image[y0, x0] * (1 - ax) + image[y0, x1] * ax
    bottom = image[y1, x0] * (1 - ax) + image[y1, x1] * ax
    out = top * (1 - ay) + bottom * ay
    return out[..., 0] if flat else out


def _squared_norm(flow: np.ndarray) -> np.ndarray:
    return flow[..., 0] ** 2 + flow[..., 1] ** 2


def unreliable(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Bool (H, W) on the first frame's grid: True where the pixel is occluded in the second frame
    (forward-backward check) or lies on a motion boundary; see the module docstring."""
    forward = np.asarray(forward, dtype=np.float64)
    back = warp(backward, forward)
    occluded = _squared_norm(forward + back) > 0.01 * (_squared_norm(back) + _squared_norm(forward)) + 0.5
    h, w = forward.shape[:2]
    x = np.arange(w)[None, :] + forward[..., 0]
    y = np.arange(h)[:, None] + forward[..., 1]
    occluded |= (x < 0) | (x > w - 1) | (y < 0) | (y > h - 1)  # leaves the frame: not in frame t+1
    du = np.zeros_like(forward)
    dv = np.zeros_like(forward)
    du[:, :-1] = forward[:, :-1] - forward[:, 1:]
    dv[:-1, :] = forward[:-1, :] - forward[1:, :]
    boundary = (du**2 + dv**2).sum(axis=-1) > 0.01 * _squared_norm(forward) + 0.002
    return occluded | boundary


@dataclass
class PairFlow:
    """Frames ``index`` and ``index + 1`` of a clip with the flows between them."""

    index: int
    first: np.ndarray  # (H, W, 3) uint8, frame index
    second: np.ndarray  # frame index + 1
    forward: np.ndarray  # (H, W, 2) float32 on first's grid, to second
    backward: np.ndarray  # (H, W, 2) float32 on second's grid, to first
    _excluded: np.ndarray | None = field(default=None, repr=False)

    @property
    def excluded(self) -> np.ndarray:
        """Pixels of ``first`` that a warp along ``forward`` cannot be trusted at (computed once)."""
        if self._excluded is None:
            self._excluded = unreliable(self.forward, self.backward)
        return self._excluded


def _checked(flows: Any, n: int, shape: tuple[int, int], backend: FlowBackend) -> np.ndarray:
    flows = np.asarray(flows, dtype=np.float32)
    if flows.shape != (n, *shape, 2):
        name = getattr(backend, "name", type(backend).__name__)
        raise ValueError(f"flow backend {name!r} returned shape {flows.shape}, expected {(n, *shape, 2)}")
    return flows


def pair_flows(frames: Iterable[np.ndarray], backend: FlowBackend, batch_size: int = FLOW_BATCH) -> Iterator[PairFlow]:
    """Forward and backward flow of every consecutive pair of ``frames`` ((H, W, 3) uint8 each), in
    order, computed ``batch_size`` pairs per backend call: at most that many pairs are in memory."""
    previous: np.ndarray | None = None
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    start = 0

    def flush() -> Iterator[PairFlow]:
        firsts = np.stack([a for a, _ in pending])
        seconds = np.stack([b for _, b in pending])
        n = len(pending)
        both = _checked(
            backend.flow(np.concatenate([firsts, seconds]), np.concatenate([seconds, firsts])),
            2 * n, firsts.shape[1:3], backend,
        )  # fmt: skip
        for i in range(n):
            yield PairFlow(start + i, firsts[i], seconds[i], both[i], both[n + i])

    for frame in frames:
        frame = np.asarray(frame)
        if previous is not None:
            if frame.shape != previous.shape:
                raise ValueError(
                    f"frame {start + len(pending) + 1} is {frame.shape}, the one before it {previous.shape}"
                )
            pending.append((previous, frame))
            if len(pending) == batch_size:
                yield from flush()
                start += len(pending)
                pending = []
        previous = frame
    if pending:
        yield from flush()


__all__ = ["FlowBackend", "PairFlow", "flow_backend", "pair_flows", "unreliable", "warp", "DEFAULT_FLOW"]
