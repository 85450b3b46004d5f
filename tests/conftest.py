"""Shared fixtures: offline, deterministic, small."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

# Tiny models run faster on one thread, and a busy 2-core machine stays responsive.
torch.set_num_threads(1)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
PLUGIN_PKG = Path(__file__).resolve().parent / "plugin_pkg"
SHARED_CLIPS = REPO.parent / "shared" / "clips"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Each test gets its own cache folder and a fresh plugin registry."""
    from vedit import plugins

    monkeypatch.setenv("VEDIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VEDIT_PLUGINS", raising=False)
    monkeypatch.delenv("VEDIT_TRACE_PLUGINS", raising=False)
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture(scope="session")
def example_plugin_site(tmp_path_factory) -> Path:
    """The example third-party plugin package (tests/plugin_pkg), installed offline once per session.

    It is built from a copy in a temporary folder and installed there (``pip --target``): the user's
    environment and the checkout are left exactly as they were.
    """
    work = tmp_path_factory.mktemp("example-plugin")
    source, site = work / "src", work / "site"
    shutil.copytree(PLUGIN_PKG, source)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--target",
        str(site),
        str(source),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    return site


@pytest.fixture
def example_plugin(example_plugin_site, monkeypatch):
    """The example package on ``sys.path`` for one test: only then does vedit find its entry points, so
    no other test sees its plugins (their options would be in every list of flags and defaults)."""
    from vedit import plugins

    monkeypatch.syspath_prepend(str(example_plugin_site))
    plugins.reset()
    yield "vedit-example-plugin"
    for name in [m for m in sys.modules if m.startswith("vedit_example_plugin")]:
        del sys.modules[name]
    plugins.reset()


def ffmpeg() -> str:
    from vedit.io.ffmpeg import find_ffmpeg

    return find_ffmpeg()


def make_clip(
    path: Path,
    *,
    frames: int = 12,
    size: tuple[int, int] = (64, 48),
    fps: Fraction | int = 24,
    audio: bool = False,
    source: str = "testsrc2",
    codec: list[str] | None = None,
) -> Path:
    """A synthetic clip made with ffmpeg (``source`` is any lavfi video source)."""
    rate = f"{Fraction(fps).numerator}/{Fraction(fps).denominator}"
    cmd = [ffmpeg(), "-v", "error", "-y", "-f", "lavfi", "-i", f"{source}=size={size[0]}x{size[1]}:rate={rate}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]
    cmd += ["-frames:v", str(frames)]
    cmd += codec if codec is not None else ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "10"]
    if audio:
        cmd += ["-c:a", "aac", "-shortest"]
    cmd.append(str(path))
    subprocess.run(cmd, check=True, capture_output=True)
    return path


@pytest.fixture
def clip(tmp_path) -> Path:
    return make_clip(tmp_path / "clip.mp4")


def one_error_line(result) -> str:
    """The single ``vedit: error:`` line a CLI mistake ends in (asserting there is exactly one)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("vedit: error: ")
    assert "Traceback" not in result.output
    return lines[0]


def tensor_bytes(path: Path, name: str) -> tuple[int, int]:
    """Where tensor ``name``'s data lie in a safetensors file: (offset, size) in bytes."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        start, stop = json.loads(handle.read(length))[name]["data_offsets"]
    return 8 + length + start, stop - start


def flip_byte(path: Path, offset: int) -> None:
    """Flip every bit of the byte at ``offset``, in place, the file's modification time kept as it was."""
    stat = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0xFF]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
