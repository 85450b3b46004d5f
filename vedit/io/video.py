"""Reading clips and folders of frames as uint8 RGB arrays, and writing them back out.

Frames are streamed through an ffmpeg subprocess (never the whole clip in memory) and picked
by decoded frame index, so ``--frames 10:50:2`` means exactly those frames whatever the
container's timestamps say. They come upright (rotation tags applied), converted from YUV
with the clip's own colour matrix and range, and at the stream's constant average rate
(:func:`resampling` says what that drops and repeats), or with ``keep_timestamps`` each
decoded frame once with its own time. A clip that ends well before the frame count its
container promised is refused as truncated unless the caller allows a short read.

Output keeps the source's colour tags and, given timestamps, its frame timing; the source's
audio is cut on the source's own clock, so it keeps its place against the first frame. It
is written to a hidden sibling and renamed into place only when everything succeeded, so an
interrupted run never leaves half a video behind. Every file written is signed (:data:`SIGNATURE`
in a video's comment, a PNG's Software text), and an existing output without the signature is
replaced only when the caller says so.

Environment:
    VEDIT_FFMPEG   the ffmpeg binary to use (default: ``ffmpeg`` on PATH, else the one
                   bundled with imageio-ffmpeg).
"""

from __future__ import annotations

import collections
import functools
import glob
import math
import os
import re
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import IO, Iterator

import av
import ffmpeg
import numpy as np
from av.error import FFmpegError
from PIL import Image, PngImagePlugin

from .. import __version__
from ..config import option_label, option_value
from ..errors import ConfigError, InputError, OutputError, VeditError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
FOLDER_FPS = Fraction(24)  # image folders carry no rate; the caller may override it
_OUR_FRAME_NAME = re.compile(r"^\d{5,}\.png$")
_LAST_INTEGER = re.compile(r"(\d+)(?!.*\d)")
_FFMPEG_PREFIX = re.compile(r"^(\[[^\]]*\]\s*)+")
_NUT_TIME_BASE = Fraction(1, 1_000_000)  # frames written with timestamps are placed to the microsecond
SIGNATURE = f"vedit {__version__}"  # how vedit recognises what it wrote: a video's comment, a PNG's Software text


def find_ffmpeg() -> str:
    """The ffmpeg binary: ``$VEDIT_FFMPEG``, else ``ffmpeg`` on PATH, else imageio-ffmpeg's."""
    override = os.environ.get("VEDIT_FFMPEG")
    if override:
        found = shutil.which(override)
        if found is None:
            raise ConfigError(
                f"VEDIT_FFMPEG={override}: no such program; point it at an ffmpeg binary or unset it"
            )
        return found
    on_path = shutil.which("ffmpeg")
    if on_path is not None:
        return on_path
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        raise VeditError(
            "ffmpeg not found; install ffmpeg or `pip install imageio-ffmpeg`, or set VEDIT_FFMPEG"
        ) from None


# --------------------------------------------------------------------------- probing


# ffmpeg's names for the ISO/IEC 23091-4 (H.273) colour codes that streams carry.
_PRIMARIES = {
    1: "bt709", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "film",
    9: "bt2020", 10: "smpte428", 11: "smpte431", 12: "smpte432", 22: "ebu3213",
}  # fmt: skip
_TRANSFERS = {
    1: "bt709", 4: "gamma22", 5: "gamma28", 6: "smpte170m", 7: "smpte240m", 8: "linear",
    9: "log100", 10: "log316", 11: "iec61966-2-4", 12: "bt1361e", 13: "iec61966-2-1",
    14: "bt2020-10", 15: "bt2020-12", 16: "smpte2084", 17: "smpte428", 18: "arib-std-b67",
}  # fmt: skip
_MATRICES = {
    0: "gbr", 1: "bt709", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 8: "ycgco",
    9: "bt2020nc", 10: "bt2020c", 11: "smpte2085", 12: "chroma-derived-nc",
    13: "chroma-derived-c", 14: "ictcp",
}  # fmt: skip
_RANGES = {1: "tv", 2: "pc"}
# The matrices ffmpeg's scale filter can convert RGB with, by their colorspace names.
_SCALE_MATRICES = {
    "bt709": "bt709", "fcc": "fcc", "bt470bg": "bt470", "smpte170m": "smpte170m",
    "smpte240m": "smpte240m", "bt2020nc": "bt2020",
}  # fmt: skip


@dataclass(frozen=True)
class ColorTags:
    """How a clip says its YUV values map to colours, in ffmpeg's names; ``None`` where untagged."""

    primaries: str | None = None  # e.g. "bt709", "bt470bg", "bt2020"
    transfer: str | None = None  # e.g. "bt709", "smpte170m", "iec61966-2-1"
    matrix: str | None = None  # e.g. "bt709", "bt470bg", "smpte170m"
    range: str | None = None  # "tv" (limited) or "pc" (full)

    @property
    def tagged(self) -> bool:
        """Whether the clip states any of the four."""
        return any(value is not None for value in (self.primaries, self.transfer, self.matrix, self.range))


def untagged_matrix(width: int, height: int) -> str:
    """The YUV matrix to read a clip whose matrix is not tagged with, as players guess it (mpv,
    VLC): BT.709 for HD sizes (at least 1280 wide or more than 576 high), BT.601 below."""
    return "bt709" if width >= 1280 or height > 576 else "bt601"


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learnt about a clip or a folder of frames."""

    path: Path
    width: int  # displayed frame size: for a rotated clip, after the rotation a player applies
    height: int
    fps: Fraction
    num_frames: int  # exact for folders and most mp4/mov/avi; otherwise an upper-bound estimate
    has_audio: bool
    duration: float | None  # seconds
    codec: str
    is_image_sequence: bool
    # Degrees counter-clockwise that players turn the stored picture (0, 90, 180 or 270), as
    # ffmpeg's -display_rotation sets it; frames are read already turned.
    rotation: int = 0
    color: ColorTags = ColorTags()
    # Where num_frames comes from: "count" (the container's own count, the packets, or the
    # files of a folder), "duration" (the video stream's duration x fps) or "container" (the
    # whole file's duration x fps, which may include a longer audio track).
    frames_from: str = "count"
    # The frame size as stored, before the rotation and the pixel aspect; None: as displayed.
    stored_size: tuple[int, int] | None = None
    # A stored pixel's width over its height (the sample aspect ratio): 32/27 for 720x480
    # shown as 16:9. width and height are the displayed size: stored width x pixel aspect.
    pixel_aspect: Fraction = Fraction(1)
    pixel_format: str = ""  # of the decoded frames, in ffmpeg's names: yuv420p, yuv422p10le, rgb24
    # The streams that reading leaves out, as (kind, codec): every video stream but the first
    # (cover art as "cover art"), every audio track but the first, subtitles, data, attachments.
    unused_streams: tuple[tuple[str, str], ...] = ()

    @property
    def exact_size(self) -> tuple[Fraction, Fraction]:
        """The displayed size before it is rounded to whole pixels: 720 pixels of aspect 32:27
        show as 853 1/3, which a writer rounds to the sides its format can hold."""
        if self.stored_size is None:
            return Fraction(self.width), Fraction(self.height)
        width, height = self.stored_size
        shown = (width * self.pixel_aspect, Fraction(height))
        return (shown[1], shown[0]) if self.rotation in (90, 270) else shown


def probe(path: str | os.PathLike) -> VideoInfo:
    """Describe the video file or numbered-image folder at ``path``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return _probe_folder(path)
    return _probe_file(path)


def _probe_file(path: Path) -> VideoInfo:
    unreadable = (
        f"{path}: not a readable video; give a video file (mp4, mov, mkv, avi, webm...) "
        "or a folder of frames"
    )
    try:
        container = av.open(str(path))
    except PermissionError:
        raise InputError(f"{path}: permission denied; make the file readable") from None
    except (FFmpegError, OSError, ValueError, UnicodeDecodeError):
        raise InputError(unreadable) from None
    with container:
        # ffmpeg happily "decodes" text files as ANSI art; that is never what the user meant.
        if container.format.name == "tty":
            raise InputError(unreadable)
        stream = _first_real_video_stream(container)
        if stream is None:
            raise InputError(f"{path}: has no video stream; give a video file or a folder of frames")
        context = stream.codec_context
        width, height = int(context.width or 0), int(context.height or 0)
        if width <= 0 or height <= 0:
            raise InputError(unreadable)
        fps = _stream_fps(stream)
        frames_from = "duration"
        if stream.duration and stream.time_base:
            duration: float | None = float(stream.duration * stream.time_base)
        elif _tagged_duration(stream) is not None:
            # Matroska stores no per-stream duration, but its muxers tag when each track ends
            # (the file's duration would include an audio track running on past the picture).
            # The tag counts from the file's zero, so a track that starts late is shorter.
            duration = _tagged_duration(stream)
            if stream.start_time is not None and stream.time_base:
                duration = max(0.0, duration - float(stream.start_time * stream.time_base)) or None
        elif container.duration:
            duration = container.duration / av.time_base
            frames_from = "container"
        else:
            duration = None
        rotation, color, pixel_format = _first_frame_facts(container, stream)
        if stream.frames and stream.frames > 0:
            num_frames, frames_from = int(stream.frames), "count"
        elif duration:
            # Rounded up (with a little slack for millisecond timestamps) so that the
            # estimate stays an upper bound: the reader never yields more than this.
            num_frames = max(1, math.ceil(duration * fps - 0.05))
        else:
            num_frames, frames_from = _count_packets(container, stream), "count"
        stored_size, pixel_aspect = (width, height), _pixel_aspect(stream)
        width = max(1, _round_half_up(width * pixel_aspect.numerator, pixel_aspect.denominator))
        if rotation in (90, 270):
            width, height = height, width
        codec = getattr(context.codec, "canonical_name", None) or context.codec.name
        return VideoInfo(
            path=path,
            width=width,
            height=height,
            fps=fps,
            num_frames=num_frames,
            has_audio=len(container.streams.audio) > 0,
            duration=duration,
            codec=codec,
            is_image_sequence=False,
            rotation=rotation,
            color=color,
            frames_from=frames_from,
            stored_size=stored_size,
            pixel_aspect=pixel_aspect,
            pixel_format=pixel_format,
            unused_streams=_unused_streams(container, stream),
        )


def _tagged_duration(stream: av.video.stream.VideoStream) -> float | None:
    """The ``DURATION`` tag (``HH:MM:SS.fraction``) that Matroska muxers give each track."""
    text = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    match = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", (text or "").strip())
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds) or None


def _first_frame_facts(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> tuple[int, ColorTags, str]:
    """The display rotation, colour tags and pixel format, read from the first decoded frame.

    PyAV cannot read a stream's side data, where the rotation lives, but the decoder copies
    it onto every frame, along with the colour tags and pixel format as decoded (some codecs
    only know them then). Decoding one frame is cheap.
    """
    context = stream.codec_context
    codes = (context.color_primaries, context.color_trc, context.colorspace, context.color_range)
    rotation = 0.0
    pixel_format = context.pix_fmt or ""
    try:
        for frame in container.decode(stream):
            rotation = frame.rotation or 0.0
            codes = (frame.color_primaries, frame.color_trc, frame.colorspace, frame.color_range)
            pixel_format = frame.format.name
            break
    except (FFmpegError, ValueError):
        pass  # a damaged start is reported by the reader, with the frame it failed at
    try:
        container.seek(0)  # packets may still have to be counted, from the start
    except (FFmpegError, ValueError):
        pass
    primaries, transfer, matrix, range_ = (int(code) if code is not None else -1 for code in codes)
    color = ColorTags(
        primaries=_PRIMARIES.get(primaries),
        transfer=_TRANSFERS.get(transfer),
        matrix=_MATRICES.get(matrix),
        range=_RANGES.get(range_),
    )
    # ffmpeg turns by multiples of 90 degrees; anything else is a tagging oddity.
    return int(round(rotation / 90.0)) % 4 * 90, color, pixel_format


def _pixel_aspect(stream: av.video.stream.VideoStream) -> Fraction:
    """The stream's sample aspect ratio as ffmpeg picks it: the container's, else the codec's;
    1 where neither states one."""
    for ratio in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if ratio is not None and ratio.numerator > 0 and ratio.denominator > 0:
            return Fraction(ratio.numerator, ratio.denominator)
    return Fraction(1)


def _unused_streams(
    container: av.container.InputContainer, video: av.video.stream.VideoStream
) -> tuple[tuple[str, str], ...]:
    """(kind, codec) of every stream of ``container`` that reading and writing leave out."""
    unused = []
    first_audio = container.streams.audio[0] if container.streams.audio else None
    attached_pic = int(av.stream.Disposition.attached_pic)
    for stream in container.streams:
        if stream is video or stream is first_audio:
            continue
        kind = stream.type
        if kind == "video" and int(stream.disposition) & attached_pic:
            kind = "cover art"
        context = getattr(stream, "codec_context", None)
        if kind == "attachment":
            codec = stream.name or getattr(stream, "mimetype", None) or ""  # a font's file name, say
        elif context is not None and context.name:
            codec = context.name
        else:
            codec = "timecode" if "timecode" in stream.metadata else ""  # a camera's tmcd track
        unused.append((kind, codec))
    return tuple(unused)


def _first_real_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The first video stream that is not cover art, matching ffmpeg's ``0:V:0``."""
    attached_pic = int(av.stream.Disposition.attached_pic)
    for stream in container.streams.video:
        if not int(stream.disposition) & attached_pic:
            return stream
    return None


def _stream_fps(stream: av.video.stream.VideoStream) -> Fraction:
    if stream.codec_context.name == "gif" and stream.frames and stream.duration and stream.time_base:
        # GIF states no rate, only each frame's delay in hundredths of a second, and ffmpeg
        # guesses the rate from the first few (25 fps for a 24 fps clip's 4, 4, 5): the
        # frames over the whole duration is the rate they were made at, as near as GIF holds it.
        return stream.frames / (stream.duration * Fraction(stream.time_base))
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate.numerator, rate.denominator)
    return FOLDER_FPS


def _count_packets(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """Count non-empty packets: the last resort when a stream states neither length nor duration."""
    try:
        return sum(1 for packet in container.demux(stream) if packet.size)
    except FFmpegError:
        raise InputError(f"{container.name}: not a readable video; the file looks damaged") from None


def _numbered_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` in frame order: by the last number in the name (2 before 10)."""

    def frame_order(file: Path) -> tuple[int, str]:
        match = _LAST_INTEGER.search(file.stem)
        return (int(match.group(1)) if match else -1, file.name)

    images = [
        file
        for file in folder.iterdir()
        if file.suffix.lower() in IMAGE_EXTENSIONS and not file.name.startswith(".") and file.is_file()
    ]
    return sorted(images, key=frame_order)


# Pillow's image modes by ffmpeg's name for the same samples, for what writing keeps of them.
_PIL_PIXEL_FORMATS = {"RGB": "rgb24", "RGBA": "rgba", "L": "gray", "LA": "ya8", "P": "pal8", "I;16": "gray16le"}


def _probe_folder(folder: Path) -> VideoInfo:
    images = _numbered_images(folder)
    if not images:
        raise InputError(
            f"{folder}: no images found; the folder should hold numbered frames such as 00000.png"
        )
    first_size, codec, mode = None, "png", ""
    for image_path in images:
        try:
            # Image.open reads only the header, so checking every size stays cheap.
            with Image.open(image_path) as image:
                size = image.size
                if first_size is None:
                    first_size, codec, mode = size, (image.format or "png").lower(), image.mode
        except (OSError, ValueError, Image.DecompressionBombError):
            raise InputError(f"{image_path}: not a readable image; remove or replace it") from None
        if size != first_size:
            raise InputError(
                f"{image_path}: is {size[0]}x{size[1]} but {images[0].name} is "
                f"{first_size[0]}x{first_size[1]}; all frames must have the same size"
            )
    assert first_size is not None
    return VideoInfo(
        path=folder,
        width=first_size[0],
        height=first_size[1],
        fps=FOLDER_FPS,
        num_frames=len(images),
        has_audio=False,
        duration=len(images) / float(FOLDER_FPS),
        codec=codec,
        is_image_sequence=True,
        pixel_format=_PIL_PIXEL_FORMATS.get(mode, ""),
    )


# --------------------------------------------------------------------------- options


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
    def parse(cls, text: str | None, max_frames: int | None = None) -> "FrameRange":
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


# --------------------------------------------------------------------------- ffmpeg plumbing


class _StderrTail:
    """Drains a process's stderr in the background so ffmpeg never blocks on a full pipe."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=50)
        self._thread = threading.Thread(target=self._drain, args=(pipe,), daemon=True)
        self._thread.start()

    def _drain(self, pipe: IO[bytes]) -> None:
        with pipe:
            for raw in iter(pipe.readline, b""):
                line = raw.decode("utf-8", "replace").strip()
                if line:
                    self.lines.append(line)

    def join(self) -> None:
        self._thread.join(timeout=5)

    def last_error(self) -> str:
        """ffmpeg's last informative line, without the ``[h264 @ 0x...]`` prefixes."""
        boilerplate = ("Terminating thread", "Task finished", "Conversion failed", "Error closing")
        cleaned = [_FFMPEG_PREFIX.sub("", line) for line in self.lines]
        for line in reversed(cleaned):
            if line and not line.startswith(boilerplate):
                return line
        return cleaned[-1] if cleaned else "ffmpeg stopped without a message"


def _start(
    stream_spec: ffmpeg.nodes.OutputStream,
    *,
    pipe_stdin: bool = False,
    pipe_stdout: bool = False,
    exit_on_error: bool = True,
) -> tuple[subprocess.Popen, _StderrTail]:
    """Run the ffmpeg command ``stream_spec`` quietly, with stderr drained in the background."""
    spec = stream_spec.global_args("-hide_banner", "-nostats", "-loglevel", "error")
    if exit_on_error:
        # -xerror turns decode errors into a non-zero exit; without it ffmpeg conceals the
        # damage and exits 0 after yielding grey or missing frames.
        spec = spec.global_args("-xerror")
    if not pipe_stdin:
        spec = spec.global_args("-nostdin")  # else ffmpeg reads keystrokes from the terminal
    # Started by hand rather than with run_async, to give ffmpeg its own session: Ctrl-C in
    # the terminal then reaches only Python, which kills ffmpeg and cleans up, instead of
    # ffmpeg quitting first and its early end being reported as a damaged file.
    process = subprocess.Popen(
        spec.compile(cmd=find_ffmpeg()),
        stdin=subprocess.PIPE if pipe_stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE if pipe_stdout else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    return process, _StderrTail(process.stderr)


def _ffmpeg_path(path: Path) -> str:
    """``path`` as ffmpeg must see it: ``take1:raw.mp4`` would otherwise name a protocol."""
    return f"file:{path}"


def _stop(process: subprocess.Popen, stderr: _StderrTail, *, kill: bool) -> int:
    """End ``process`` (killing it first if asked), reap it and return its exit status."""
    if kill and process.poll() is None:
        process.kill()
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass  # a pipe to a killed process may refuse to flush
    returncode = process.wait()
    stderr.join()
    return returncode


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class _Timeline:
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


def _round_half_up(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded to nearest, halves away from zero, as ffmpeg does."""
    if numerator < 0:
        return -_round_half_up(-numerator, denominator)
    return (2 * numerator + denominator) // (2 * denominator)


def _timeline(path: Path, fps: Fraction, *, limit: int | None = None) -> _Timeline | None:
    """The video frames' times, or ``None`` when the packets carry none (raw H.264, say).

    ``limit`` stops after that many frames, for when only the first one matters.
    """
    try:
        container = av.open(str(path))
    except (FFmpegError, OSError, ValueError, UnicodeDecodeError):
        return None
    with container:
        stream = _first_real_video_stream(container)
        if stream is None or not stream.time_base:
            return None
        time_base = Fraction(stream.time_base.numerator, stream.time_base.denominator)
        per_frame = 1 / (fps * time_base)  # a frame's length in ticks, for packets that lack one
        frame_ticks = max(1, _round_half_up(per_frame.numerator, per_frame.denominator))
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
            shift = _round_half_up(start * time_base.denominator, av.time_base * time_base.numerator)
        ticks.sort()
        return _Timeline(
            ticks=[tick - shift for tick in ticks], end=end - shift, time_base=time_base, shift=shift,
            discarded=discarded,
        )


def _constant_rate_slots(timeline: _Timeline, fps: Fraction) -> np.ndarray:
    """For each frame read at the constant rate ``fps``, the index of the source frame it shows.

    This is what ffmpeg's ``fps`` filter does: frame times are rounded to the nearest slot of
    the output rate, a slot shows the last frame rounded to it or before it, and slots run from
    the first frame's slot up to where the last frame ends.
    """
    scale_num = timeline.time_base.numerator * fps.numerator
    scale_den = timeline.time_base.denominator * fps.denominator
    slots = np.array([_round_half_up(tick * scale_num, scale_den) for tick in timeline.ticks], np.int64)
    end = _round_half_up(timeline.end * scale_num, scale_den)
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
    timeline = None if info.is_image_sequence else _timeline(info.path, info.fps)
    if timeline is None:
        return Resampling(dropped=0, repeated=0, variable=False)
    gaps = np.diff(np.array(timeline.ticks, np.int64))
    if len(gaps):
        typical = float(np.median(gaps))
        # Timestamps rounded to the time base wobble by a tick (33 and 34 ms at 30 fps in mkv).
        variable = bool(np.abs(gaps - typical).max() > max(2.0, 0.02 * typical))
    else:
        variable = False
    shown = _constant_rate_slots(timeline, info.fps)
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


# --------------------------------------------------------------------------- reading


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
        self._timeline: _Timeline | None = None
        total = self.info.num_frames
        if keep_timestamps and not self.info.is_image_sequence:
            # Every decoded frame once: the packets say how many there are and when each shows.
            self._timeline = _timeline(self.path, self.info.fps)
            if self._timeline is not None:
                total = len(self._timeline.ticks)
        self._total = total
        # What the container promised: its own frame count also covers packets cut off.
        self._promised_total = total
        if self._timeline is not None and self.info.frames_from == "count":
            self._promised_total = max(total, self.info.num_frames)
        self.indices = frames.indices(total)
        if size is None:
            size = working_size(
                self.info.width, self.info.height, keep_if_aligned=self.info.is_image_sequence
            )
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be (width, height) with positive sides, got {size}")
        self.size = (int(size[0]), int(size[1]))
        if len(self.indices) == 0:
            raise InputError(self._nothing_selected())
        self.timestamps: list[float] = self._planned_timestamps()

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
        timeline = self._timeline or _timeline(self.path, self.info.fps)
        if timeline is None or len(timeline.ticks) + timeline.discarded < total:
            return total
        shown = len(timeline.ticks) if self.keep_timestamps else len(_constant_rate_slots(timeline, self.info.fps))
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
        images = _numbered_images(self.path)
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
                    image = image.convert("RGB")
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
        width, height = self.size
        wanted = len(self.indices)
        # Map the first real video stream explicitly: ffmpeg would otherwise pick the largest.
        # ffmpeg turns rotated clips upright first, so the filters below see displayed frames.
        video = ffmpeg.input(_ffmpeg_path(self.path))["V:0"]
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
        process, stderr = _start(ffmpeg.output(video, "pipe:", **options), pipe_stdout=True)
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
            returncode = _stop(process, stderr, kill=not ended)
        if ended and (returncode != 0 or broken):
            if self.allow_short and produced > 0:
                self._record_short(produced, len(self.frames.indices(self._promised_total)))
                return
            raise InputError(
                f"{self.path}: decoding failed after {produced} frames ({stderr.last_error()}); "
                "the file looks damaged, re-encode or replace it"
                + (f" (or pass {option_value('allow_short', True)} to edit the {produced} frames before it)"
                   if produced else "")
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


# --------------------------------------------------------------------------- writing


def write_atomically(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling (named with this process's id, like
    every temporary file vedit writes) that is synced and renamed into place; nothing is left
    behind on any failure, Ctrl-C included. Raises OSError for the caller to word."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.pid{os.getpid()}.{secrets.token_hex(4)}.partial"
    try:
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (this one always does)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists but belongs to someone else
    return True


def remove_dead_partials(output: Path) -> int:
    """Remove the temporary siblings of ``output`` that a writer killed mid-write (SIGKILL, a
    power cut) left: those whose process no longer exists. Another run still writing the same
    output keeps its own. Returns how many were removed; never raises."""
    removed = 0
    for leftover in output.parent.glob(f".{glob.escape(output.name)}.partial-*"):
        found = re.search(r"-pid(\d+)", leftover.name[len(output.name) + 1 :])
        if found is None or process_alive(int(found.group(1))):
            continue
        try:
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        except OSError:
            continue
        removed += 1
    return removed


def check_output_folder(out: Path) -> Path:
    """The folder ``out`` is to be written in; OutputError unless it exists and can be written."""
    parent = out.parent
    if not parent.exists():
        raise OutputError(f"{parent}: output folder does not exist; create it or choose another output path")
    if not parent.is_dir():
        raise OutputError(f"{parent}: is a file, not a folder; choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{parent}: folder is not writable; choose another output path")
    return parent


@dataclass(frozen=True)
class OutputFormat:
    """How video files of one kind are written."""

    name: str  # as messages and the summary name it
    encoder: str  # ffmpeg's video encoder
    audio_encoder: str | None  # None: the format carries no audio
    audio_bitrate: str = ""
    even_sides: bool = True  # 4:2:0 video keeps colour at half resolution


_H264 = OutputFormat("H.264", "libx264", "aac", "192k")
OUTPUT_FORMATS = {
    ".mp4": _H264, ".mov": _H264, ".mkv": _H264,
    ".webm": OutputFormat("VP9", "libvpx-vp9", "libopus", "128k"),
    ".gif": OutputFormat("GIF", "gif", None, even_sides=False),
}  # fmt: skip
VIDEO_EXTENSIONS = frozenset(OUTPUT_FORMATS)
_VP9_CRF = 24  # constant quality (with -b:v 0); measured against x264's 18 in the README
_GIF_TICK = Fraction(1, 100)  # GIF delays are whole hundredths of a second
_GIF_SHORTEST = 2  # browsers show a frame of fewer hundredths for 10 of them


def output_format(output: str | os.PathLike) -> OutputFormat | None:
    """How ``output`` is written; ``None`` for a folder of PNG frames."""
    if _output_kind(output) == "folder":
        return None
    return OUTPUT_FORMATS[Path(os.fspath(output)).suffix.lower()]


def unwritable_suffix(suffix: str) -> str:
    """Why files ending in ``suffix`` cannot be written, and what can."""
    *others, last = OUTPUT_FORMATS
    return f"cannot write {suffix} files; use {', '.join(others)} or {last}, or a folder name for PNG frames"


def save_png(image: Image.Image, target: str | os.PathLike | IO[bytes], compress_level: int = 1) -> None:
    """Save ``image`` as a PNG signed by vedit (its Software text), to a path or a binary file.
    The default compression is light: PNG's own default level is several times slower."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", SIGNATURE)
    image.save(target, format="PNG", pnginfo=info, compress_level=compress_level)


def _sign_gif(path: Path, scratch: Path) -> None:
    """Put vedit's :data:`SIGNATURE` into the GIF at ``path`` as a comment extension, right after
    its screen descriptor and global palette (ffmpeg's GIF muxer writes no comment of its own);
    ``scratch`` is where the signed copy is made before it replaces ``path``."""
    with open(path, "rb") as gif:
        head = gif.read(13)  # "GIF89a" and the logical screen descriptor
        flags = head[10]
        palette = 3 * 2 ** ((flags & 0x07) + 1) if flags & 0x80 else 0
        head += gif.read(palette)
        text = SIGNATURE.encode("ascii")
        comment = b"\x21\xfe" + b"".join(bytes([len(part)]) + part for part in _chunks(text, 255)) + b"\x00"
        with open(scratch, "wb") as out:
            out.write(head + comment)
            shutil.copyfileobj(gif, out)
    os.replace(scratch, path)


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def written_by_vedit(path: str | os.PathLike) -> bool:
    """Whether vedit wrote the video, the PNG, the GIF or the folder of PNG frames at ``path``:
    its :data:`SIGNATURE` is the container's comment, the PNG's Software text, the GIF's comment
    extension or its first frame's."""
    path = Path(path)
    if path.is_dir():
        frames = sorted(entry for entry in path.iterdir() if _OUR_FRAME_NAME.match(entry.name))
        return bool(frames) and written_by_vedit(frames[0])
    try:
        if path.suffix.lower() in (".png", ".gif"):
            with Image.open(path) as image:
                text = image.info.get("Software") or image.info.get("comment", b"")
            text = text.decode("ascii", "replace") if isinstance(text, bytes) else text
        else:
            with av.open(str(path)) as container:
                text = next((value for key, value in container.metadata.items() if key.lower() == "comment"), "")
    except (FFmpegError, OSError, ValueError, UnicodeDecodeError, Image.DecompressionBombError):
        return False  # not a video or an image at all
    return isinstance(text, str) and text.split(" ", 1)[0] == "vedit"  # any version's signature


def check_replaceable(
    path: str | os.PathLike, overwrite: bool = False, written_by: Callable[[Path], bool] = written_by_vedit
) -> None:
    """Refuse to replace what vedit did not write (``written_by`` says what it did), unless
    ``overwrite``: one rule for every file vedit writes. A missing path or an empty folder is free."""
    path = Path(path)
    if overwrite or not path.exists() or (path.is_dir() and not any(path.iterdir())) or written_by(path):
        return
    raise OutputError(f"{path} exists and was not written by vedit; pass --overwrite to replace it")


def check_output_path(
    output: str | os.PathLike, input_path: str | os.PathLike | None, *, overwrite: bool = False
) -> Path:
    """Refuse an output that cannot or must not be written, before any work is done. An existing
    one is replaced only when vedit wrote it, or with ``overwrite``; a folder holding anything but
    frames, never."""
    kind = _output_kind(output)
    out = Path(os.path.abspath(output))  # normalised, so "." and "frames/.." have a real name
    if input_path is not None and _same_location(out, Path(input_path)):
        raise OutputError(f"{out}: this is the input; choose a different output path")
    check_output_folder(out)
    if kind == "folder" and out.exists():
        if not out.is_dir():
            raise OutputError(f"{out}: is a file; give a new folder name, or a .mp4/.mov/.mkv path")
        foreign = sorted(entry.name for entry in out.iterdir() if not _OUR_FRAME_NAME.match(entry.name))
        if foreign:
            raise OutputError(
                f"{out}: folder already holds other files ({foreign[0]}); choose an empty or new folder"
            )
    if kind == "video" and out.exists() and not out.is_file():
        raise OutputError(f"{out}: exists and is not a regular file; choose another output path")
    check_replaceable(out, overwrite)
    return out


def _output_kind(output: str | os.PathLike) -> str:
    """``"video"`` for the files of OUTPUT_FORMATS, ``"folder"`` for PNG frames; anything else is refused."""
    text = os.fspath(output)
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if not suffix:
        return "folder"
    raise OutputError(f"{path}: {unwritable_suffix(suffix)}")


def _same_location(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return a.resolve() == b.resolve()


def _nearest_even(side: Fraction) -> int:
    """The even number nearest ``side``, the lower one when it lies halfway (an odd whole side)."""
    return max(2, 2 * math.ceil(side / 2 - Fraction(1, 2)))


def written_size(output: str | os.PathLike, size: tuple[int | Fraction, int | Fraction]) -> tuple[int, int]:
    """The ``(width, height)`` that frames of ``size`` are written at to ``output``.

    4:2:0 video (H.264, VP9) needs even sides, as it keeps colour at half resolution: each side
    goes to the nearest even number, so an odd side loses its last row or column. GIF files and
    PNG folders take any size. ``size`` may be exact (:attr:`VideoInfo.exact_size`, the displayed
    size of non-square pixels), and is then rounded to the nearest size the output can hold.
    """
    width, height = Fraction(size[0]), Fraction(size[1])
    written = output_format(output)
    if written is None or not written.even_sides:
        return tuple(max(1, _round_half_up(side.numerator, side.denominator)) for side in (width, height))
    return _nearest_even(width), _nearest_even(height)


@functools.lru_cache(maxsize=4)
def _encoders(binary: str) -> frozenset[str] | None:
    """The encoders the ffmpeg at ``binary`` was built with; None if it cannot say."""
    try:
        listing = subprocess.run(
            [binary, "-hide_banner", "-nostdin", "-encoders"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    # Lines such as " V....D libx264   libx264 H.264 / AVC ...", after a legend that ends in "------".
    table = listing.partition("------")[2]
    return frozenset(line.split()[1] for line in table.splitlines() if len(line.split()) > 1) or None


def check_encoders(output: str | os.PathLike, *, audio: bool) -> None:
    """Refuse ``output`` before any work when this ffmpeg cannot encode it (a build without VP9,
    say); ``audio``: whether the source's audio is to be carried."""
    written = output_format(output)
    if written is None:
        return
    needed = [written.encoder] + ([written.audio_encoder] if audio and written.audio_encoder else [])
    binary = find_ffmpeg()
    known = _encoders(binary)
    missing = [encoder for encoder in needed if known is not None and encoder not in known]
    if missing:  # an ffmpeg that cannot list its encoders fails later, with its own words
        suffix = Path(os.fspath(output)).suffix.lower()
        raise OutputError(
            f"{output}: the ffmpeg at {binary} has no {missing[0]} encoder, which {suffix} files need; "
            "choose another format, or set VEDIT_FFMPEG to an ffmpeg built with it"
        )


def no_audio_track(output: str | os.PathLike) -> str:
    """Why ``output`` will hold no audio whatever the source has (``"GIF has no audio track"``);
    empty where it carries the source's first track."""
    written = output_format(output)
    if written is None:
        return "PNG frames have no audio track"
    return f"{written.name} has no audio track" if written.audio_encoder is None else ""


_STREAM_WORDS = {
    "video": ("a second video stream", "{count} more video streams"),
    "audio": ("a second audio track", "{count} more audio tracks"),
    "subtitle": ("a subtitle stream", "{count} subtitle streams"),
    "data": ("a data stream", "{count} data streams"),
    "attachment": ("an attachment", "{count} attachments"),
    "cover art": ("cover art", "cover art"),
}


def lost_in_writing(info: VideoInfo, output: str | os.PathLike) -> list[str]:
    """What of ``info``'s clip ``output`` will not hold, in words for the summary: the streams
    reading leaves out, audio the output cannot carry, and samples it keeps fewer of."""
    written = output_format(output)
    no_audio = no_audio_track(output)
    lost = []
    if info.has_audio and no_audio:
        lost.append(f"the audio ({no_audio})")
    by_kind: dict[str, list[str]] = {}
    for kind, codec in info.unused_streams:
        if kind != "audio" or not no_audio:  # else every track went with "the audio"
            by_kind.setdefault(kind, []).append(codec)
    for kind, codecs in by_kind.items():
        one, many = _STREAM_WORDS.get(kind, (f"a {kind} stream", f"{{count}} {kind} streams"))
        named = [codec for codec in codecs if codec]
        words = one if len(codecs) == 1 else many.format(count=len(codecs))
        lost.append(f"{words} ({', '.join(named)})" if named else words)
    if not info.pixel_format:
        return lost
    samples = av.VideoFormat(info.pixel_format, 16, 16)
    depth = max(component.bits for component in samples.components)
    if depth > 8:
        lost.append(f"{depth}-bit samples ({info.pixel_format}) written as 8-bit")
    if any(component.is_alpha for component in samples.components):
        lost.append(f"the alpha channel ({info.pixel_format})")
    if written is not None and written.even_sides:  # 4:2:0 video
        chroma = _chroma_subsampling(samples)
        if chroma in ("4:4:4", "4:2:2", "4:4:0", "4:1:1"):  # finer than 4:2:0 one way or both
            lost.append(f"{chroma} colour ({info.pixel_format}) written as 4:2:0")
    return lost


def _chroma_subsampling(samples: av.VideoFormat) -> str | None:
    """``"4:2:0"``, ``"4:2:2"``, ``"4:4:4"`` (RGB and palettes too) and so on; None for grey."""
    if samples.is_rgb or samples.has_palette:
        return "4:4:4"
    if len(samples.components) < 3:
        return None
    across = samples.width // samples.chroma_width()
    down = samples.height // samples.chroma_height()
    return {(1, 1): "4:4:4", (2, 1): "4:2:2", (2, 2): "4:2:0", (4, 1): "4:1:1", (1, 2): "4:4:0"}.get((across, down))


def frame_timing(output: str | os.PathLike, fps: Fraction, *, keep_timestamps: bool = False) -> tuple[str, str]:
    """What ``output`` does to frames ``1 / fps`` apart (or at their own times): a note for the
    summary where it cannot show them exactly, and a warning where players will show them at
    another pace; empty strings where neither applies.

    GIF delays are whole hundredths of a second. ffmpeg rounds each frame's time to one, so the
    average rate is kept and single frames are up to half a hundredth early or late.
    """
    written = output_format(output)
    if written is None or written.encoder != "gif":
        return "", ""
    ticks = 1 / (fps * _GIF_TICK)  # hundredths of a second per frame
    if keep_timestamps:
        note = "GIF: each frame's time rounded to a hundredth of a second"
    elif ticks.denominator == 1:
        note = ""
    else:
        shortest, longest = math.floor(ticks), math.ceil(ticks)
        note = (
            f"GIF delays are whole hundredths of a second: frames show for {shortest} or {longest} hundredths "
            f"({fps} fps on average)"
        )
    warning = ""
    if ticks < _GIF_SHORTEST:
        warning = (
            f"{output}: {fps} fps is too fast for GIF: browsers show frames shorter than {_GIF_SHORTEST} "
            "hundredths of a second for 10; --frames ::2 halves the rate"
        )
    return note, warning


class VideoWriter:
    """Writes uint8 RGB frames to a video file (:data:`OUTPUT_FORMATS`: H.264 in mp4/mov/mkv,
    VP9 in WebM, GIF) or a folder of PNGs, atomically.

    Use it as a context manager: on a clean exit the output is finished and renamed into
    place; on any exception (Ctrl-C included) ffmpeg is killed, the temporary output is
    deleted and the exception goes on. An existing output is replaced only on success.

    Frames are shown ``1 / fps`` apart, or, given ``timestamps`` (seconds, one per frame, such
    as :attr:`FrameReader.timestamps`), frame i at ``timestamps[i] - timestamps[0]``. With
    ``color`` tags from the source the frames are converted to YUV the way the source was
    and tagged like it; without, as BT.709. ``audio_range`` is in seconds from the first
    video frame of ``audio_from``, and the audio keeps its offset from that frame. ``crf`` is
    x264's quality (0: lossless); VP9 is written at its own constant quality (lossless at 0).

    A GIF takes two more passes over the frames, kept losslessly in a temporary file: one
    finds the palette that suits the whole clip, the other maps every frame to it. It carries
    no audio and loops forever.

    An existing output that vedit did not write is refused unless ``overwrite``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        fps: Fraction,
        size: tuple[int, int] | None = None,
        audio_from: VideoInfo | None = None,
        audio_range: tuple[float, float] | None = None,
        crf: int = 18,
        color: ColorTags | None = None,
        timestamps: Sequence[float] | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = check_output_path(path, audio_from.path if audio_from is not None else None, overwrite=overwrite)
        self.kind = _output_kind(path)
        self.format = output_format(path)  # None for a folder of PNGs
        self.fps = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1_000_000)
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"size must be (width, height) with positive sides, got {size}")
        if audio_range is not None and not 0 <= audio_range[0] < audio_range[1]:
            raise ValueError(f"audio_range must be (start, end) with 0 <= start < end, got {audio_range}")
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be between 0 and 51, got {crf}")
        if timestamps is not None:
            timestamps = [float(t) for t in timestamps]
            if not timestamps or any(b <= a for a, b in zip(timestamps, timestamps[1:])):
                raise ValueError("timestamps must be a non-empty, strictly increasing list of seconds")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.color = color
        self.timestamps = timestamps
        self._muxer: av.container.OutputContainer | None = None  # frames to ffmpeg as NUT
        self._muxer_stream: av.video.stream.VideoStream | None = None
        self._nut_ticks: list[int] = []
        self.audio_from = audio_from
        self.audio_range = audio_range
        self.crf = crf
        self.frames_written = 0
        self._frame_shape: tuple[int, int] | None = None
        self._token = secrets.token_hex(4)
        self._temp: Path | None = None
        # The encoded frames, waiting for their audio, or a GIF's frames waiting for their palette.
        self._video_only: Path | None = None
        self._palette: Path | None = None
        self._process: subprocess.Popen | None = None
        self._stderr: _StderrTail | None = None
        self._done = False
        check_encoders(self.path, audio=self._audio_source() is not None)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        if exc_type is not None:
            self.abort()
            return False
        self.close()
        return False

    def write(self, frames: np.ndarray) -> None:
        """Append one ``(H, W, 3)`` frame or a ``(b, H, W, 3)`` batch of uint8 RGB frames."""
        if self._done:
            raise RuntimeError("write() on a VideoWriter that is already closed")
        batch = np.asarray(frames)
        if batch.ndim == 3:
            batch = batch[None]
        if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
            raise ValueError(
                f"frames must be uint8 (H, W, 3) or (b, H, W, 3), got {batch.dtype} {batch.shape}"
            )
        if len(batch) == 0:
            return
        shape = (int(batch.shape[1]), int(batch.shape[2]))
        if self._frame_shape is None:
            self._frame_shape = shape
            self._open(shape)
        elif shape != self._frame_shape:
            first_height, first_width = self._frame_shape
            raise ValueError(
                f"all frames must share one size: got {shape[1]}x{shape[0]} "
                f"after {first_width}x{first_height}"
            )
        if self.kind == "video":
            self._write_video(batch)
        else:
            self._write_pngs(batch)

    def close(self) -> None:
        """Finish the output and move it into place; OutputError if nothing could be written."""
        if self._done:
            return
        try:
            if self.frames_written == 0:
                raise OutputError(f"{self.path}: no frames were written, so nothing was saved")
            if self._muxer is not None:
                self._close_muxer()
            if self._process is not None:
                self._finish_ffmpeg("could not finish the video")
            if self._video_only is not None and self.format is not None and self.format.encoder == "gif":
                self._write_gif()
            elif self._video_only is not None:
                self._add_audio()
            self._publish()
        except BaseException:
            self.abort()
            raise
        self._done = True

    def abort(self) -> None:
        """Kill ffmpeg and delete the temporary output; the destination stays untouched."""
        self._done = True
        if self._process is not None:
            assert self._stderr is not None
            _stop(self._process, self._stderr, kill=True)
            self._process = None
        if self._muxer is not None:
            try:
                self._muxer.close()
            except (FFmpegError, OSError, ValueError):
                pass  # its pipe is closed already; there is nothing left to flush
            self._muxer = None
        for temp in (self._video_only, self._palette, self._temp):
            if temp is not None and temp.is_dir():
                shutil.rmtree(temp, ignore_errors=True)
            elif temp is not None:
                temp.unlink(missing_ok=True)
        self._video_only = self._palette = self._temp = None

    def _temp_sibling(self, tag: str = "", suffix: str | None = None) -> Path:
        if suffix is None:
            suffix = self.path.suffix if self.kind == "video" else ""
        return self.path.parent / f".{self.path.name}.partial-{self._token}-pid{os.getpid()}{tag}{suffix}"

    def _open(self, shape: tuple[int, int]) -> None:
        remove_dead_partials(self.path)
        self._temp = self._temp_sibling()
        if self.kind == "folder":
            try:
                self._temp.mkdir()
            except OSError as error:
                raise OutputError(f"{self.path}: cannot create the output folder: {error.strerror}") from None
            return
        # With audio, frames are encoded first and the audio is added when the length of the
        # video is known: ffmpeg's -shortest lets padded audio run up to a quarter second past
        # the last frame, depending on how fast frames arrive.
        encode_to = self._temp
        if self._audio_source() is not None:
            encode_to = self._video_only = self._temp_sibling("-video")
        height, width = shape
        out_width, out_height = written_size(self.path, self.size or (width, height))
        rate = f"{self.fps.numerator}/{self.fps.denominator}"
        assert self.format is not None
        options = self._encoder_options()
        if self.timestamps is None:
            frames_in = ffmpeg.input(
                "pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=rate
            )
        else:
            # Raw frames carry no timestamps; NUT packets do, so frames go to ffmpeg in NUT
            # and every one keeps its own time. B-frames would make x264 derive decoding times
            # that mp4 and mov turn into wrong frame durations when the spacing varies.
            frames_in = ffmpeg.input("pipe:", format="nut")
            options.update(fps_mode="passthrough", enc_time_base="demux", bf=0)
        if self.format.encoder == "gif":
            # Frames kept losslessly (FFV1, RGB) until the whole clip's palette is known; NUT
            # keeps their times in the rate's own time base, so GIF's rounding is the only one.
            encode_to = self._video_only = self._temp_sibling("-frames", ".nut")
            video = frames_in.video.filter("scale", out_width, out_height, flags="lanczos").filter("format", "bgr0")
        else:
            video = self._to_yuv(frames_in.video, out_width, out_height)
            if encode_to == self._temp:
                options.update(self._container_options())
        spec = ffmpeg.output(video, _ffmpeg_path(encode_to), **options).overwrite_output()
        self._process, self._stderr = _start(spec, pipe_stdin=True)
        if self.timestamps is not None:
            self._open_muxer(width, height)

    def _to_yuv(self, video: ffmpeg.nodes.FilterableStream, width: int, height: int) -> ffmpeg.nodes.FilterableStream:
        """RGB frames scaled to ``width`` x ``height`` and converted to tagged 4:2:0 YUV."""
        matrix, range_, primaries, transfer = self._output_colors()
        video = video.filter(
            "scale", width, height, flags="lanczos", out_color_matrix=_SCALE_MATRICES[matrix], out_range=range_
        ).filter("format", "yuv420p")
        # The encoder takes its tags from the frames, so they are stamped on the frames.
        stamps = dict(colorspace=matrix, range=range_)
        if primaries is not None:
            stamps["color_primaries"] = primaries
        if transfer is not None:
            stamps["color_trc"] = transfer
        return video.filter("setparams", **stamps)

    def _output_colors(self) -> tuple[str, str, str | None, str | None]:
        """The matrix, range, primaries and transfer to convert with and tag the output with.

        A tagged source keeps its tags, so that its colours come back as they were read;
        the matrix falls back to BT.709 where the scale filter cannot convert with the source's
        (and is then tagged as BT.709). Untagged sources are written as BT.709, which players
        agree on, where untagged video gets BT.601 or BT.709 depending on the player.
        """
        tags = self.color
        if tags is None or not tags.tagged:
            return "bt709", "tv", "bt709", "bt709"
        matrix = tags.matrix if tags.matrix in _SCALE_MATRICES else "bt709"
        return matrix, tags.range or "tv", tags.primaries, tags.transfer

    def _open_muxer(self, width: int, height: int) -> None:
        """Start the NUT stream of raw frames on ffmpeg's stdin."""
        assert self._process is not None and self.timestamps is not None
        first = self.timestamps[0]
        ticks = [round((t - first) / _NUT_TIME_BASE) for t in self.timestamps]
        # The last frame lasts one frame at the nominal rate, where the next would have come.
        self._nut_ticks = ticks + [ticks[-1] + max(1, round(1 / (self.fps * _NUT_TIME_BASE)))]
        try:
            self._muxer = av.open(self._process.stdin, mode="w", format="nut")
            stream = self._muxer.add_stream("rawvideo", rate=self.fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "rgb24"
            stream.time_base = stream.codec_context.time_base = _NUT_TIME_BASE
            self._muxer_stream = stream
        except (FFmpegError, OSError, ValueError):
            self._lost_ffmpeg()

    def _encoder_options(self) -> dict[str, object]:
        """ffmpeg's output options for the video encoder of this writer's format."""
        assert self.format is not None
        if self.format.encoder == "gif":
            return dict(vcodec="ffv1")  # the lossless first pass; the GIF comes from it
        if self.format.encoder == "libvpx-vp9":
            # Constant quality: -b:v 0 lifts the bitrate cap libvpx otherwise applies.
            quality: dict[str, object] = {"lossless": 1} if self.crf == 0 else {"crf": _VP9_CRF, "b:v": 0}
            return dict(vcodec="libvpx-vp9", pix_fmt="yuv420p", **quality, **{"row-mt": 1, "cpu-used": 2})
        return dict(vcodec=self.format.encoder, crf=self.crf, pix_fmt="yuv420p")

    def _container_options(self) -> dict[str, object]:
        options: dict[str, object] = {"metadata": f"comment={SIGNATURE}"}
        if self.path.suffix.lower() == ".mp4":
            options["movflags"] = "+faststart"  # index first, so the file plays while downloading
        elif self.path.suffix.lower() == ".gif":
            options["loop"] = 0  # forever
        return options

    def _audio_source(self) -> VideoInfo | None:
        """The clip whose audio goes into the output, if there is audio to carry."""
        source = self.audio_from
        if source is None or not source.has_audio or source.is_image_sequence:
            return None
        if self.format is None or self.format.audio_encoder is None:
            return None  # a folder of PNGs or a GIF
        if self.audio_range is not None and source.duration is not None:
            if self.audio_range[0] >= source.duration:
                return None  # the range starts after the source ends
        return source

    def _add_audio(self) -> None:
        """Mux the trimmed source audio beside the finished video, cut exactly at its end."""
        source = self._audio_source()
        assert source is not None and self._video_only is not None and self._temp is not None
        if self.timestamps is None:
            video_seconds = Fraction(self.frames_written) / self.fps
        else:
            video_seconds = self._nut_ticks[self.frames_written] * _NUT_TIME_BASE
        start, end = self.audio_range if self.audio_range is not None else (0.0, None)
        # The audio is cut on the source's own clock (-copyts), at the time of its first video
        # frame plus the range. Seeking the input instead (-ss) lets the demuxer land wherever
        # its index allows: an AVI whose video has B-frames resumes its audio up to a GOP or
        # more late, and ffmpeg can only trim what comes after the landing point.
        origin = float(self._source_origin(source))
        cut = dict(start=f"{origin + start:.6f}")
        if end is not None:
            cut["end"] = f"{origin + end:.6f}"
        video = ffmpeg.input(_ffmpeg_path(self._video_only))["v:0"]
        audio = (
            ffmpeg.input(_ffmpeg_path(source.path))["a:0"]
            .filter("atrim", **cut)
            .filter("asetpts", f"PTS-{origin + start:.6f}/TB")
            # Silence before audio that starts after the cut (or after the first frame), so
            # the sound keeps its place against the picture; gaps are filled the same way.
            .filter("aresample", **{"async": 1, "first_pts": 0})
            .filter("apad")  # and after a track that ends early, up to the video's end
        )
        assert self.format is not None and self.format.audio_encoder is not None
        spec = ffmpeg.output(
            video, audio, _ffmpeg_path(self._temp),
            vcodec="copy", acodec=self.format.audio_encoder, audio_bitrate=self.format.audio_bitrate,
            t=f"{float(video_seconds):.6f}",
            **self._container_options(),
        ).global_args("-copyts").overwrite_output()  # fmt: skip
        # Tolerate glitches in the source audio rather than lose the finished video over them.
        self._process, self._stderr = _start(spec, exit_on_error=False)
        self._finish_ffmpeg("could not add the audio")
        self._video_only.unlink()
        self._video_only = None

    def _write_gif(self) -> None:
        """Make the GIF from the lossless frames: the palette that suits the whole clip first,
        then every frame mapped to it (two passes, so memory does not grow with the clip)."""
        assert self._video_only is not None and self._temp is not None
        frames = _ffmpeg_path(self._video_only)
        self._palette = self._temp_sibling("-palette", ".png")
        palette = ffmpeg.input(frames).video.filter("palettegen").output(_ffmpeg_path(self._palette), update=1)
        self._process, self._stderr = _start(palette.overwrite_output())
        self._finish_ffmpeg("could not find the GIF's palette")
        # Ordered dithering keeps its pattern still where the picture is; error diffusion's moves
        # from frame to frame, a flicker of its own (measured in the README).
        inputs = [ffmpeg.input(frames).video, ffmpeg.input(_ffmpeg_path(self._palette)).video]
        mapped = ffmpeg.filter(inputs, "paletteuse", dither="bayer")
        # Each frame keeps its time in the first pass's time base until the muxer rounds it to
        # GIF's hundredths; the encoder's default, 1 / the average rate, would merge close frames.
        spec = ffmpeg.output(
            mapped, _ffmpeg_path(self._temp), fps_mode="passthrough", enc_time_base="demux",
            **self._container_options(),
        )  # fmt: skip
        self._process, self._stderr = _start(spec.overwrite_output())
        self._finish_ffmpeg("could not write the GIF")
        _sign_gif(self._temp, self._temp_sibling("-signed", ".gif"))
        for done in (self._video_only, self._palette):
            done.unlink()
        self._video_only = self._palette = None

    def _source_origin(self, source: VideoInfo) -> Fraction:
        """When the first video frame of ``source`` is shown, on the source's own clock, in seconds.

        Read at the constant rate, frames land on the rate's grid from there, within half a
        frame of their own times; read with their timestamps, exactly at them.
        """
        timeline = _timeline(source.path, source.fps, limit=64)  # enough to see past B-frames
        if timeline is None:
            return Fraction(0)
        return (timeline.shift + timeline.ticks[0]) * timeline.time_base

    def _finish_ffmpeg(self, failure: str) -> None:
        assert self._process is not None and self._stderr is not None
        returncode = _stop(self._process, self._stderr, kill=False)
        self._process = None
        if returncode != 0:
            raise OutputError(f"{self.path}: ffmpeg {failure}: {self._stderr.last_error()}")

    def _write_video(self, batch: np.ndarray) -> None:
        assert self._process is not None and self._stderr is not None
        if self._muxer is not None:
            self._mux_frames(batch)
            return
        try:
            self._process.stdin.write(np.ascontiguousarray(batch).tobytes())
        except (BrokenPipeError, ValueError):
            self._lost_ffmpeg()
        self.frames_written += len(batch)

    def _mux_frames(self, batch: np.ndarray) -> None:
        """Send frames as NUT packets, each at its timestamp and lasting until the next one."""
        assert self._muxer is not None and self._muxer_stream is not None and self.timestamps is not None
        if self.frames_written + len(batch) > len(self.timestamps):
            raise ValueError(
                f"{self.frames_written + len(batch)} frames written but only "
                f"{len(self.timestamps)} timestamps given"
            )
        ticks = self._nut_ticks
        try:
            for frame in batch:
                index = self.frames_written
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                picture.pts, picture.time_base = ticks[index], _NUT_TIME_BASE
                for packet in self._muxer_stream.encode(picture):
                    packet.duration = ticks[index + 1] - ticks[index]
                    self._muxer.mux(packet)
                self.frames_written += 1
        except (FFmpegError, OSError, ValueError):
            self._lost_ffmpeg()

    def _close_muxer(self) -> None:
        """Flush the NUT stream and write its trailer, so ffmpeg sees the end of the frames."""
        assert self._muxer is not None and self._muxer_stream is not None
        try:
            for packet in self._muxer_stream.encode(None):
                self._muxer.mux(packet)
            self._muxer.close()
        except (FFmpegError, OSError, ValueError):
            self._lost_ffmpeg()
        self._muxer = None

    def _lost_ffmpeg(self) -> None:
        """ffmpeg went away while frames were being sent: stop it and say why."""
        assert self._process is not None and self._stderr is not None
        self._muxer = None  # its buffers can no longer be flushed anywhere
        _stop(self._process, self._stderr, kill=True)
        self._process = None
        raise OutputError(f"{self.path}: ffmpeg stopped while writing: {self._stderr.last_error()}") from None

    def _write_pngs(self, batch: np.ndarray) -> None:
        assert self._temp is not None
        for frame in batch:
            image = Image.fromarray(frame)
            if self.size is not None and image.size != self.size:
                image = image.resize(self.size, Image.Resampling.LANCZOS)
            try:
                save_png(image, self._temp / f"{self.frames_written:05d}.png")
            except OSError as error:
                raise OutputError(
                    f"{self.path}: cannot write frame {self.frames_written}: {error.strerror or error}"
                ) from None
            self.frames_written += 1

    def _publish(self) -> None:
        assert self._temp is not None
        try:
            if self.kind == "video" or not self.path.exists():
                os.replace(self._temp, self.path)
            else:
                # A folder cannot be renamed over a non-empty one: move the old frames aside
                # first, and put them back if the swap fails.
                old = self.path.parent / f".{self.path.name}.old-{secrets.token_hex(4)}"
                os.replace(self.path, old)
                try:
                    os.replace(self._temp, self.path)
                except OSError:
                    os.replace(old, self.path)
                    raise
                shutil.rmtree(old, ignore_errors=True)
        except OSError as error:
            raise OutputError(
                f"{self.path}: cannot move the finished output into place: {error.strerror or error}"
            ) from None
        self._temp = None
