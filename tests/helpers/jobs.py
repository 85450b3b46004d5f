"""Job files for ``vedit batch`` as the batch tests write them, the clips they run on, and the command line as
they drive it (a wider terminal than :mod:`helpers.cli`'s, so a plan's long lines stay whole)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from typer.testing import CliRunner

from conftest import make_clip
from vedit.cli import create_app

__all__ = ["PROMPTS", "RUN", "batch_clips", "job_file", "toml_value", "vedit"]

# Small enough that an edit takes a few seconds on one CPU thread with the tiny model.
RUN = {"model": "tiny", "steps": 1, "inversion-steps": 1, "chunk-size": 4, "source-prompt": "a test pattern"}
PROMPTS = ["a watercolor painting", "an oil painting"]


def vedit(*args, cwd: Path | None = None):
    app = create_app()
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "250"})
    finally:
        os.chdir(old)


def toml_value(value) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def job_file(path: Path, jobs: list[dict], run: dict | None = None, extra: str = "") -> Path:
    lines = ["[run]", *(f"{k} = {toml_value(v)}" for k, v in (RUN if run is None else run).items()), extra]
    for job in jobs:
        lines += ["", "[[job]]", *(f"{k} = {toml_value(v)}" for k, v in job.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def batch_clips(folder: Path) -> Path:
    """Two 4-frame clips in ``folder`` (a folder of their own): pattern.mp4 and fractal.mp4."""
    make_clip(folder / "pattern.mp4", frames=4, size=(32, 32))
    make_clip(folder / "fractal.mp4", frames=4, size=(32, 32), source="mandelbrot")
    return folder
