"""``vedit run`` as a user meets it: real clips in, real clips out, one-line errors."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import pytest

from conftest import SHARED_CLIPS, make_clip
from helpers.cli import FAST, one_error_line, streams, vedit
from vedit.io.reader import FrameReader


@pytest.fixture(scope="module")
def clip_ntsc(tmp_path_factory):
    """250x170 at 30000/1001 fps with an audio track: odd size, NTSC rate."""
    return make_clip(
        tmp_path_factory.mktemp("clips") / "ntsc.mp4", frames=14, size=(250, 170), fps=Fraction(30000, 1001), audio=True
    )


def test_run_keeps_rate_size_and_audio_of_the_source(clip_ntsc, tmp_path):
    (tmp_path / "o").mkdir()
    out = tmp_path / "o" / "out.mp4"
    result = vedit("run", clip_ntsc, "--prompt", "a watercolor", "--size", "64x48", "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    info = streams(out)
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["size"] == (250, 170)
    assert info["fps"] == Fraction(30000, 1001)
    assert info["frames"] == 14
    assert info["audio"] == pytest.approx(14 * 1001 / 30000, abs=0.08)
    assert [p.name for p in out.parent.iterdir()] == ["out.mp4"]  # no temporary left behind


def test_frame_range_and_stride_trim_video_and_audio(clip_ntsc, tmp_path):
    out = tmp_path / "part.mp4"
    result = vedit(
        "run",
        clip_ntsc,
        "-p",
        "x",
        "--size",
        "64x48",
        "--frames",
        "2:12:2",
        "--output-size",
        "working",
        "-o",
        out,
        *FAST,
    )
    assert result.exit_code == 0, result.output
    info = streams(out)
    assert info["frames"] == 5
    assert info["fps"] == Fraction(30000, 1001) / 2  # real-time playback of the kept frames
    assert info["size"] == (64, 48)
    assert info["audio"] == pytest.approx(10 * 1001 / 30000, abs=0.08)


def test_summary_reports_the_run(clip, tmp_path):
    out = tmp_path / "o.mp4"
    args = [a for a in FAST if a != "--quiet"]
    result = vedit("run", clip, "-p", "x", "--size", "64x48", "-o", out, *args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    for fragment in (
        "frames 12",
        "64x48 working, 64x48 written",
        "pnp + tokenflow, 2 steps, inversion computed",
        "(3.750 per frame per step)",
        str(out),
    ):
        assert fragment in text, fragment


@pytest.mark.parametrize(
    "editor, propagator", [("img2img", "none"), ("img2img", "tokenflow"), ("sdedit", "none"), ("pnp", "none")]
)
def test_every_editor_and_propagator_pair_runs(clip, tmp_path, editor, propagator):
    out = tmp_path / "o"
    result = vedit(
        "run", clip, "-p", "x", "--size", "64x48", "--editor", editor, "--propagator", propagator, "-o", out, *FAST
    )
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.png"))) == 12


def test_a_folder_of_aligned_frames_is_used_as_is(tmp_path):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / f"f_{i}.png")
    out = tmp_path / "out"
    result = vedit("run", folder, "-p", "x", "--editor", "img2img", "--propagator", "none", "-o", out, *FAST[:-1])
    assert result.exit_code == 0, result.output
    assert "56x40 working, 56x40 written" in result.stdout
    assert FrameReader(out).read_all().shape == (5, 40, 56, 3)


def test_real_clip_from_the_shared_folder(tmp_path):
    tree = SHARED_CLIPS / "tree.avi"
    if not tree.exists():
        pytest.skip("../shared/clips is not beside the checkout")
    out = tmp_path / "tree.mp4"
    result = vedit("run", tree, "-p", "autumn", "--size", "64x48", "--max-frames", "6", "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    info = streams(out)
    assert (info["size"], info["fps"], info["frames"]) == ((320, 240), Fraction(1_000_000, 66_667), 6)


def _bad(tmp_path, *args):
    out = tmp_path / "never.mp4"
    result = vedit("run", *args, "-o", out, *FAST)
    assert result.exit_code != 0
    assert not out.exists()
    return one_error_line(result)


def test_bad_inputs_end_in_one_line(clip, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a video")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(clip.read_bytes()[: len(clip.read_bytes()) // 3])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(5000))
    keyframes = tmp_path / "k.json"
    keyframes.write_text('{"keyframes": [[9, 9, 9]]}')
    assert "no such file" in _bad(tmp_path, tmp_path / "missing.mp4", "-p", "x")
    assert "notes.txt" in _bad(tmp_path, text, "-p", "x")
    assert "garbage.mp4" in _bad(tmp_path, garbage, "-p", "x")
    assert "no frames selected" in _bad(tmp_path, clip, "-p", "x", "--frames", "100:")
    assert "unknown editor 'paint'" in _bad(tmp_path, clip, "-p", "x", "--editor", "paint")
    assert "unknown propagator" in _bad(tmp_path, clip, "-p", "x", "--propagator", "magic")
    assert "--prompt" in _bad(tmp_path, clip)
    assert "--size" in _bad(tmp_path, clip, "-p", "x", "--size", "63x48")
    assert "keyframe schedule" in _bad(tmp_path, clip, "-p", "x", "--size", "64x48", "--keyframes", keyframes)
    missing_model = vedit("run", clip, "-p", "x", "--model", "does-not/exist", "-o", tmp_path / "m.mp4")
    assert missing_model.exit_code != 0 and not (tmp_path / "m.mp4").exists()
    assert "does-not/exist" in one_error_line(missing_model)
    result = vedit("run", corrupt, "-p", "x", "--size", "64x48", "-o", tmp_path / "c.mp4", *FAST)
    assert result.exit_code != 0 and not (tmp_path / "c.mp4").exists()
    one_error_line(result)


def test_unwritable_output_fails_before_any_work(clip, tmp_path):
    result = vedit("run", clip, "-p", "x", "-o", tmp_path / "no" / "such" / "dir.mp4", *FAST)
    assert result.exit_code != 0
    assert "no/such" in one_error_line(result)
    same = vedit("run", clip, "-p", "x", "-o", clip, *FAST)
    assert same.exit_code != 0
    one_error_line(same)
    assert clip.stat().st_size > 0
