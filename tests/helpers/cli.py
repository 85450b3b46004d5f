"""The command line as tests drive it: the fast run options, an in-process ``vedit``, the one error line a mistake
ends in, and what streams a written clip holds."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
from typer.testing import CliRunner

from conftest import one_error_line
from vedit.cli import create_app

__all__ = ["FAST", "one_error_line", "streams", "vedit"]

FAST = ["--model", "tiny", "--steps", "2", "--inversion-steps", "2", "--chunk-size", "4", "--quiet"]


def vedit(*args: str, cwd: Path | None = None):
    runner = CliRunner()
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return runner.invoke(create_app(), [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "200"})
    finally:
        os.chdir(old)


def streams(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        info = {
            "codec": video.codec_context.name,
            "pix_fmt": video.codec_context.pix_fmt,
            "size": (video.codec_context.width, video.codec_context.height),
            "fps": Fraction(video.average_rate),
            "frames": frames,
            "audio": None,
        }
    with av.open(str(path)) as container:
        if container.streams.audio:
            audio = container.streams.audio[0]
            info["audio"] = float(audio.duration * audio.time_base) if audio.duration else None
        info["duration"] = container.duration / 1e6 if container.duration else None
    return info
