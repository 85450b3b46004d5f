"""Writing uint8 RGB frames: :class:`VideoWriter` (H.264 in mp4/mov/mkv, VP9 in WebM, GIF, or a
folder of PNGs), and what an output does to frames before any is written: the size they are written at, the
encoders it needs, what becomes of their timing (GIF's whole hundredths of a second) and what of the source it
cannot hold.

Output keeps the source's colour tags and, given timestamps, its frame timing; the source's
audio is cut on the source's own clock, so it keeps its place against the first frame. It
is written to a hidden sibling and renamed into place only when everything succeeded, so an
interrupted run never leaves half a video behind. Every file written is signed
(:data:`vedit.io.files.SIGNATURE` in a video's comment, a PNG's Software text, a GIF's comment),
and an existing output without the signature is replaced only when the caller says so.

:func:`frame_timing` and :func:`lost_in_writing` are here rather than with the timing and the probe because
what they say depends on the output's format.
"""

from __future__ import annotations

import functools
import math
import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
from PIL import Image, PngImagePlugin

from ..errors import OutputError
from .ffmpeg import StderrTail, ffmpeg_path, find_ffmpeg, start_ffmpeg, stop_ffmpeg
from .files import OUTPUT_FORMATS, SIGNATURE, OutputFormat, check_output_path, output_kind, remove_dead_partials
from .probe import ColorTags, VideoInfo, round_half_up
from .timing import read_timeline

if TYPE_CHECKING:  # imported where a video is read or written: folders of frames need neither
    import av
    import ffmpeg

_NUT_TIME_BASE = Fraction(1, 1_000_000)  # frames written with timestamps are placed to the microsecond
_VP9_CRF = 24  # constant quality (with -b:v 0); measured against x264's 18 in the README
_GIF_TICK = Fraction(1, 100)  # GIF delays are whole hundredths of a second
_GIF_SHORTEST = 2  # browsers show a frame of fewer hundredths for 10 of them
# The matrices ffmpeg's scale filter can convert RGB with, by their colorspace names.
_SCALE_MATRICES = {
    "bt709": "bt709", "fcc": "fcc", "bt470bg": "bt470", "smpte170m": "smpte170m",
    "smpte240m": "smpte240m", "bt2020nc": "bt2020",
}  # fmt: skip


def output_format(output: str | os.PathLike) -> OutputFormat | None:
    """How ``output`` is written; ``None`` for a folder of PNG frames."""
    if output_kind(output) == "folder":
        return None
    return OUTPUT_FORMATS[Path(os.fspath(output)).suffix.lower()]


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
        return tuple(max(1, round_half_up(side.numerator, side.denominator)) for side in (width, height))
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
    depth, alpha, chroma = sample_facts(info.pixel_format)
    if depth > 8:
        lost.append(f"{depth}-bit samples ({info.pixel_format}) written as 8-bit")
    if alpha:
        lost.append(f"the alpha channel ({info.pixel_format})")
    if written is not None and written.even_sides:  # 4:2:0 video
        if chroma in ("4:4:4", "4:2:2", "4:4:0", "4:1:1"):  # finer than 4:2:0 one way or both
            lost.append(f"{chroma} colour ({info.pixel_format}) written as 4:2:0")
    return lost


# The pixel formats a folder of frames is read in (Pillow's modes, vedit.io.probe.PIL_PIXEL_FORMATS), known here
# so that folders of frames are edited without PyAV; tests/io/test_writer.py holds them to PyAV's own answers.
FOLDER_SAMPLES = {  # pixel format: (bits per sample, alpha, chroma subsampling)
    "rgb24": (8, False, "4:4:4"), "rgba": (8, True, "4:4:4"), "gray": (8, False, None), "ya8": (8, True, None),
    "pal8": (8, False, "4:4:4"), "gray16le": (16, False, None),
}  # fmt: skip


def sample_facts(pixel_format: str) -> tuple[int, bool, str | None]:
    """(bits per sample, whether it has an alpha channel, chroma subsampling) of an ffmpeg pixel format."""
    if pixel_format in FOLDER_SAMPLES:
        return FOLDER_SAMPLES[pixel_format]
    import av

    samples = av.VideoFormat(pixel_format, 16, 16)
    depth = max(component.bits for component in samples.components)
    return depth, any(component.is_alpha for component in samples.components), _chroma_subsampling(samples)


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
        self.kind = output_kind(path)
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
        self._stderr: StderrTail | None = None
        self._done = False
        check_encoders(self.path, audio=self._audio_source() is not None)

    def __enter__(self) -> VideoWriter:
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
            raise ValueError(f"frames must be uint8 (H, W, 3) or (b, H, W, 3), got {batch.dtype} {batch.shape}")
        if len(batch) == 0:
            return
        shape = (int(batch.shape[1]), int(batch.shape[2]))
        if self._frame_shape is None:
            self._frame_shape = shape
            self._open(shape)
        elif shape != self._frame_shape:
            first_height, first_width = self._frame_shape
            raise ValueError(
                f"all frames must share one size: got {shape[1]}x{shape[0]} after {first_width}x{first_height}"
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
            stop_ffmpeg(self._process, self._stderr, kill=True)
            self._process = None
        if self._muxer is not None:
            from av.error import FFmpegError

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
        import ffmpeg

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
            frames_in = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", framerate=rate)
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
        spec = ffmpeg.output(video, ffmpeg_path(encode_to), **options).overwrite_output()
        self._process, self._stderr = start_ffmpeg(spec, pipe_stdin=True)
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
        import av
        from av.error import FFmpegError

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
        import ffmpeg

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
        video = ffmpeg.input(ffmpeg_path(self._video_only))["v:0"]
        audio = (
            ffmpeg.input(ffmpeg_path(source.path))["a:0"]
            .filter("atrim", **cut)
            .filter("asetpts", f"PTS-{origin + start:.6f}/TB")
            # Silence before audio that starts after the cut (or after the first frame), so
            # the sound keeps its place against the picture; gaps are filled the same way.
            .filter("aresample", **{"async": 1, "first_pts": 0})
            .filter("apad")  # and after a track that ends early, up to the video's end
        )
        assert self.format is not None and self.format.audio_encoder is not None
        spec = ffmpeg.output(
            video, audio, ffmpeg_path(self._temp),
            vcodec="copy", acodec=self.format.audio_encoder, audio_bitrate=self.format.audio_bitrate,
            t=f"{float(video_seconds):.6f}",
            **self._container_options(),
        ).global_args("-copyts").overwrite_output()  # fmt: skip
        # Tolerate glitches in the source audio rather than lose the finished video over them.
        self._process, self._stderr = start_ffmpeg(spec, exit_on_error=False)
        self._finish_ffmpeg("could not add the audio")
        self._video_only.unlink()
        self._video_only = None

    def _write_gif(self) -> None:
        """Make the GIF from the lossless frames: the palette that suits the whole clip first,
        then every frame mapped to it (two passes, so memory does not grow with the clip)."""
        import ffmpeg

        assert self._video_only is not None and self._temp is not None
        frames = ffmpeg_path(self._video_only)
        self._palette = self._temp_sibling("-palette", ".png")
        palette = ffmpeg.input(frames).video.filter("palettegen").output(ffmpeg_path(self._palette), update=1)
        self._process, self._stderr = start_ffmpeg(palette.overwrite_output())
        self._finish_ffmpeg("could not find the GIF's palette")
        # Ordered dithering keeps its pattern still where the picture is; error diffusion's moves
        # from frame to frame, a flicker of its own (measured in the README).
        inputs = [ffmpeg.input(frames).video, ffmpeg.input(ffmpeg_path(self._palette)).video]
        mapped = ffmpeg.filter(inputs, "paletteuse", dither="bayer")
        # Each frame keeps its time in the first pass's time base until the muxer rounds it to
        # GIF's hundredths; the encoder's default, 1 / the average rate, would merge close frames.
        spec = ffmpeg.output(
            mapped, ffmpeg_path(self._temp), fps_mode="passthrough", enc_time_base="demux",
            **self._container_options(),
        )  # fmt: skip
        self._process, self._stderr = start_ffmpeg(spec.overwrite_output())
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
        timeline = read_timeline(source.path, source.fps, limit=64)  # enough to see past B-frames
        if timeline is None:
            return Fraction(0)
        return (timeline.shift + timeline.ticks[0]) * timeline.time_base

    def _finish_ffmpeg(self, failure: str) -> None:
        assert self._process is not None and self._stderr is not None
        returncode = stop_ffmpeg(self._process, self._stderr, kill=False)
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
        import av
        from av.error import FFmpegError

        assert self._muxer is not None and self._muxer_stream is not None and self.timestamps is not None
        if self.frames_written + len(batch) > len(self.timestamps):
            raise ValueError(
                f"{self.frames_written + len(batch)} frames written but only {len(self.timestamps)} timestamps given"
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
        from av.error import FFmpegError

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
        stop_ffmpeg(self._process, self._stderr, kill=True)
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
