"""Post-processors ``deflicker-luma`` and ``deflicker-flow``: streaming filters (see
:mod:`vedit.quality.postprocess`) that take frame-to-frame flicker out of an edited clip.

``deflicker-luma`` (what ffmpeg's ``deflicker`` filter does, with a median): every frame's BT.601
luma mean μ and standard deviation σ are matched to the medians μ*, σ* of those figures over a
centred window of ``window`` frames (cut to the frames that exist at the clip's ends). With the gain
g = σ*/σ, clamped to [1/max-gain, max-gain], the new luma is Y' = (Y − μ)·g + μ*; Y' − Y is added to
R, G and B alike, which changes luma by exactly that and leaves the colour differences alone. A
frame can go out once the ``window // 2`` frames after it have come in: that many are held back.

``deflicker-flow``: out₀ = edit₀; for t ≥ 1 the previous *output* is warped onto frame t's grid
along the source clip's backward flow t → t−1, and where that warp can be trusted (the
forward-backward check of :func:`vedit.quality.flow.unreliable`, seen from frame t)
out_t = (1 − strength)·edit_t + strength·warped; elsewhere out_t = edit_t. The flow is the source's,
since an edit keeps the source's motion; it is computed as the frames come, a few pairs at a time,
and only the previous output frame is kept.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np

import vedit
from vedit.plugins.hookspecs import hookimpl
from vedit.quality.flow import PairFlow, flow_backend, pair_flows, unreliable, warp
from vedit.quality.postprocess import Context

LUMA = np.array([0.299, 0.587, 0.114])  # BT.601
_FLAT = 1e-6  # a luma σ below this is a flat frame: no gain is applied to it


def _empty_like(frames: np.ndarray) -> np.ndarray:
    return np.asarray(frames)[:0]


def match_luma(
    frame: np.ndarray, mean: float, std: float, target_mean: float, target_std: float, max_gain: float
) -> np.ndarray:
    """``frame`` (H, W, 3) uint8 with its luma mean and spread moved from (mean, std) to the targets."""
    gain = target_std / std if std > _FLAT else 1.0
    gain = min(max(gain, 1.0 / max_gain), max_gain)
    rgb = frame.astype(np.float64)
    luma = rgb @ LUMA
    change = (luma - mean) * (gain - 1.0) + (target_mean - mean)
    return np.clip(np.rint(rgb + change[..., None]), 0, 255).astype(np.uint8)


def luma_stats(frame: np.ndarray) -> tuple[float, float]:
    luma = frame.astype(np.float64) @ LUMA
    return float(luma.mean()), float(luma.std())


class LumaDeflicker:
    """The ``deflicker-luma`` filter: holds back ``window // 2`` frames; keeps the luma figures of
    the ``window // 2`` frames before the next one out."""

    def __init__(self, window: int = 5, max_gain: float = 2.0):
        self.radius = window // 2
        self.max_gain = max_gain
        self._pending: deque[np.ndarray] = deque()  # frames next_out, next_out + 1, ...
        self._means: list[float] = []  # luma figures of frames base, base + 1, ..., received - 1
        self._stds: list[float] = []
        self._base = 0
        self._next = 0  # index of the next frame to go out
        self.received = 0
        self.most_held = 0  # the most frames held back between calls

    @property
    def held(self) -> int:
        return len(self._pending)

    def _emit(self, last: int) -> np.ndarray:
        """Frame ``self._next`` corrected, its window cut at ``last`` (the last frame known)."""
        t = self._next
        low, high = max(0, t - self.radius), min(last, t + self.radius)
        means = self._means[low - self._base : high - self._base + 1]
        stds = self._stds[low - self._base : high - self._base + 1]
        frame = self._pending.popleft()
        out = match_luma(
            frame, self._means[t - self._base], self._stds[t - self._base], float(np.median(means)),
            float(np.median(stds)), self.max_gain,
        )  # fmt: skip
        self._next += 1
        drop = max(0, self._next - self.radius) - self._base  # figures no window needs any more
        if drop > 0:
            del self._means[:drop], self._stds[:drop]
            self._base += drop
        return out

    def push(self, frames: np.ndarray, start: int) -> np.ndarray:
        out = []
        for frame in frames:
            mean, std = luma_stats(frame)
            self._pending.append(frame.copy())  # not a view that keeps the whole batch alive
            self._means.append(mean)
            self._stds.append(std)
            self.received += 1
            while self._next + self.radius <= self.received - 1:  # its whole window is in
                out.append(self._emit(self.received - 1))
        self.most_held = max(self.most_held, self.held)
        return np.stack(out) if out else _empty_like(frames)

    def finish(self) -> np.ndarray:
        out = [self._emit(self.received - 1) for _ in range(len(self._pending))]
        return np.stack(out) if out else np.zeros((0, 0, 0, 3), dtype=np.uint8)


class FlowDeflicker:
    """The ``deflicker-flow`` filter: returns every frame as soon as it is pushed; keeps the
    previous output frame and the source's flow iterator."""

    def __init__(self, context: Context, strength: float = 0.5, backend: Any = None):
        self.context = context
        self.strength = strength
        self.backend = backend
        self.previous: np.ndarray | None = None
        self._pairs: Iterator[PairFlow] | None = None
        self.received = 0

    def _pair(self, index: int) -> PairFlow:
        if self._pairs is None:
            self._pairs = pair_flows(self.context.source_frames(), self.backend)
        pair = next(self._pairs, None)
        if pair is None:
            raise ValueError(f"deflicker-flow: the source clip ended before frame {index + 1}")
        if pair.index != index:
            raise ValueError(f"deflicker-flow: got the source's flow of pair {pair.index}, expected pair {index}")
        return pair

    def _one(self, frame: np.ndarray, t: int) -> np.ndarray:
        if self.previous is None or self.strength == 0:
            return frame
        pair = self._pair(t - 1)
        if pair.second.shape != frame.shape:
            raise ValueError(
                f"deflicker-flow: source frames are {pair.second.shape[1]}x{pair.second.shape[0]}, "
                f"the edited ones {frame.shape[1]}x{frame.shape[0]}"
            )
        warped = warp(self.previous, pair.backward)  # the previous output on frame t's grid
        trusted = ~unreliable(pair.backward, pair.forward)
        blended = (1.0 - self.strength) * frame.astype(np.float64) + self.strength * warped
        blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        return np.where(trusted[..., None], blended, frame)

    def push(self, frames: np.ndarray, start: int) -> np.ndarray:
        out = np.empty_like(frames)
        for i, frame in enumerate(frames):
            out[i] = self._one(frame, self.received)
            self.previous = out[i].copy()
            self.received += 1
        return out

    def finish(self) -> np.ndarray:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)

    def close(self) -> None:
        if self._pairs is not None:
            close = getattr(self._pairs, "close", None)
            if close is not None:
                close()
            self._pairs = None


class DeflickerLuma:
    name = "deflicker-luma"
    description = "match each frame's brightness and contrast to the moving median of its neighbours (window, max-gain)"

    class Options(vedit.Options):
        window: int = vedit.option(5, help="Frames in the moving median: odd, 3 or more.")
        max_gain: float = vedit.option(2.0, help="Largest factor a frame's brightness is scaled by.", min=1.0)

    def check(self, settings: dict[str, Any], context: Context) -> None:
        window = settings["window"]
        if window % 2 == 0:
            raise ValueError(f"window must be an odd number of frames, 3 or more, got {window}")

    def open(self, context: Context, *, window: int, max_gain: float) -> LumaDeflicker:
        return LumaDeflicker(window, max_gain)


class DeflickerFlow:
    name = "deflicker-flow"
    description = "blend the previous output, warped along the source's flow, into each frame (strength, flow)"

    class Options(vedit.Options):
        strength: float = vedit.option(0.5, help="Weight of the warped previous output.", min=0.0, max=1.0)
        flow: str = vedit.option("", help="Optical-flow backend (empty: the run's --flow).")

    def check(self, settings: dict[str, Any], context: Context) -> None:
        flow_backend(settings["flow"] or context.flow, context.config)  # an unknown or unusable backend: one line now

    def open(self, context: Context, *, strength: float, flow: str) -> FlowDeflicker:
        backend = flow_backend(flow or context.flow, context.config) if strength > 0 else None
        return FlowDeflicker(context, strength, backend)


@hookimpl
def register_postprocessors(register):
    register(DeflickerLuma())
    register(DeflickerFlow())
