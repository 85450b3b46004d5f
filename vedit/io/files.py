"""The files vedit writes, kept safe. They are written atomically, through hidden siblings named with
the writer's process id (so that those a killed writer leaves are found and removed), and checked before any
work is done: the output's kind (a video, by its suffix in :data:`OUTPUT_FORMATS`, or a folder of PNG frames),
its folder, and whether an existing file may be replaced (only what vedit wrote, known by its
:data:`SIGNATURE`, unless the caller says so).

The format table and the signature are here rather than in :mod:`vedit.io.writer`, their main user, because
these checks need them and the writer needs these checks.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .. import __version__
from ..errors import OutputError

_OUR_FRAME_NAME = re.compile(r"^\d{5,}\.png$")
SIGNATURE = f"vedit {__version__}"  # how vedit recognises what it wrote: a video's comment, a PNG's Software text


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


def unwritable_suffix(suffix: str) -> str:
    """Why files ending in ``suffix`` cannot be written, and what can."""
    *others, last = OUTPUT_FORMATS
    return f"cannot write {suffix} files; use {', '.join(others)} or {last}, or a folder name for PNG frames"


def written_by_vedit(path: str | os.PathLike) -> bool:
    """Whether vedit wrote the video, the PNG, the GIF or the folder of PNG frames at ``path``:
    its :data:`SIGNATURE` is the container's comment, the PNG's Software text, the GIF's comment
    extension or its first frame's."""
    path = Path(path)
    if path.is_dir():
        frames = sorted(entry for entry in path.iterdir() if _OUR_FRAME_NAME.match(entry.name))
        return bool(frames) and written_by_vedit(frames[0])
    if path.suffix.lower() in (".png", ".gif"):
        try:
            with Image.open(path) as image:
                text = image.info.get("Software") or image.info.get("comment", b"")
        except (OSError, ValueError, Image.DecompressionBombError):
            return False  # not an image at all
        text = text.decode("ascii", "replace") if isinstance(text, bytes) else text
    else:
        import av
        from av.error import FFmpegError

        try:
            with av.open(str(path)) as container:
                text = next((value for key, value in container.metadata.items() if key.lower() == "comment"), "")
        except (FFmpegError, OSError, ValueError, UnicodeDecodeError):
            return False  # not a video at all
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
    kind = output_kind(output)
    out = Path(os.path.abspath(output))  # normalised, so "." and "frames/.." have a real name
    if input_path is not None and same_location(out, Path(input_path)):
        raise OutputError(f"{out}: this is the input; choose a different output path")
    check_output_folder(out)
    if kind == "folder" and out.exists():
        if not out.is_dir():
            raise OutputError(f"{out}: is a file; give a new folder name, or a .mp4/.mov/.mkv path")
        foreign = sorted(entry.name for entry in out.iterdir() if not _OUR_FRAME_NAME.match(entry.name))
        if foreign:
            raise OutputError(f"{out}: folder already holds other files ({foreign[0]}); choose an empty or new folder")
    if kind == "video" and out.exists() and not out.is_file():
        raise OutputError(f"{out}: exists and is not a regular file; choose another output path")
    check_replaceable(out, overwrite)
    return out


def output_kind(output: str | os.PathLike) -> str:
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


def same_location(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return a.resolve() == b.resolve()
