"""Quality figures: PSNR, and temporal consistency as warp error along the source clip's flow.

Warp error (Lai et al., "Learning Blind Video Temporal Consistency", ECCV 2018): flow is computed
on the *source* frames, since an edit should keep the source's motion. For each pair (t, t+1),
edited frame t+1 is warped back onto frame t along the forward flow t → t+1, pixels that are
occluded or on motion boundaries are left out (:func:`vedit.quality.flow.unreliable`), and

    E(t) = Σ_kept Σ_rgb (warped(t+1) − frame(t))² / (number of kept pixels)

with RGB in [0, 1]: squared differences summed over the three channels, averaged over the kept
pixels, as the paper's equation has it. The clip's figure is the mean of E over its pairs,
reported ×10⁻³ (:data:`WARP_ERROR_UNIT`). The authors' released script reads its occlusion mask
as a three-channel image and so divides by 3 × the kept pixels: its figures are one third of these.

A pair with no pixel kept has no error (NaN) and is left out of the mean, and counted. So is a
pair whose two source frames are one decoded frame shown twice (a constant-rate reading repeats
frames where a clip's timestamps leave a gap): its flow is zero and the source's error exactly 0
whatever the footage, which would only pull the mean down.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .flow import FlowBackend, PairFlow, pair_flows, warp

WARP_ERROR_UNIT = 1e-3  # reported figures are multiples of this


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between uint8 images or videos of the same shape."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _unit(frame: np.ndarray) -> np.ndarray:
    """uint8 → float64 in [0, 1]; anything else is taken as already scaled (latents, say)."""
    frame = np.asarray(frame)
    return frame.astype(np.float64) / 255.0 if frame.dtype == np.uint8 else frame.astype(np.float64)


def pair_warp_error(first: np.ndarray, second: np.ndarray, forward: np.ndarray, excluded: np.ndarray) -> float:
    """E for one pair (not scaled): ``second`` warped along ``forward`` against ``first``, over the
    pixels not ``excluded``. Frames are (H, W, C), uint8 (scaled to [0, 1]) or float as they are."""
    kept = ~np.asarray(excluded, dtype=bool)
    count = int(kept.sum())
    if count == 0:
        return math.nan
    difference = warp(_unit(second), forward) - _unit(first)
    if difference.ndim == 2:
        difference = difference[..., None]
    return float((difference**2).sum(axis=-1)[kept].sum() / count)


@dataclass
class WarpError:
    """Per-pair errors of one clip (not scaled) and their mean ×10⁻³."""

    pairs: list[float] = field(default_factory=list)
    repeated: int = 0  # pairs of a repeated source frame, not measured

    def add(self, value: float) -> None:
        self.pairs.append(value)

    def add_repeated(self) -> None:
        """A pair whose source frames are one frame shown twice: it has no error (NaN)."""
        self.pairs.append(math.nan)
        self.repeated += 1

    @property
    def skipped(self) -> int:
        """Pairs left out of the mean: with no pixel kept, or of a repeated source frame."""
        return sum(1 for v in self.pairs if math.isnan(v))

    @property
    def measured(self) -> int:
        """Pairs in the mean."""
        return len(self.pairs) - self.skipped

    @property
    def value(self) -> float:
        """The clip's warp error ×10⁻³ (NaN when no pair was measured)."""
        kept = [v for v in self.pairs if not math.isnan(v)]
        return float(np.mean(kept)) / WARP_ERROR_UNIT if kept else math.nan

    @property
    def scaled_pairs(self) -> list[float]:
        return [v / WARP_ERROR_UNIT for v in self.pairs]


def warp_errors(
    source: Iterable[np.ndarray],
    clips: Iterable[Iterable[np.ndarray]] | None = None,
    *,
    backend: FlowBackend,
    batch_size: int = 8,
    repeated_pairs: Collection[int] = (),
) -> tuple[WarpError, list[WarpError]]:
    """Warp error of the source along its own flow (the floor) and of each of ``clips`` (edits of
    it, frame for frame) along that same flow; everything streamed, one flow per source pair.

    Frames are (H, W, 3) uint8 at the source's size. A clip that ends before or after the source
    is an error. ``repeated_pairs`` are the pairs (t, t + 1) whose two source frames are one
    frame shown twice (:attr:`vedit.io.timing.Resampling.repeated_pairs`): they are not measured.
    """
    iterators: list[Iterator[np.ndarray]] = [iter(clip) for clip in (clips or [])]
    floor = WarpError()
    results = [WarpError() for _ in iterators]
    previous: list[np.ndarray | None] = [None] * len(iterators)
    pair: PairFlow | None = None
    repeats = frozenset(repeated_pairs)
    for pair in pair_flows(source, backend, batch_size):
        repeated = pair.index in repeats
        _add_pair(floor, repeated, pair.first, pair.second, pair)
        for k, frames in enumerate(iterators):
            first = previous[k] if previous[k] is not None else _next(frames, k, pair.index)
            second = _next(frames, k, pair.index + 1)
            if first.shape != pair.first.shape:
                raise ValueError(f"clip {k} frame {pair.index} is {first.shape}, the source's {pair.first.shape}")
            _add_pair(results[k], repeated, first, second, pair)
            previous[k] = second
    for k, frames in enumerate(iterators):
        if next(frames, None) is not None:
            count = 0 if pair is None else pair.index + 2
            raise ValueError(f"clip {k} has more frames than the source's {count}")
    return floor, results


def _add_pair(error: WarpError, repeated: bool, first: np.ndarray, second: np.ndarray, pair: PairFlow) -> None:
    if repeated:
        error.add_repeated()
    else:
        error.add(pair_warp_error(first, second, pair.forward, pair.excluded))


def _next(frames: Iterator[np.ndarray], k: int, index: int) -> np.ndarray:
    frame = next(frames, None)
    if frame is None:
        raise ValueError(f"clip {k} ends at frame {index}, before the source does")
    return np.asarray(frame)


def warp_error(frames: np.ndarray, backend: FlowBackend, source: np.ndarray | None = None) -> float:
    """Warp error ×10⁻³ of ``frames`` (N, H, W, 3) along the flow of ``source`` (default: ``frames``
    themselves). For arrays already in memory; :func:`warp_errors` streams."""
    if source is None:
        return warp_errors(frames, backend=backend)[0].value
    return warp_errors(source, [frames], backend=backend)[1][0].value


__all__ = ["WARP_ERROR_UNIT", "WarpError", "pair_warp_error", "psnr", "warp_error", "warp_errors"]
