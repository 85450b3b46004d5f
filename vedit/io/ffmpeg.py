"""Running ffmpeg: finding the binary, starting an ffmpeg command quietly in a session of its own,
stopping it, and the tail of its stderr that error messages quote.

Environment:
    VEDIT_FFMPEG   the ffmpeg binary to use (default: ``ffmpeg`` on PATH, else the one
                   bundled with imageio-ffmpeg).
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ..errors import ConfigError, VeditError

if TYPE_CHECKING:  # imported where a video is read or written: folders of frames need neither
    import ffmpeg

_FFMPEG_PREFIX = re.compile(r"^(\[[^\]]*\]\s*)+")


def find_ffmpeg() -> str:
    """The ffmpeg binary: ``$VEDIT_FFMPEG``, else ``ffmpeg`` on PATH, else imageio-ffmpeg's."""
    override = os.environ.get("VEDIT_FFMPEG")
    if override:
        found = shutil.which(override)
        if found is None:
            raise ConfigError(f"VEDIT_FFMPEG={override}: no such program; point it at an ffmpeg binary or unset it")
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


class StderrTail:
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


def start_ffmpeg(
    stream_spec: ffmpeg.nodes.OutputStream,
    *,
    pipe_stdin: bool = False,
    pipe_stdout: bool = False,
    exit_on_error: bool = True,
) -> tuple[subprocess.Popen, StderrTail]:
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
    return process, StderrTail(process.stderr)


def ffmpeg_path(path: Path) -> str:
    """``path`` as ffmpeg must see it: ``take1:raw.mp4`` would otherwise name a protocol."""
    return f"file:{path}"


def stop_ffmpeg(process: subprocess.Popen, stderr: StderrTail, *, kill: bool) -> int:
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
