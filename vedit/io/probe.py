"""What a clip or a folder of frames holds, learnt before anything is read: :func:`probe` and its
:class:`VideoInfo` (the displayed size, the rate, the frame count and where it comes from, the rotation, the
colour tags, the pixel aspect and format, the streams that reading leaves out), and a folder's numbered images
in frame order.

``round_half_up``, ffmpeg's rounding, is here as the lowest module that needs it; the timing and the writer
round with it too.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from ..errors import InputError

if TYPE_CHECKING:  # imported where a video is read or written: folders of frames need neither
    import av

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
FOLDER_FPS = Fraction(24)  # image folders carry no rate; the caller may override it
_LAST_INTEGER = re.compile(r"(\d+)(?!.*\d)")


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
    import av
    from av.error import FFmpegError

    unreadable = f"{path}: not a readable video; give a video file (mp4, mov, mkv, avi, webm...) or a folder of frames"
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
        stream = first_real_video_stream(container)
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
            num_frames, frames_from = count_packets(container, stream), "count"
        stored_size, pixel_aspect = (width, height), _pixel_aspect(stream)
        width = max(1, round_half_up(width * pixel_aspect.numerator, pixel_aspect.denominator))
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
    from av.error import FFmpegError

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


def round_half_up(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded to nearest, halves away from zero, as ffmpeg does."""
    if numerator < 0:
        return -round_half_up(-numerator, denominator)
    return (2 * numerator + denominator) // (2 * denominator)


def _unused_streams(
    container: av.container.InputContainer, video: av.video.stream.VideoStream
) -> tuple[tuple[str, str], ...]:
    """(kind, codec) of every stream of ``container`` that reading and writing leave out."""
    import av

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


def first_real_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The first video stream that is not cover art, matching ffmpeg's ``0:V:0``."""
    import av

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


def count_packets(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """Count non-empty packets: the last resort when a stream states neither length nor duration."""
    from av.error import FFmpegError

    try:
        return sum(1 for packet in container.demux(stream) if packet.size)
    except FFmpegError:
        raise InputError(f"{container.name}: not a readable video; the file looks damaged") from None


def numbered_images(folder: Path) -> list[Path]:
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
PIL_PIXEL_FORMATS = {"RGB": "rgb24", "RGBA": "rgba", "L": "gray", "LA": "ya8", "P": "pal8", "I;16": "gray16le"}


def _probe_folder(folder: Path) -> VideoInfo:
    images = numbered_images(folder)
    if not images:
        raise InputError(f"{folder}: no images found; the folder should hold numbered frames such as 00000.png")
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
        pixel_format=PIL_PIXEL_FORMATS.get(mode, ""),
    )
