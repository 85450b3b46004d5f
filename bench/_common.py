"""Helpers the benchmark suites share."""

from __future__ import annotations

import json
import platform
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

console = Console()


def synthetic_clip(path: Path, frames: int, size: tuple[int, int], fps: Fraction = Fraction(24)) -> Path:
    """A moving test pattern made with ffmpeg (no file needed on disk beforehand)."""
    from vedit.video import find_ffmpeg

    cmd = [
        find_ffmpeg(), "-v", "error", "-y", "-f", "lavfi",
        "-i", f"testsrc2=size={size[0]}x{size[1]}:rate={fps.numerator}/{fps.denominator}",
        "-frames:v", str(frames), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "10", str(path),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def show(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*[str(cell) for cell in row])
    console.print(table)


def save_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
        console.print(f"saved {path}")
