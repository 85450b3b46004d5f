"""When a clip's frames are shown, worked out from its packets' timestamps without decoding: the
timeline of its video packets, the slots that reading at the stream's constant average rate fills, and
:func:`resampling`, which says what that reading drops and repeats.

What an output does to the frames' timing (GIF's whole hundredths of a second) depends on its format, so
:func:`vedit.io.writer.frame_timing` says it, beside the formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from .frames import FrameRange
from .probe import VideoInfo, first_real_video_stream, round_half_up


@dataclass(frozen=True)
class Timeline:
    """When a file's video frames are shown, from its packets' timestamps (nothing decoded).

    Times are in ``time_base`` units on the clock of an ffmpeg that reads the video stream
    alone, so they line up with the timestamps it gives the frames it decodes.
    """

    ticks: list[int]  # presentation times of the frames, ascending
    end: int  # when the last frame stops being shown
    time_base: Fraction
    shift: int  # where ffmpeg's clock starts, in the file's own timestamps
    discarded: int = 0  # packets before an edit list's start: in the container's count, never shown

    def seconds(self, tick: int) -> Fraction:
        return tick * self.time_base


_AVFMT_TS_DISCONT = 0x0200  # libavformat's flag for formats with timestamp discontinuities


def read_timeline(path: Path, fps: Fraction, *, limit: int | None = None) -> Timeline | None:
    """The video frames' times, or ``None`` when the packets carry none (raw H.264, say).

    ``limit`` stops after that many frames, for when only the first one matters.
    """
    import av
    from av.error import FFmpegError

    try:
        container = av.open(str(path))
    except (FFmpegError, OSError, ValueError, UnicodeDecodeError):
        return None
    with container:
        stream = first_real_video_stream(container)
        if stream is None or not stream.time_base:
            return None
        time_base = Fraction(stream.time_base.numerator, stream.time_base.denominator)
        per_frame = 1 / (fps * time_base)  # a frame's length in ticks, for packets that lack one
        frame_ticks = max(1, round_half_up(per_frame.numerator, per_frame.denominator))
        ticks: list[int] = []
        end: int | None = None
        discarded = 0
        try:
            for packet in container.demux(stream):
                # Empty packets are "show the previous frame again" markers (AVI drop frames)
                # and decode to nothing; discarded ones lie before an edit list's start.
                if not packet.size:
                    continue
                if packet.is_discard:
                    discarded += 1
                    continue
                tick = packet.pts if packet.pts is not None else packet.dts
                if tick is None:
                    return None
                ticks.append(tick)
                stop = tick + (packet.duration or frame_ticks)
                end = stop if end is None else max(end, stop)
                if limit is not None and len(ticks) >= limit:
                    break
        except FFmpegError:
            pass  # a damaged tail: the reader reports it; time the frames before it
        if not ticks or end is None:
            return None
        # ffmpeg moves every input timestamp back by the container's start time, or, for
        # formats whose timestamps may jump (MPEG-TS and -PS), by the earliest start of the
        # streams it reads: the video's alone when reading frames.
        if container.format.flags & _AVFMT_TS_DISCONT and stream.start_time is not None:
            shift = int(stream.start_time)
        else:
            start = container.start_time or 0
            shift = round_half_up(start * time_base.denominator, av.time_base * time_base.numerator)
        ticks.sort()
        return Timeline(
            ticks=[tick - shift for tick in ticks],
            end=end - shift,
            time_base=time_base,
            shift=shift,
            discarded=discarded,
        )


def constant_rate_slots(timeline: Timeline, fps: Fraction) -> np.ndarray:
    """For each frame read at the constant rate ``fps``, the index of the source frame it shows.

    This is what ffmpeg's ``fps`` filter does: frame times are rounded to the nearest slot of
    the output rate, a slot shows the last frame rounded to it or before it, and slots run from
    the first frame's slot up to where the last frame ends.
    """
    scale_num = timeline.time_base.numerator * fps.numerator
    scale_den = timeline.time_base.denominator * fps.denominator
    slots = np.array([round_half_up(tick * scale_num, scale_den) for tick in timeline.ticks], np.int64)
    end = round_half_up(timeline.end * scale_num, scale_den)
    wanted = np.arange(slots[0], max(end, slots[0]), dtype=np.int64)
    return np.searchsorted(slots, wanted, side="right") - 1


@dataclass(frozen=True)
class Resampling:
    """What reading at the stream's constant rate does to a clip's own frames."""

    dropped: int  # source frames inside the selection that no frame read shows
    repeated: int  # frames read that show the same source frame as the frame read before them
    variable: bool  # whether the source's frames are unevenly spaced in time
    # For each selected frame the constant rate gives, the decoded frame it shows; empty when the
    # packets carry no times. repeated_pairs: each t whose frames t and t + 1 show the same one.
    shown: tuple[int, ...] = field(default=(), compare=False)
    repeated_pairs: tuple[int, ...] = field(default=(), compare=False)

    def summary(self, fps: Fraction) -> str:
        """One line for notes and warnings: the rate read at and what it dropped and repeated."""
        kind = "variable-rate source" if self.variable else "source"
        return f"{kind} resampled to its average {fps} fps: {self.dropped} frames dropped, {self.repeated} repeated"


def resampling(info: VideoInfo, frames: FrameRange = FrameRange()) -> Resampling:
    """How many source frames the constant-rate reading of ``frames`` drops and repeats.

    Worked out from the packets' timestamps, without decoding. ``repeated`` compares each
    selected frame with the selected frame before it, so a stride's own skipping is not
    counted as dropping; ``dropped`` counts source frames between the first and the last
    selected frame that the constant rate never shows at all. ``shown`` maps the frames read to
    the decoded ones, so a caller can tell a frame from its repeat without decoding either.
    """
    timeline = None if info.is_image_sequence else read_timeline(info.path, info.fps)
    if timeline is None:
        return Resampling(dropped=0, repeated=0, variable=False)
    gaps = np.diff(np.array(timeline.ticks, np.int64))
    if len(gaps):
        typical = float(np.median(gaps))
        # Timestamps rounded to the time base wobble by a tick (33 and 34 ms at 30 fps in mkv).
        variable = bool(np.abs(gaps - typical).max() > max(2.0, 0.02 * typical))
    else:
        variable = False
    shown = constant_rate_slots(timeline, info.fps)
    selected = [index for index in frames.indices(info.num_frames) if index < len(shown)]
    if not selected:
        return Resampling(dropped=0, repeated=0, variable=variable)
    picked = shown[selected]
    repeats = np.flatnonzero(picked[1:] == picked[:-1])
    span = shown[selected[0] : selected[-1] + 1]
    dropped = int(span[-1] - span[0] + 1 - len(np.unique(span)))
    return Resampling(
        dropped=dropped, repeated=len(repeats), variable=variable, shown=tuple(picked.tolist()),
        repeated_pairs=tuple(repeats.tolist()),
    )  # fmt: skip
