"""Which frames, and at what size: :class:`FrameRange` (a slice of decoded frame indices, as
``--frames START:STOP:STEP`` gives it), ``--size``'s ``WxH`` and the working size frames are processed at.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..config import option_label
from ..errors import ConfigError


@dataclass(frozen=True)
class FrameRange:
    """Which source frames to use: a Python-style slice of decoded frame indices."""

    start: int = 0
    stop: int | None = None  # exclusive
    step: int = 1
    max_frames: int | None = None

    def __post_init__(self) -> None:
        where = option_label("frames")
        if self.start < 0:
            raise ConfigError(f"{where}: start must be 0 or more, got {self.start}")
        if self.stop is not None and self.stop < 0:
            raise ConfigError(
                f"{where}: stop must be 0 or more, got {self.stop}; counting from the end is not supported"
            )
        if self.stop is not None and self.stop <= self.start:
            raise ConfigError(f"{where}: {self} selects no frames; stop must be greater than start")
        if self.step < 1:
            raise ConfigError(f"{where}: step must be 1 or more, got {self.step}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"{option_label('max_frames')}: must be 1 or more, got {self.max_frames}")

    @classmethod
    def parse(cls, text: str | None, max_frames: int | None = None) -> FrameRange:
        """Parse ``START:STOP:STEP`` where every part is optional (``10:``, ``:50``, ``::2``)."""
        if text is None or not text.strip():
            return cls(max_frames=max_frames)
        parts = text.strip().split(":")
        if len(parts) not in (2, 3):
            raise ConfigError(f"{option_label('frames')}: expected START:STOP:STEP such as 0:100:2, got {text!r}")
        try:
            numbers = [int(part) if part.strip() else None for part in parts]
        except ValueError:
            raise ConfigError(f"{option_label('frames')}: expected whole numbers as in 0:100:2, got {text!r}") from None
        start, stop = numbers[0], numbers[1]
        step = numbers[2] if len(numbers) == 3 else None
        return cls(
            start=0 if start is None else start,
            stop=stop,
            step=1 if step is None else step,
            max_frames=max_frames,
        )

    def indices(self, total: int) -> range:
        """The selected indices among ``total`` frames, at most ``max_frames`` of them."""
        stop = total if self.stop is None else min(self.stop, total)
        selected = range(min(self.start, total), max(stop, 0), self.step)
        return selected if self.max_frames is None else selected[: self.max_frames]

    def __str__(self) -> str:
        stop = "" if self.stop is None else str(self.stop)
        return f"{self.start}:{stop}:{self.step}"


def parse_size(text: str, option: str | None = None) -> tuple[int, int]:
    """Parse ``WxH`` (``512x320``) into ``(width, height)``; errors name ``option`` (``size``'s
    flag or keyword by default)."""
    option = option or option_label("size")
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text or "")
    if match is None:
        raise ConfigError(f"{option}: expected WIDTHxHEIGHT such as 512x512, got {text!r}")
    width, height = int(match.group(1)), int(match.group(2))
    if width < 1 or height < 1:
        raise ConfigError(f"{option}: width and height must be positive, got {text!r}")
    return width, height


def working_size(
    width: int,
    height: int,
    size: tuple[int, int] | None = None,
    *,
    short_side: int = 512,
    multiple: int = 8,
    keep_if_aligned: bool = False,
) -> tuple[int, int]:
    """The size frames are processed at: ``size``, or the source scaled to a ``short_side``.

    The latent grid is 1/8 of the image, so each side must be a multiple of 8.
    """
    if size is not None:
        w, h = size
        if w < 1 or h < 1 or w % multiple or h % multiple:
            raise ConfigError(
                f"{option_label('size')}: {w}x{h} is not allowed; "
                f"width and height must be positive multiples of {multiple}"
            )
        return int(w), int(h)
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if keep_if_aligned and width % multiple == 0 and height % multiple == 0:
        return width, height
    scale = short_side / min(width, height)

    def nearest_multiple(side: float) -> int:
        return max(multiple, math.floor(side / multiple + 0.5) * multiple)

    return nearest_multiple(width * scale), nearest_multiple(height * scale)
