"""``vedit run --preview`` and previews against the full run they stand for; the joint preview, exact up to M frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.preview import (
    INV,
    OPTIONS,
    B,
    N,
    Recorder,
    T,
    clip,  # noqa: F401  (the preview clip: 16 frames, as the module-level fixtures expect)
    halves,
    sd,  # noqa: F401  (fixtures, used by name)
    sheet,
)
from vedit import edit
from vedit.pipeline.preview import preview, summary_rows

pytestmark = pytest.mark.slow


def test_the_preview_costs_its_frames_and_plans_exactly_what_the_full_run_makes(clip, sd, tmp_path):
    # one image at a time everywhere, so that the preview's inversion and the full run's agree to the bit
    options = {**OPTIONS, "batch_size": 1}
    computed = preview(clip, tmp_path / "computed.png", sd=sd, **options)
    p = len(computed.frames)
    assert computed.forwards == {"inversion": p * INV, "keyframe": 3 * p * T}
    assert computed.full_forwards == {"inversion": N * INV, "keyframe": 3 * (N // B) * T, "propagation": 3 * N * T}
    full = edit(clip, tmp_path / "full.mp4", sd=sd, **options)
    assert full.forwards == computed.full_forwards
    assert full.inversion == "computed"  # and now in the cache: the next preview slices it

    reporter = Recorder()
    cached = preview(clip, tmp_path / "cached.png", sd=sd, reporter=reporter, **options)
    assert cached.inversion == "cached" and cached.inversion_path == full.inversion_path
    assert cached.forwards == {"keyframe": 3 * p * T}  # no inversion forwards
    assert "invert" not in reporter.tasks and any("sliced from the cached inversion" in m for m in reporter.messages)
    again = edit(clip, tmp_path / "again.mp4", sd=sd, **options)
    assert again.inversion == "cached" and cached.full_forwards == again.forwards
    assert "inversion" not in cached.estimate
    assert dict(summary_rows(cached))["inversion"].startswith("sliced from the cached inversion of the whole clip")
    assert torch.equal(cached.latents, computed.latents)
    assert np.array_equal(sheet(cached.output), sheet(computed.output))
    assert len(list((tmp_path / "cache" / "inversions").glob("*.safetensors"))) == 1  # the full run's alone


def test_a_per_frame_preview_is_the_full_run_at_those_frames(clip, sd, tmp_path):
    options = {**OPTIONS, "batch_size": 1, "propagator": "none"}
    result = preview(clip, tmp_path / "p.png", sd=sd, preview_frames="0,5,15", **options)
    assert result.frames == [0, 5, 15]
    assert result.forwards == {"inversion": 3 * INV, "frames": 3 * 3 * T}  # pnp: three branches per frame
    full = edit(clip, tmp_path / "frames", sd=sd, **options)
    assert full.forwards == result.full_forwards == {"inversion": N * INV, "frames": 3 * N * T}
    written = np.stack(
        [np.asarray(Image.open(tmp_path / "frames" / f"{k:05d}.png").convert("RGB")) for k in (0, 5, 15)]
    )
    assert np.array_equal(halves(sheet(result.output), result)[1], written)


def test_vedit_run_preview_writes_the_sheet_beside_the_planned_output_and_no_video(clip, tmp_path):
    from typer.testing import CliRunner

    from conftest import one_error_line
    from vedit.cli import create_app

    out = tmp_path / "edited.mp4"
    base = [
        "run",
        str(clip),
        "-p",
        "a watercolor painting",
        "--model",
        "tiny",
        "--steps",
        "2",
        "--inversion-steps",
        "2",
        "--chunk-size",
        "4",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    args = [*base, "-o", str(out)]
    runner = CliRunner()
    result = runner.invoke(create_app(), [*args, "--preview", "--preview-frames", "1,9"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "edited.preview.png").is_file() and not out.exists()
    text = " ".join(result.stdout.split())
    assert f"{tmp_path / 'edited.preview.png'}: frames 1, 9 of" in text
    assert "full run about" in text and "UNet image-forwards" in text
    assert "vedit: preview: done, 2/2" in result.stderr  # the loop's progress, as "preview"
    png = tmp_path / "look.png"
    named = runner.invoke(create_app(), [*base, "-o", str(png), "--preview"], env={"COLUMNS": "300"})
    assert named.exit_code == 0, named.output
    assert png.is_file()
    alone = runner.invoke(create_app(), [*args, "--preview-frames", "1,9"])
    assert alone.exit_code == 4
    assert one_error_line(alone) == "vedit: error: --preview-frames chooses the frames of a preview: add --preview"
    assert not out.exists()


def test_the_joint_preview_is_exact_up_to_m_frames_and_bounded_beyond(clip, sd, tmp_path):
    run = lambda name, **extra: preview(clip, tmp_path / f"{name}.png", sd=sd, **{**OPTIONS, **extra})  # noqa: E731
    published = run("m32", max_joint_keyframes=32)
    exactly = run("m4", max_joint_keyframes=4)  # M = P
    assert torch.equal(published.latents, exactly.latents)
    assert published.engines["keyframe"] == "eager" and "keyframe_bounded" not in published.engines
    bounded = run("m2", max_joint_keyframes=2)
    assert bounded.engines["keyframe_bounded"] == "eager" and bounded.forwards == published.forwards
    assert not torch.allclose(bounded.latents, published.latents)
    assert torch.equal(run("m2-again", max_joint_keyframes=2).latents, bounded.latents)  # seeded
    # a frame's edit depends on the others it is denoised with
    pair = run("pair", preview_frames=[2, 6])
    alone = run("alone", preview_frames=[2])
    assert not torch.allclose(pair.latents[:1], alone.latents, atol=1e-4)
    # one frame attending to itself is the per-frame edit of that frame
    per_frame = run("per-frame", preview_frames=[2], propagator="none")
    assert torch.allclose(alone.latents, per_frame.latents, atol=1e-5, rtol=0)
