"""The preview (vedit.pipeline.preview): the keyframes alone, edited jointly, on a contact sheet beside
their sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.preview import OPTIONS, N, Recorder, clip, halves, sd, sha, sheet, source_frames  # noqa: F401  (fixtures, used by name)
from vedit import invert
from vedit.errors import ConfigError, OutputError
from vedit.pipeline.preview import (
    BACKGROUND,
    GAP,
    contact_sheet,
    default_frames,
    estimate_full_run,
    parse_frames,
    preview,
    preview_path,
    summary_rows,
    write_png,
)
from vedit.pipeline.stages import to_uint8


def test_default_frames_are_the_centres_of_the_chunks():
    assert default_frames(16, 4) == [2, 6, 10, 14]
    assert default_frames(18, 4) == [2, 6, 10, 14, 17]  # the short last chunk 16-17: its centre
    assert default_frames(5, 8) == [2]
    assert default_frames(1, 8) == [0]
    assert parse_frames(None, 40, 8) == [4, 12, 20, 28, 36]
    assert parse_frames("30, 0,8", 40, 8) == [0, 8, 30]  # sorted
    assert parse_frames([np.int64(3), 1], 4, 8) == [1, 3]


@pytest.mark.parametrize(
    ("frames", "named"),
    [
        ("0,x", "'x' is not a frame index"),
        ("1.5", "'1.5' is not a frame index"),
        ([True], "True is not a frame index"),
        ("0,16", "frame 16 is out of range; the run has 16 frames (0..15)"),
        ([-1], "frame -1 is out of range"),
        ("3,3", "frame 3 is given twice"),
        ("", "preview_frames is empty"),
        ([], "preview_frames is empty"),
        ("1,,2", "an empty entry between commas"),
    ],
)
def test_preview_frames_that_do_not_fit_are_one_line_errors(frames, named):
    with pytest.raises(ConfigError) as error:
        parse_frames(frames, 16, 4)
    assert named in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith("preview_frames")  # the keyword: the Python API names no flags


def test_bad_frames_and_outputs_are_refused_before_any_heavy_work(clip, tmp_path, monkeypatch):
    def heavy(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("vedit.pipeline.preview.load_for_edit", heavy)
    with pytest.raises(ConfigError, match=r"^preview_frames: frame 16 is out of range"):
        preview(clip, tmp_path / "p.png", preview_frames="2,16", **OPTIONS)
    # indices are among the selected frames: 8 of them here
    with pytest.raises(ConfigError, match=r"frame 8 is out of range; the run has 8 frames \(0\.\.7\)"):
        preview(clip, tmp_path / "p.png", preview_frames=[8], **{**OPTIONS, "frames": "::2"})
    with pytest.raises(ConfigError, match=r"p\.jpg: a preview is a PNG image; give a path ending in \.png$"):
        preview(clip, tmp_path / "p.jpg", **OPTIONS)
    with pytest.raises(OutputError, match="output folder does not exist"):
        preview(clip, tmp_path / "missing" / "p.png", **OPTIONS)
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        preview(clip, tmp_path / "folder.png", **OPTIONS)
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(frames / "00000.png")
    with pytest.raises(OutputError, match="inside the input's folder of frames"):
        preview(frames, frames / "p.png", **OPTIONS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.png", "frames"]


def test_the_preview_builds_the_model_its_spec_names_whatever_the_seed(clip, tmp_path):
    seeded = preview(clip, tmp_path / "s.png", **{**OPTIONS, "seed": 5}, preview_frames=[0])
    assert seeded.model == "tiny (tiny:seed0)"
    other = preview(clip, tmp_path / "o.png", **{**OPTIONS, "model": "tiny@5"}, preview_frames=[0])
    assert other.model == "tiny@5 (tiny:seed5)"


def test_preview_path_sits_beside_the_planned_output():
    assert preview_path("out.mp4") == Path("out.preview.png")
    assert preview_path("runs/clip-edited.mkv") == Path("runs/clip-edited.preview.png")
    assert preview_path("sheet.png") == Path("sheet.png")
    assert preview_path("Sheet.PNG") == Path("Sheet.PNG")
    assert preview_path("frames/") == Path("frames.preview.png")


def test_the_sheet_holds_each_source_frame_beside_its_edit(clip, source_frames, sd, tmp_path):
    before = sha(clip)
    reporter = Recorder()
    result = preview(clip, tmp_path / "p.png", sd=sd, reporter=reporter, **OPTIONS)
    assert result.output == tmp_path / "p.png" and result.frames == [2, 6, 10, 14] and result.total_frames == N
    assert result.source_frames == [2, 6, 10, 14] and result.size == (64, 64) and result.inversion == "computed"
    assert reporter.tasks == ["read + encode", "invert", "preview", "write"]
    image = sheet(result.output)
    # four pairs of 128 x (64 + caption) on a 2 x 2 grid, the most nearly square
    xs, ys = sorted({x for x, _ in result.tiles}), sorted({y for _, y in result.tiles})
    assert xs == [GAP, GAP + 128 + GAP] and len(ys) == 2
    strip = ys[0] - GAP
    assert 8 <= strip <= 20 and ys[1] == ys[0] + 64 + strip + GAP
    assert image.shape == (2 * (64 + strip) + 3 * GAP, 2 * 128 + 3 * GAP, 3)
    sources, edited = halves(image, result)
    assert np.array_equal(sources, source_frames[[2, 6, 10, 14]])
    assert np.array_equal(edited, to_uint8(sd.decode_latents(result.latents)))
    assert not np.array_equal(edited, sources)
    for x, y in result.tiles:  # each caption is written, small, in the strip above its pair
        assert image[y - strip : y, x : x + 128].max() > 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]  # nothing else is written
    assert not (tmp_path / "cache" / "inversions").exists() or not any((tmp_path / "cache" / "inversions").iterdir())
    assert sha(clip) == before  # the input is never modified

    rows = dict(summary_rows(result))
    assert rows["preview"] == f"{result.output}: frames 2, 6, 10, 14 of 16"
    assert rows["inversion"] == "computed for the 4 preview frames only (not cached)"
    assert rows["full run"].startswith(
        "about 152 UNet image-forwards (inversion 32, keyframe 24, propagation 96), about "
    ) and rows["full run"].endswith("at this preview's speed (without writing the video)")


def test_control_frames_sit_between_each_source_and_its_edit():
    rng = np.random.default_rng(0)
    sources, edges, depth, edited = (rng.integers(0, 256, (3, 16, 24, 3), dtype=np.uint8) for _ in range(4))
    sheet_image, tiles = contact_sheet(sources, edited, ["frame 0", "frame 4", "frame 8"], controls=[edges, depth])
    for i, (x, y) in enumerate(tiles):  # source | edges | depth | edit, side by side
        assert np.array_equal(sheet_image[y : y + 16, x : x + 24], sources[i])
        assert np.array_equal(sheet_image[y : y + 16, x + 24 : x + 48], edges[i])
        assert np.array_equal(sheet_image[y : y + 16, x + 48 : x + 72], depth[i])
        assert np.array_equal(sheet_image[y : y + 16, x + 72 : x + 96], edited[i])
        assert (sheet_image[y : y + 16, x + 96 : x + 96 + GAP] == BACKGROUND).all()  # the tile ends there
    # tiles four frames wide: the grid of about square aspect is three tiles in a column
    assert len({x for x, _ in tiles}) == 1 and sheet_image.shape[1] == 4 * 24 + 2 * GAP
    plain, plain_tiles = contact_sheet(sources, edited, ["frame 0", "frame 4", "frame 8"])
    assert np.array_equal(plain, contact_sheet(sources, edited, ["frame 0", "frame 4", "frame 8"], controls=[])[0])
    x, y = plain_tiles[0]
    assert np.array_equal(plain[y : y + 16, x + 24 : x + 48], edited[0])  # without controls: the edit beside it
    with pytest.raises(ValueError, match=r"control frames \(2, 16, 24, 3\) differ in shape"):
        contact_sheet(sources, edited, controls=[edges[:2]])


def test_an_inversion_file_is_sliced_with_the_pipelines_checks(clip, sd, tmp_path):
    options = {**OPTIONS, "batch_size": 1, "no_cache": True}
    stored = invert(clip, tmp_path / "inv.safetensors", sd=sd, **options).path
    computed = preview(clip, tmp_path / "computed.png", sd=sd, **options)
    given = preview(clip, tmp_path / "given.png", sd=sd, inversion=str(stored), **options)
    assert given.inversion == "file" and given.inversion_path == stored and "inversion" not in given.forwards
    assert "inversion" not in given.full_forwards
    assert np.array_equal(sheet(given.output), sheet(computed.output))
    with pytest.raises(ConfigError, match="does not fit this run: it was made with source_prompt ") as error:
        preview(clip, tmp_path / "other.png", sd=sd, inversion=str(stored), **{**options, "source_prompt": "x"})
    assert "\n" not in str(error.value) and not (tmp_path / "other.png").exists()


def test_joint_keyframes_draws_partners_as_tokenflow_does():
    from vedit.config import RunConfig
    from vedit.method.denoise import EditJob, Step
    from vedit.method.passes import joint_partners
    from vedit_plugins.propagators.tokenflow import JointKeyframes, TokenFlow

    class Denoiser:
        def __init__(self):
            self.calls = []

        def joint(self, frames, latents, step, partners=None):
            self.calls.append((frames, partners))
            return torch.zeros_like(latents)

    shown = TokenFlow().preview()
    assert isinstance(shown, JointKeyframes) and shown.needs_source_branch
    config = RunConfig(max_joint_keyframes=3, seed=4)
    job = EditJob(config=config, model=None, scheduler=None, clean_latents=torch.zeros(5, 4, 2, 2))
    shown.begin(job, None)
    denoiser = Denoiser()
    latents = torch.zeros(5, 4, 2, 2)
    for index in range(2):
        shown.predict(Step(index, torch.tensor(1), 2), latents, denoiser)
    expected = torch.Generator().manual_seed(4)
    for frames, partners in denoiser.calls:  # redrawn every step from the seeded generator
        assert torch.equal(frames, torch.arange(5)) and torch.equal(partners, joint_partners(5, 3, expected))
    shown.begin(EditJob(config=RunConfig(max_joint_keyframes=5), model=None, scheduler=None,
                        clean_latents=latents), None)  # fmt: skip
    shown.predict(Step(0, torch.tensor(1), 1), latents, denoiser)
    assert denoiser.calls[-1][1] is None  # P ≤ M: every frame attends to all, nothing drawn
    assert shown.planned_forwards(5, 7, config) == {"keyframe": 105}


def test_the_estimate_scales_the_measured_speed_to_the_full_run():
    stages = {"load": 1.0, "read": 2.0, "encode": 1.0, "invert": 4.0, "denoise": 6.0, "decode": 1.0, "write": 0.5}
    estimate = estimate_full_run(
        stages, {"inversion": 8, "keyframes": 24}, {"inversion": 32, "keyframes": 24, "propagation": 96}, 4, 16
    )
    # read: every frame was read already, the encoding scales by N/P; invert: 0.5 s per forward;
    # denoise: 0.25 s per forward over 120; decode: by N/P
    assert estimate == {"load": 1.0, "read": 6.0, "invert": 16.0, "denoise": 30.0, "decode + write": 4.0}
    cached = estimate_full_run(stages, {"keyframes": 24}, {"keyframes": 24, "propagation": 96}, 4, 16)
    assert "invert" not in cached and cached["denoise"] == 30.0


def test_nothing_is_half_written_when_a_preview_fails(clip, sd, tmp_path, monkeypatch):
    output = write_png(np.zeros((8, 8, 3), np.uint8), tmp_path / "p.png")  # an earlier sheet
    earlier = output.read_bytes()

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("vedit.pipeline.preview.os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        preview(clip, output, sd=sd, preview_frames=[3], **OPTIONS)
    assert output.read_bytes() == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]  # no temporary file left
    monkeypatch.undo()

    def failing(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr("vedit.pipeline.preview.edit_latents", failing)
    with pytest.raises(RuntimeError):
        preview(clip, tmp_path / "new.png", sd=sd, preview_frames=[3], **OPTIONS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]
