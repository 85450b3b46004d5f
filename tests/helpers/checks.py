"""What the checks on options, inputs and outputs share: a guard against heavy work, a refused run's line, a
configuration for the Python API, a trajectory file, files vedit did not write, and a truncated clip."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import make_clip
from helpers.cli import one_error_line, vedit


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Fail the test if the model is loaded or a frame is decoded: the check must come first."""
    import vedit.io.reader
    import vedit.model.loading

    def refuse(*args, **kwargs):
        raise AssertionError("heavy work started before the options were checked")

    monkeypatch.setattr(vedit.model.loading, "load_model", refuse)
    monkeypatch.setattr(vedit.io.reader.FrameReader, "__iter__", refuse)


def _refused(tmp_path, clip, *args, code=4):
    out = tmp_path / "never.mp4"
    result = vedit("run", clip, "-p", "x", "--size", "64x48", "-o", out, *args)
    assert result.exit_code == code, result.output
    assert not out.exists()
    assert not (tmp_path / "cache").exists()  # nothing was inverted or cached
    return one_error_line(result)


def api_config():
    from vedit.config import RunConfig

    return RunConfig(prompt="x", model="tiny", steps=2, inversion_steps=2, chunk_size=4, size="64x48")


# --------------------------------------------------------------------------- trajectory files


@pytest.fixture
def trajectory_file(clip, tmp_path):
    path = tmp_path / "clip.safetensors"
    result = vedit(
        "invert",
        clip,
        "--size",
        "64x48",
        "--model",
        "tiny",
        "--steps",
        "2",
        "--inversion-steps",
        "2",
        "--source-prompt",
        "a test card",
        "-o",
        path,
        "--no-cache",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    return path


def _with_file(clip, tmp_path, path, *args):
    out = tmp_path / "f.mp4"
    return vedit(
        "run",
        clip,
        "-p",
        "x",
        "--size",
        "64x48",
        "--inversion",
        path,
        "--no-cache",
        "-o",
        out,
        "--model",
        "tiny",
        "--steps",
        "2",
        "--chunk-size",
        "4",
        "--quiet",
        *args,
    ), out


# --------------------------------------------------------------------------- outputs vedit did not write


@pytest.fixture
def theirs(tmp_path):
    """A file vedit did not write of each kind vedit writes, with its bytes as they were."""
    files = {
        "video": make_clip(tmp_path / "theirs.mp4", frames=3, source="mandelbrot"),
        "sheet": tmp_path / "theirs.png",
        "trajectory": tmp_path / "theirs.safetensors",
        "report": tmp_path / "theirs.json",
    }
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(files["sheet"])
    files["trajectory"].write_bytes(b"someone's tensors")
    files["report"].write_text('{"format": "their-tool/1"}')
    return {kind: (path, path.read_bytes()) for kind, path in files.items()}


def _commands(clip, theirs) -> dict[str, list]:
    tiny = ["--model", "tiny", "--steps", "2", "--inversion-steps", "2", "--size", "64x48", "--quiet"]
    return {
        "video": ["run", clip, "-p", "x", "-o", theirs["video"][0], "--chunk-size", "4", *tiny],
        "sheet": ["run", clip, "-p", "x", "--preview", "-o", theirs["sheet"][0], "--chunk-size", "4", *tiny],
        "trajectory": ["invert", clip, "-o", theirs["trajectory"][0], *tiny],
        "report": ["eval", clip, "--source", clip, "--json", theirs["report"][0]],
    }


# --------------------------------------------------------------------------- clips that are not what they say


@pytest.fixture(scope="module")
def truncated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("truncated")
    whole = make_clip(
        folder / "whole.mp4",
        frames=96,
        size=(64, 48),
        audio=True,
        codec=["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "10", "-movflags", "+faststart"],
    )
    cut = folder / "cut.mp4"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return cut
