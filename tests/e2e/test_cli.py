"""The command line end to end: seeds and the inversion reused, inverting to a file, the Python API against the
CLI, a run terminated mid-way."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers.cli import FAST, vedit
from vedit.io.reader import FrameReader

pytestmark = pytest.mark.slow


def test_same_seed_same_frames_and_the_inversion_is_reused(clip, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    args = ["--size", "64x48", "--output-size", "working", *[x for x in FAST if x != "--quiet"]]
    first = vedit("run", clip, "-p", "a watercolor", "-o", a, *args)
    second = vedit("run", clip, "-p", "a watercolor", "-o", b, *args)
    other = vedit("run", clip, "-p", "a pencil sketch", "-o", c, *args)
    assert "inversion computed" in first.stdout
    assert "inversion cached" in second.stdout and "inversion cached" in other.stdout
    frames_a, frames_b, frames_c = (FrameReader(p).read_all() for p in (a, b, c))
    assert frames_a.shape == (12, 48, 64, 3)
    assert np.array_equal(frames_a, frames_b)
    assert not np.array_equal(frames_a, frames_c)


def test_the_seed_draws_the_edit_and_the_spec_the_weights(clip, tmp_path):
    args = ["--size", "64x48", "--output-size", "working", *[x for x in FAST if x != "--quiet"]]
    inverted = vedit("invert", clip, "--size", "64x48", "--model", "tiny", "--steps", "2", "--inversion-steps", "2",
                     "--seed", "3")  # fmt: skip
    assert inverted.exit_code == 0, inverted.output
    assert inverted.stderr.count("vedit: warning: --seed is ignored: inversion draws nothing at random") == 1
    one = vedit("run", clip, "-p", "x", "--seed", "1", "-o", tmp_path / "one", *args)
    two = vedit("run", clip, "-p", "x", "--seed", "2", "-o", tmp_path / "two", *args)
    for result in (one, two):  # one model, so the clip was inverted once, by 'vedit invert'
        text = " ".join(result.stdout.split())
        assert "model tiny (tiny:seed0)" in text and "inversion cached" in text, text
    assert not np.array_equal(FrameReader(tmp_path / "one").read_all(), FrameReader(tmp_path / "two").read_all())
    other = vedit("run", clip, "-p", "x", "--seed", "1", "-o", tmp_path / "other", *args, "--model", "tiny@1")
    text = " ".join(other.stdout.split())
    assert "model tiny@1 (tiny:seed1)" in text and "inversion computed" in text, text


def test_invert_to_a_file_then_edit_from_it(clip, tmp_path):
    traj = tmp_path / "clip.safetensors"
    result = vedit(
        "invert", clip, "--size", "64x48", "--model", "tiny", "--steps", "2", "--inversion-steps", "4", "-o", traj
    )
    assert result.exit_code == 0, result.output
    assert "12 frames, 2 stored timesteps (noisiest t=751)" in result.stdout
    from safetensors import safe_open

    with safe_open(str(traj), "pt") as f:
        meta = f.metadata()
        assert meta["format"] == "vedit-trajectory/1" and json.loads(meta["timesteps"]) == [501, 1]
        assert set(f.keys()) == {"clean", "latents_t0501", "latents_t0001", "latents_t0751"}
        assert tuple(f.get_tensor("latents_t0751").shape) == (12, 4, 6, 8)
    listing = vedit("cache", "list")
    assert "1 entries" in listing.stdout
    via_file = vedit(
        "run",
        clip,
        "-p",
        "x",
        "--size",
        "64x48",
        "--inversion",
        traj,
        "--no-cache",
        "-o",
        tmp_path / "f",
        "--model",
        "tiny",
        "--steps",
        "2",
        "--chunk-size",
        "4",
    )
    via_cache = vedit(
        "run",
        clip,
        "-p",
        "x",
        "--size",
        "64x48",
        "--inversion-steps",
        "4",
        "-o",
        tmp_path / "g",
        "--model",
        "tiny",
        "--steps",
        "2",
        "--chunk-size",
        "4",
    )
    assert "inversion file" in via_file.stdout and "inversion cached" in via_cache.stdout
    assert np.array_equal(FrameReader(tmp_path / "f").read_all(), FrameReader(tmp_path / "g").read_all())
    cleared = vedit("cache", "clear")
    assert "removed 1 cached inversions" in cleared.stdout
    assert "no cached inversions" in vedit("cache", "list").stdout


def test_python_api_matches_the_cli(clip, tmp_path):
    import vedit as api

    result = api.edit(
        clip,
        tmp_path / "api",
        prompt="x",
        model="tiny",
        steps=2,
        inversion_steps=2,
        chunk_size=4,
        size="64x48",
        output_size="working",
    )
    cli = vedit("run", clip, "-p", "x", "--size", "64x48", "--output-size", "working", "-o", tmp_path / "cli", *FAST)
    assert cli.exit_code == 0
    assert result.frames == 12 and result.size == (64, 48) and result.fps == 24
    assert result.forwards_per_frame_step == pytest.approx(3 * (1 + 3 / 12))
    assert np.array_equal(FrameReader(tmp_path / "api").read_all(), FrameReader(tmp_path / "cli").read_all())


def test_a_terminated_run_leaves_no_output(clip, tmp_path):
    """SIGTERM mid-run ends like Ctrl-C: one line, no output file, no temporary left behind."""
    import signal
    import subprocess
    import sys
    import time

    out_dir = tmp_path / "o"
    out_dir.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "vedit",
        "run",
        str(clip),
        "-p",
        "x",
        "--model",
        "tiny",
        "--size",
        "64x48",
        "--steps",
        "200",
        "--inversion-steps",
        "200",
        "--no-cache",
        "-o",
        str(out_dir / "out.mp4"),
    ]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Mid-run: once the run has said something (its progress), not after a fixed time that a loaded machine may
    # spend still importing.
    deadline, said = time.monotonic() + 300, []
    while not said and time.monotonic() < deadline and process.poll() is None:
        said.append(process.stderr.readline())
    assert said and said[0] and process.poll() is None, said
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=180)
    stderr = said[0] + rest
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr.strip().splitlines()[-1]
    assert list(out_dir.iterdir()) == []
