"""Reading clips and folders of frames as uint8 RGB arrays, and writing them back out.

Frames are streamed through an ffmpeg subprocess (never the whole clip in memory) and picked
by decoded frame index, so ``--frames 10:50:2`` means exactly those frames whatever the
container's timestamps say. Output is written to a hidden sibling and renamed into place
only when everything succeeded, so an interrupted run never leaves half a video behind.

Environment:
    VEDIT_FFMPEG   the ffmpeg binary to use (default: ``ffmpeg`` on PATH, else the one
                   bundled with imageio-ffmpeg).
"""

from __future__ import annotations

import collections
import math
import os
import re
import secrets
import shutil
import subprocess
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Iterator

import av
import ffmpeg
import numpy as np
from av.error import FFmpegError
from PIL import Image

from .errors import ConfigError, InputError, OutputError, VeditError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv"})
FOLDER_FPS = Fraction(24)  # image folders carry no rate; the caller may override it
_OUR_FRAME_NAME = re.compile(r"^\d{5,}\.png$")
_LAST_INTEGER = re.compile(r"(\d+)(?!.*\d)")
_FFMPEG_PREFIX = re.compile(r"^(\[[^\]]*\]\s*)+")


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


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learnt about a clip or a folder of frames."""

    path: Path
    width: int  # stored frame size, before any rotation a player would apply
    height: int
    fps: Fraction
    num_frames: int  # exact for folders and most mp4/mov; otherwise an upper-bound estimate
    has_audio: bool
    duration: float | None  # seconds
    codec: str
    is_image_sequence: bool


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
        if stream.duration and stream.time_base:
            duration: float | None = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        else:
            duration = None
        if stream.frames and stream.frames > 0:
            num_frames = int(stream.frames)
        elif duration:
            # Rounded up (with a little slack for millisecond timestamps) so that the
            # estimate stays an upper bound: the reader never yields more than this.
            num_frames = max(1, math.ceil(duration * fps - 0.05))
        else:
            num_frames = _count_packets(container, stream)
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
        )


def _first_real_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The first video stream that is not cover art, matching ffmpeg's ``0:V:0``."""
    attached_pic = int(av.stream.Disposition.attached_pic)
    for stream in container.streams.video:
        if not int(stream.disposition) & attached_pic:
            return stream
    return None


def _stream_fps(stream: av.video.stream.VideoStream) -> Fraction:
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


def _probe_folder(folder: Path) -> VideoInfo:
    images = _numbered_images(folder)
    if not images:
        raise InputError(
            f"{folder}: no images found; the folder should hold numbered frames such as 00000.png"
        )
    first_size, codec = None, "png"
    for image_path in images:
        try:
            # Image.open reads only the header, so checking every size stays cheap.
            with Image.open(image_path) as image:
                size = image.size
                if first_size is None:
                    first_size, codec = size, (image.format or "png").lower()
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
        if self.start < 0:
            raise ConfigError(f"--frames: start must be 0 or more, got {self.start}")
        if self.stop is not None and self.stop < 0:
            raise ConfigError(
                f"--frames: stop must be 0 or more, got {self.stop}; counting from the end is not supported"
            )
        if self.stop is not None and self.stop <= self.start:
            raise ConfigError(f"--frames: {self} selects no frames; stop must be greater than start")
        if self.step < 1:
            raise ConfigError(f"--frames: step must be 1 or more, got {self.step}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"--max-frames: must be 1 or more, got {self.max_frames}")

    @classmethod
    def parse(cls, text: str | None, max_frames: int | None = None) -> "FrameRange":
        """Parse ``START:STOP:STEP`` where every part is optional (``10:``, ``:50``, ``::2``)."""
        if text is None or not text.strip():
            return cls(max_frames=max_frames)
        parts = text.strip().split(":")
        if len(parts) not in (2, 3):
            raise ConfigError(f"--frames: expected START:STOP:STEP such as 0:100:2, got {text!r}")
        try:
            numbers = [int(part) if part.strip() else None for part in parts]
        except ValueError:
            raise ConfigError(f"--frames: expected whole numbers as in 0:100:2, got {text!r}") from None
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


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``WxH`` (``512x320``) into ``(width, height)``."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text or "")
    if match is None:
        raise ConfigError(f"--size: expected WIDTHxHEIGHT such as 512x512, got {text!r}")
    width, height = int(match.group(1)), int(match.group(2))
    if width < 1 or height < 1:
        raise ConfigError(f"--size: width and height must be positive, got {text!r}")
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
                f"--size: {w}x{h} is not allowed; width and height must be positive multiples of {multiple}"
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


# --------------------------------------------------------------------------- reading


class FrameReader:
    """Streams the selected frames of a clip or image folder as uint8 RGB ``(H, W, 3)`` arrays.

    ``len(reader)`` is exact for image folders. For files it is an upper bound: it trusts the
    container's frame count (or duration x fps when there is none), and some files hold fewer
    frames than they claim; iteration yields at most ``len(reader)`` frames, fewer in that case.
    Each iteration runs its own ffmpeg, which is killed as soon as the last selected frame is
    read or the loop stops early.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        frames: FrameRange = FrameRange(),
        size: tuple[int, int] | None = None,
        info: VideoInfo | None = None,
    ) -> None:
        self.info = info if info is not None else probe(path)
        self.path = Path(path)
        self.frames = frames
        self.indices = frames.indices(self.info.num_frames)
        if size is None:
            size = working_size(
                self.info.width, self.info.height, keep_if_aligned=self.info.is_image_sequence
            )
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be (width, height) with positive sides, got {size}")
        self.size = (int(size[0]), int(size[1]))
        if len(self.indices) == 0:
            raise InputError(self._nothing_selected())

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.info.is_image_sequence:
            return self._read_folder()
        return self._read_file()

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Frames in ``(b, H, W, 3)`` batches; the last one may be shorter."""
        if batch_size < 1:
            raise ConfigError(f"--batch-size: must be 1 or more, got {batch_size}")
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

    def _nothing_selected(self) -> str:
        return (
            f"{self.path}: no frames selected by --frames {self.frames} "
            f"(the clip has {self.info.num_frames} frames); choose a range inside the clip"
        )

    def _read_folder(self) -> Iterator[np.ndarray]:
        images = _numbered_images(self.path)
        source_size = (self.info.width, self.info.height)
        for index in self.indices:
            if index >= len(images):
                break  # files were removed since probing; yield what is there
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
            yield frame

    def _read_file(self) -> Iterator[np.ndarray]:
        width, height = self.size
        frame_bytes = width * height * 3
        wanted = len(self.indices)
        # Map the first real video stream explicitly: ffmpeg would otherwise pick the largest.
        # noautorotate keeps frames as stored, matching the width and height probe reports.
        video = ffmpeg.input(_ffmpeg_path(self.path), noautorotate=None)["V:0"]
        # Constant frame rate at the stream's average rate: a frame the container marks as
        # "repeat the previous one" (AVI drop frames, variable-rate phone clips) still takes its
        # place in time, so indices, frame counts and the output's duration match the source.
        rate = self.info.fps
        video = video.filter("fps", fps=f"{rate.numerator}/{rate.denominator}")
        first, step = self.indices.start, self.indices.step
        if first > 0 or step > 1:
            # Selecting on the decoded frame number `n` is exact where seeking by time is not.
            wanted_n = f"gte(n,{first})*lt(n,{self.indices.stop})*not(mod(n-{first},{step}))"
            video = video.filter("select", wanted_n)
        if self.size != (self.info.width, self.info.height):
            video = video.filter("scale", width, height, flags="lanczos")
        # passthrough: one output frame per selected decoded frame, none duplicated or dropped
        spec = ffmpeg.output(
            video, "pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough",
            an=None, sn=None, dn=None,
        )  # fmt: skip
        process, stderr = _start(spec, pipe_stdout=True)
        produced, leftover, ended = 0, 0, False
        try:
            while produced < wanted:
                # A fresh bytearray per frame: the arrays handed out stay writable and independent.
                buffer = bytearray(frame_bytes)
                got = process.stdout.readinto(buffer)
                if got < frame_bytes:
                    ended, leftover = True, got
                    break
                produced += 1
                yield np.frombuffer(buffer, dtype=np.uint8).reshape(height, width, 3)
        finally:
            # Kill ffmpeg once the last wanted frame is in (it would decode on to the end) or
            # when the consumer stopped early; if it ended on its own, let it exit and report.
            returncode = _stop(process, stderr, kill=not ended)
        if ended:
            if returncode != 0 or leftover:
                raise InputError(
                    f"{self.path}: decoding failed after {produced} frames ({stderr.last_error()}); "
                    "the file looks damaged, re-encode or replace it"
                )
            if produced == 0:
                raise InputError(
                    f"{self.path}: no frames selected by --frames {self.frames}; the clip ends "
                    f"before frame {self.indices.start}, choose a range inside the clip"
                )


# --------------------------------------------------------------------------- writing


def check_output_path(output: str | os.PathLike, input_path: str | os.PathLike | None) -> Path:
    """Refuse an output that cannot or must not be written, before any work is done."""
    kind = _output_kind(output)
    out = Path(os.path.abspath(output))  # normalised, so "." and "frames/.." have a real name
    if input_path is not None and _same_location(out, Path(input_path)):
        raise OutputError(f"{out}: this is the input; choose a different output path")
    parent = out.parent
    if not parent.exists():
        raise OutputError(f"{parent}: output folder does not exist; create it or choose another output path")
    if not parent.is_dir():
        raise OutputError(f"{parent}: is a file, not a folder; choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{parent}: folder is not writable; choose another output path")
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
    return out


def _output_kind(output: str | os.PathLike) -> str:
    """``"video"`` for .mp4/.mov/.mkv, ``"folder"`` for PNG frames; anything else is refused."""
    text = os.fspath(output)
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if not suffix:
        return "folder"
    raise OutputError(
        f"{path}: cannot write {suffix} files; use .mp4, .mov or .mkv, or a folder name for PNG frames"
    )


def _same_location(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return a.resolve() == b.resolve()


def _even(side: int) -> int:
    """Round down to an even number: yuv420p stores colour at half resolution."""
    return max(2, side - side % 2)


class VideoWriter:
    """Writes uint8 RGB frames to an H.264 file or a folder of PNGs, atomically.

    Use it as a context manager: on a clean exit the output is finished and renamed into
    place; on any exception (Ctrl-C included) ffmpeg is killed, the temporary output is
    deleted and the exception goes on. An existing output is replaced only on success.
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
    ) -> None:
        self.path = check_output_path(path, audio_from.path if audio_from is not None else None)
        self.kind = _output_kind(path)
        self.fps = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1_000_000)
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"size must be (width, height) with positive sides, got {size}")
        if audio_range is not None and not 0 <= audio_range[0] < audio_range[1]:
            raise ValueError(f"audio_range must be (start, end) with 0 <= start < end, got {audio_range}")
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be between 0 and 51, got {crf}")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.audio_from = audio_from
        self.audio_range = audio_range
        self.crf = crf
        self.frames_written = 0
        self._frame_shape: tuple[int, int] | None = None
        self._token = secrets.token_hex(4)
        self._temp: Path | None = None
        self._video_only: Path | None = None  # the encoded frames, waiting for their audio
        self._process: subprocess.Popen | None = None
        self._stderr: _StderrTail | None = None
        self._done = False

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
            if self._process is not None:
                self._finish_ffmpeg("could not finish the video")
            if self._video_only is not None:
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
        for temp in (self._video_only, self._temp):
            if temp is not None and temp.is_dir():
                shutil.rmtree(temp, ignore_errors=True)
            elif temp is not None:
                temp.unlink(missing_ok=True)
        self._video_only = self._temp = None

    def _temp_sibling(self, tag: str = "") -> Path:
        suffix = self.path.suffix if self.kind == "video" else ""
        return self.path.parent / f".{self.path.name}.partial-{self._token}{tag}{suffix}"

    def _open(self, shape: tuple[int, int]) -> None:
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
        out_width, out_height = self.size or (width, height)
        out_width, out_height = _even(out_width), _even(out_height)
        rate = f"{self.fps.numerator}/{self.fps.denominator}"
        frames_in = ffmpeg.input(
            "pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=rate
        )
        # Convert with, and tag, BT.709 so players show the colours we meant; untagged
        # video gets BT.601 or BT.709 depending on the player and the resolution.
        video = frames_in.video.filter(
            "scale", out_width, out_height, flags="lanczos", out_color_matrix="bt709", out_range="tv"
        )
        options: dict[str, object] = dict(
            vcodec="libx264",
            crf=self.crf,
            pix_fmt="yuv420p",
            colorspace="bt709",
            color_primaries="bt709",
            color_trc="bt709",
            color_range="tv",
        )
        if encode_to == self._temp:
            options.update(self._container_options())
        spec = ffmpeg.output(video, _ffmpeg_path(encode_to), **options).overwrite_output()
        self._process, self._stderr = _start(spec, pipe_stdin=True)

    def _container_options(self) -> dict[str, object]:
        if self.path.suffix.lower() == ".mp4":
            return {"movflags": "+faststart"}  # index first, so the file plays while downloading
        return {}

    def _audio_source(self) -> VideoInfo | None:
        """The clip whose audio goes into the output, if there is audio to carry."""
        source = self.audio_from
        if source is None or not source.has_audio or source.is_image_sequence:
            return None
        if self.audio_range is not None and source.duration is not None:
            if self.audio_range[0] >= source.duration:
                return None  # the range starts after the source ends
        return source

    def _add_audio(self) -> None:
        """Mux the trimmed source audio beside the finished video, cut exactly at its end."""
        source = self._audio_source()
        assert source is not None and self._video_only is not None and self._temp is not None
        trim = {} if self.audio_range is None else dict(ss=self.audio_range[0], to=self.audio_range[1])
        video = ffmpeg.input(_ffmpeg_path(self._video_only))["v:0"]
        audio = ffmpeg.input(_ffmpeg_path(source.path), **trim)["a:0"]
        video_seconds = Fraction(self.frames_written) / self.fps
        spec = ffmpeg.output(
            video, audio, _ffmpeg_path(self._temp),
            vcodec="copy", af="apad", acodec="aac", audio_bitrate="192k",
            t=f"{float(video_seconds):.6f}",  # apad fills a short track with silence up to here
            **self._container_options(),
        ).overwrite_output()  # fmt: skip
        # Tolerate glitches in the source audio rather than lose the finished video over them.
        self._process, self._stderr = _start(spec, exit_on_error=False)
        self._finish_ffmpeg("could not add the audio")
        self._video_only.unlink()
        self._video_only = None

    def _finish_ffmpeg(self, failure: str) -> None:
        assert self._process is not None and self._stderr is not None
        returncode = _stop(self._process, self._stderr, kill=False)
        self._process = None
        if returncode != 0:
            raise OutputError(f"{self.path}: ffmpeg {failure}: {self._stderr.last_error()}")

    def _write_video(self, batch: np.ndarray) -> None:
        assert self._process is not None and self._stderr is not None
        try:
            self._process.stdin.write(np.ascontiguousarray(batch).tobytes())
        except (BrokenPipeError, ValueError):
            _stop(self._process, self._stderr, kill=True)
            self._process = None
            raise OutputError(
                f"{self.path}: ffmpeg stopped while writing: {self._stderr.last_error()}"
            ) from None
        self.frames_written += len(batch)

    def _write_pngs(self, batch: np.ndarray) -> None:
        assert self._temp is not None
        for frame in batch:
            image = Image.fromarray(frame)
            if self.size is not None and image.size != self.size:
                image = image.resize(self.size, Image.Resampling.LANCZOS)
            try:
                # A light compression level: PNG's default one is several times slower.
                image.save(self._temp / f"{self.frames_written:05d}.png", compress_level=1)
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
