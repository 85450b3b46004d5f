"""Reading clips and folders of frames as uint8 RGB arrays: :class:`FrameReader`.

Frames are streamed through an ffmpeg subprocess (never the whole clip in memory) and picked
by decoded frame index, so ``--frames 10:50:2`` means exactly those frames whatever the
container's timestamps say. They come upright (rotation tags applied), converted from YUV
with the clip's own colour matrix and range, and at the stream's constant average rate
(:func:`vedit.io.timing.resampling` says what that drops and repeats), or with ``keep_timestamps``
each decoded frame once with its own time. A clip that ends well before the frame count its
container promised is refused as truncated unless the caller allows a short read.
"""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Generator, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import option_label, option_value
from ..errors import ConfigError, InputError
from .ffmpeg import ffmpeg_path, start_ffmpeg, stop_ffmpeg
from .frames import FrameRange, working_size
from .probe import VideoInfo, numbered_images, probe
from .timing import Timeline, constant_rate_slots, read_timeline


def untagged_matrix(width: int, height: int) -> str:
    """The YUV matrix to read a clip whose matrix is not tagged with, as players guess it (mpv,
    VLC): BT.709 for HD sizes (at least 1280 wide or more than 576 high), BT.601 below."""
    return "bt709" if width >= 1280 or height > 576 else "bt601"


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I")  # how Pillow opens 16-bit greyscale PNGs (depth maps)


def _rgb8(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB. A 16-bit greyscale image keeps its top 8 bits: Pillow's own conversion clips every
    value above 255 to white, which would flatten a 16-bit depth map to a few dark steps and then white."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.uint32)
        image = Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8), "L")
    return image.convert("RGB")


class FrameReader:
    """Streams the selected frames of a clip or image folder as uint8 RGB ``(H, W, 3)`` arrays.

    Frames come upright (a phone clip's rotation tag is applied) and, by default, at the
    stream's constant average rate; with ``keep_timestamps`` every decoded frame comes once, as
    stored, and ``timestamps`` says when each is shown.

    ``len(reader)`` is exact for image folders. For files it is what the container promises: its
    frame count, or duration x fps rounded up where it has none. A few frames short of that is
    normal (the duration is an estimate); more means the file is cut short or damaged, and
    iterating raises :class:`InputError` unless ``allow_short`` is set. After an iteration,
    ``frames_read`` is how many frames it yielded and ``short_read`` is ``(read, promised)`` when
    the clip ended that early (``None`` otherwise). Each iteration runs its own ffmpeg, which is
    killed as soon as the last selected frame is read or the loop stops early.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        frames: FrameRange = FrameRange(),
        size: tuple[int, int] | None = None,
        info: VideoInfo | None = None,
        allow_short: bool = False,
        keep_timestamps: bool = False,
    ) -> None:
        self.info = info if info is not None else probe(path)
        self.path = Path(path)
        self.frames = frames
        self.allow_short = allow_short
        self.keep_timestamps = keep_timestamps
        self.frames_read = 0
        self.short_read: tuple[int, int] | None = None
        self._timeline: Timeline | None = None
        total = self.info.num_frames
        if keep_timestamps and not self.info.is_image_sequence:
            # Every decoded frame once: the packets say how many there are and when each shows.
            self._timeline = read_timeline(self.path, self.info.fps)
            if self._timeline is not None:
                total = len(self._timeline.ticks)
        self._total = total
        # What the container promised: its own frame count also covers packets cut off.
        self._promised_total = total
        if self._timeline is not None and self.info.frames_from == "count":
            self._promised_total = max(total, self.info.num_frames)
        self.indices = frames.indices(total)
        if size is None:
            size = working_size(self.info.width, self.info.height, keep_if_aligned=self.info.is_image_sequence)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be (width, height) with positive sides, got {size}")
        self.size = (int(size[0]), int(size[1]))
        if len(self.indices) == 0:
            raise InputError(self._nothing_selected())
        self.timestamps: list[float] = self._planned_timestamps()

    def matching(self, path: str | os.PathLike | None = None, *, info: VideoInfo | None = None) -> FrameReader:
        """A new reader of ``path`` (by default this reader's own clip, read again) that reads it as this one does:
        the same frame selection, size and timing, so that its frame i goes with this reader's frame i."""
        if path is None:
            path, info = self.path, self.info
        return FrameReader(
            path, frames=self.frames, size=self.size, info=info, allow_short=self.allow_short,
            keep_timestamps=self.keep_timestamps,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[np.ndarray]:
        self.frames_read, self.short_read = 0, None
        self.timestamps[:] = self._planned_timestamps()  # in place: callers may hold the list
        if self.info.is_image_sequence:
            return self._read_folder()
        return self._read_file()

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Frames in ``(b, H, W, 3)`` batches; the last one may be shorter."""
        if batch_size < 1:
            raise ConfigError(f"{option_label('batch_size')}: must be 1 or more, got {batch_size}")
        batch: list[np.ndarray] = []
        for frame in self:
            batch.append(frame)
            if len(batch) == batch_size:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)

    def read_all(self) -> np.ndarray:
        """Every selected frame at once, ``(N, H, W, 3)``."""
        return np.stack(list(self))

    def _planned_timestamps(self) -> list[float]:
        """Seconds from the clip's first frame to each selected frame, as far as known up front.

        At the constant rate frame i is at i / fps; with ``keep_timestamps`` the packets' times
        are used, and reading replaces them with the times ffmpeg actually gave the frames.
        """
        if self._timeline is None:
            return [float(index / self.info.fps) for index in self.indices]
        first = self._timeline.ticks[0]
        return [float(self._timeline.seconds(self._timeline.ticks[i] - first)) for i in self.indices]

    def _nothing_selected(self) -> str:
        return (
            f"{self.path}: no frames selected by {option_value('frames', str(self.frames))} "
            f"(the clip has {self._total} frames); choose a range inside the clip"
        )

    def _short_tolerance(self) -> int:
        """Source frames a complete clip may fall short of its promise, measured on real files.

        Frame counts from the container, or duration x fps from the video stream's own
        duration, are at most one frame over what ffmpeg decodes (the duration is rounded up).
        A whole-file duration also covers an audio track that may run past the last frame.
        """
        if self.info.is_image_sequence:
            return 0
        if self.info.frames_from == "container" and self._timeline is None:
            return 2 + math.ceil(self.info.fps)  # a second's worth: not measured, a precaution
        return 2

    def _complete_total(self) -> int:
        """How many frames a complete clip gives, where every packet its container counts is there
        (so a shortfall is not a cut-off end): the ones shown, without those an edit list skips,
        and at the constant rate as many as the clip's time span holds, fewer where its
        timestamps leave gaps. Otherwise the promised count."""
        total = self._promised_total
        if self.info.is_image_sequence:
            return total
        timeline = self._timeline or read_timeline(self.path, self.info.fps)
        if timeline is None or len(timeline.ticks) + timeline.discarded < total:
            return total
        shown = len(timeline.ticks) if self.keep_timestamps else len(constant_rate_slots(timeline, self.info.fps))
        return min(total, shown)

    def _finish(self, produced: int) -> None:
        """Check a read that gave fewer frames than promised: an error, or a short read."""
        total = self._complete_total()
        if produced == 0:
            truncated = self.indices.start < total - self._short_tolerance()
            raise InputError(
                f"{self.path}: no frames selected by {option_value('frames', str(self.frames))}; the clip ends before "
                f"frame {self.indices.start}"
                + (f" although it claims {total} frames (it may be truncated)" if truncated else "")
                + ", choose a range inside the clip"
            )
        # Selected frames that a complete clip surely holds: those before the tolerance zone.
        selected = self.frames.indices(total)
        limit = max(0, total - self._short_tolerance())
        surely_there = len(range(selected.start, min(selected.stop, limit), selected.step))
        if produced >= surely_there:
            return
        promised = len(selected)
        if not self.allow_short:
            raise InputError(
                f"{self.path}: read {produced} of {promised} frames; the file is truncated or damaged "
                f"(pass {option_value('allow_short', True)} to edit the {produced} frames that could be read)"
            )
        self._record_short(produced, promised)

    def _record_short(self, produced: int, promised: int) -> None:
        """Note a short read; ``timestamps`` keeps one entry per frame actually read."""
        self.short_read = (produced, promised)
        del self.timestamps[produced:]

    def _read_folder(self) -> Iterator[np.ndarray]:
        images = numbered_images(self.path)
        source_size = (self.info.width, self.info.height)
        for index in self.indices:
            if index >= len(images):
                break  # files were removed since probing
            try:
                with Image.open(images[index]) as image:
                    if image.size != source_size:
                        raise InputError(
                            f"{images[index]}: is {image.size[0]}x{image.size[1]}, not "
                            f"{source_size[0]}x{source_size[1]} like the other frames; "
                            "all frames must have the same size"
                        )
                    image = _rgb8(image)
                    if image.size != self.size:
                        image = image.resize(self.size, Image.Resampling.LANCZOS)
                    frame = np.asarray(image, dtype=np.uint8)
            except (OSError, ValueError):
                raise InputError(f"{images[index]}: not a readable image; remove or replace it") from None
            self.frames_read += 1
            yield frame
        if self.frames_read < len(self.indices):
            self._finish(self.frames_read)

    def _read_file(self) -> Iterator[np.ndarray]:
        import ffmpeg

        width, height = self.size
        wanted = len(self.indices)
        # Map the first real video stream explicitly: ffmpeg would otherwise pick the largest.
        # ffmpeg turns rotated clips upright first, so the filters below see displayed frames.
        video = ffmpeg.input(ffmpeg_path(self.path))["V:0"]
        if not self.keep_timestamps:
            # Constant frame rate at the stream's average rate: a frame the container marks as
            # "repeat the previous one" (AVI drop frames, variable-rate phone clips) still takes
            # its place in time, so indices, frame counts and the output's duration match the
            # source. See resampling() for what this does to a variable-rate clip.
            rate = self.info.fps
            video = video.filter("fps", fps=f"{rate.numerator}/{rate.denominator}")
        first, step = self.indices.start, self.indices.step
        if first > 0 or step > 1:
            # Selecting on the decoded frame number `n` is exact where seeking by time is not.
            wanted_n = f"gte(n,{first})*lt(n,{self.indices.stop})*not(mod(n-{first},{step}))"
            video = video.filter("select", wanted_n)
        # Converted to RGB here rather than by the converter ffmpeg would add at the end, to
        # ask for exact rounding: the default is about one level darker. The YUV is read with
        # the matrix and range the frames are tagged with; an untagged matrix is guessed from
        # the size, as players guess it (see untagged_matrix), where ffmpeg would take BT.601.
        flags = "lanczos+accurate_rnd+full_chroma_int"
        scale: dict[str, object] = {"flags": flags}
        if self.info.color.matrix is None:
            scale["in_color_matrix"] = untagged_matrix(self.info.width, self.info.height)
        video = video.filter("scale", width, height, **scale).filter("format", "rgb24")
        # passthrough: one output frame per selected decoded frame, none duplicated or dropped
        options: dict[str, object] = dict(pix_fmt="rgb24", fps_mode="passthrough", an=None, sn=None, dn=None)
        if self.keep_timestamps:
            # Raw frames in NUT packets carry each frame's timestamp, in the source's time base.
            options.update(format="nut", vcodec="rawvideo", enc_time_base="demux")
        else:
            options.update(format="rawvideo")
        process, stderr = start_ffmpeg(ffmpeg.output(video, "pipe:", **options), pipe_stdout=True)
        frames = self._nut_frames(process) if self.keep_timestamps else self._raw_frames(process)
        produced, broken, ended = 0, False, False
        try:
            while produced < wanted:
                try:
                    frame = next(frames)
                except StopIteration as stop:
                    ended, broken = True, bool(stop.value)
                    break
                produced += 1
                self.frames_read = produced
                yield frame
        finally:
            frames.close()
            # Kill ffmpeg once the last wanted frame is in (it would decode on to the end) or
            # when the consumer stopped early; if it ended on its own, let it exit and report.
            returncode = stop_ffmpeg(process, stderr, kill=not ended)
        if ended and (returncode != 0 or broken):
            if self.allow_short and produced > 0:
                self._record_short(produced, len(self.frames.indices(self._promised_total)))
                return
            raise InputError(
                f"{self.path}: decoding failed after {produced} frames ({stderr.last_error()}); "
                "the file looks damaged, re-encode or replace it"
                + (
                    f" (or pass {option_value('allow_short', True)} to edit the {produced} frames before it)"
                    if produced
                    else ""
                )
            )
        if produced < len(self.frames.indices(self._promised_total)):
            self._finish(produced)

    def _raw_frames(self, process: subprocess.Popen) -> Generator[np.ndarray, None, bool]:
        """Frames from ffmpeg's rawvideo output; returns True if the last one came incomplete."""
        width, height = self.size
        frame_bytes = width * height * 3
        while True:
            # A fresh bytearray per frame: the arrays handed out stay writable and independent.
            buffer = bytearray(frame_bytes)
            got = process.stdout.readinto(buffer)
            if got < frame_bytes:
                return got > 0
            yield np.frombuffer(buffer, dtype=np.uint8).reshape(height, width, 3)

    def _nut_frames(self, process: subprocess.Popen) -> Generator[np.ndarray, None, bool]:
        """Frames from ffmpeg's NUT output, noting each one's time in ``timestamps``."""
        import av
        from av.error import FFmpegError

        width, height = self.size
        frame_bytes = width * height * 3
        # ffmpeg's clock may start elsewhere than the packets' (an MPEG-TS stream's start, a
        # muxer's shift), so the first frame read is pinned to its planned time and the
        # others keep their distances from it.
        origin: Fraction | None = None
        try:
            container = av.open(process.stdout, mode="r", format="nut")
        except (FFmpegError, OSError, ValueError):
            return True  # not even a header: ffmpeg failed before the first frame
        with container:
            count = 0
            try:
                for packet in container.demux(video=0):
                    if not packet.size:
                        continue
                    data = bytes(packet)
                    if len(data) < frame_bytes:
                        return True
                    if packet.pts is not None:
                        seconds = Fraction(packet.pts) * packet.time_base
                        if origin is None:
                            origin = seconds - Fraction(self.timestamps[0])
                        if count < len(self.timestamps):
                            self.timestamps[count] = float(seconds - origin)
                    count += 1
                    picture = np.frombuffer(bytearray(data[:frame_bytes]), dtype=np.uint8)
                    yield picture.reshape(height, width, 3)
            except FFmpegError:
                return True
        return False
