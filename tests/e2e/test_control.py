"""Whole runs with structure guidance: scale 0 writes exactly the uncontrolled frames, a control changes them, a
control clip and an annotator both guide, the annotations are made once per clip, a run stopped with controls
resumes only into the same guidance, every editor takes controls, and the preview shows the control frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vedit
from conftest import make_clip
from vedit.cache.checkpoints import checkpoint_key
from vedit.config import RunConfig
from vedit.errors import ConfigError, ModelError

pytestmark = pytest.mark.slow

OPTIONS = dict(
    model="tiny", prompt="a watercolor painting", steps=4, inversion_steps=4, size="64x48",
    output_size="working", device="cpu", dtype="fp32", seed=3, checkpoint_every=0,
)  # fmt: skip


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("control") / "clip.mp4", frames=8, size=(64, 48))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("control-cache"))


def canny():
    """The built-in canny annotator with its default options."""
    from vedit.plugins.manager import hand_options
    from vedit_plugins.annotators.builtin import Canny

    annotator = Canny()
    hand_options(annotator)
    return annotator


def frames_of(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(path)) for path in sorted(folder.glob("*.png"))])


def edit(clip, out: Path, cache: str, **more) -> tuple[np.ndarray, vedit.pipeline.edit.EditResult]:
    result = vedit.edit(clip, out, cache_dir=cache, **{**OPTIONS, **more})
    return frames_of(out), result


@pytest.fixture(scope="module")
def plain(clip, cache, tmp_path_factory):
    return edit(clip, tmp_path_factory.mktemp("plain") / "out", cache)[0]


def test_scale_zero_writes_the_uncontrolled_frames_and_a_control_changes_them(clip, cache, plain, tmp_path):
    zero, _ = edit(clip, tmp_path / "zero", cache, control=["canny:0"], controlnet=["random"])
    assert np.array_equal(zero, plain)
    guided, result = edit(clip, tmp_path / "one", cache, control=["canny:1.5"], controlnet=["random"])
    assert np.abs(guided.astype(int) - plain.astype(int)).mean() > 1.0
    assert result.controls == ["canny ×1.5 via random"]
    # the ControlNet only acted in the edit: the same UNet forwards as without it
    assert result.forwards.get("keyframe") and result.forwards.get("propagation")


def test_the_window_outside_every_step_is_the_uncontrolled_run(clip, cache, plain, tmp_path):
    # 4 steps, start 0.5, end 0.5 + ε: no step lies wholly inside, so none acts
    late, _ = edit(clip, tmp_path / "late", cache, control=["canny"], controlnet=["random"], control_start=0.5,
                   control_end=0.6)  # fmt: skip
    assert np.array_equal(late, plain)
    half, _ = edit(clip, tmp_path / "half", cache, control=["canny"], controlnet=["random"], control_end=0.5)
    assert not np.array_equal(half, plain)


def test_a_control_clip_guides_like_the_annotation_it_holds(clip, cache, tmp_path):
    # the canny frames written as a folder of control frames give the canny run's output exactly
    annotated, _ = edit(clip, tmp_path / "canny", cache, control=["canny"], controlnet=["random@2"])
    from vedit.pipeline.preflight import open_clip

    opened = open_clip(clip, RunConfig(**OPTIONS))
    annotator = canny()
    folder = tmp_path / "edges"
    folder.mkdir()
    for i, frame in enumerate(np.concatenate(list(opened.reader.batches(8)))):
        Image.fromarray(annotator.annotate(frame[None])[0]).save(folder / f"{i:04d}.png")
    given, _ = edit(clip, tmp_path / "given", cache, control=[str(folder)], controlnet=["random@2"])
    assert np.array_equal(given, annotated)


def test_annotations_are_made_once_per_clip(clip, tmp_path):
    cache = str(tmp_path / "cache")
    messages: list[str] = []

    class Reporter:
        def task(self, *args, **kwargs):
            return self

        def advance(self, amount=1):
            pass

        def message(self, text):
            messages.append(text)

        warning = message

    vedit.edit(clip, tmp_path / "a", cache_dir=cache, reporter=Reporter(), control=["softedge"],
               controlnet=["random"], **OPTIONS)  # fmt: skip
    assert not any("reusing cached annotations" in m for m in messages)
    vedit.edit(clip, tmp_path / "b", cache_dir=cache, reporter=Reporter(), control=["softedge"],
               controlnet=["random"], **{**OPTIONS, "prompt": "a pencil sketch"})  # fmt: skip
    assert any("reusing cached annotations" in m for m in messages)


@pytest.mark.parametrize("editor", ["sdedit", "img2img"])
def test_editors_without_a_source_branch_take_controls(clip, cache, tmp_path, editor):
    base, _ = edit(clip, tmp_path / "base", cache, editor=editor, propagator="none")
    zero, _ = edit(clip, tmp_path / "zero", cache, editor=editor, propagator="none", control=["canny:0"],
                   controlnet=["random"])  # fmt: skip
    one, _ = edit(clip, tmp_path / "one", cache, editor=editor, propagator="none", control=["canny:2"],
                  controlnet=["random"])  # fmt: skip
    assert np.array_equal(zero, base)
    assert not np.array_equal(one, base)


def test_checkpoint_keys_cover_the_controls():
    base = RunConfig(**OPTIONS)
    parts = dict(frames_sha256="f" * 64, fingerprint="tiny", dtype="float32", device="cpu", trajectory="t")
    key = checkpoint_key(base, **parts)
    assert checkpoint_key(base, **parts, controls="") == key  # a run without controls keeps its key
    assert checkpoint_key(base, **parts, controls="a") != key
    assert checkpoint_key(base, **parts, controls="a") != checkpoint_key(base, **parts, controls="b")
    assert checkpoint_key(base.replace(control_end=0.5), **parts) != key


def test_a_controlnet_for_another_family_or_none_configured_is_one_line_before_the_edit(clip, tmp_path, monkeypatch):
    import importlib

    pipeline_edit = importlib.import_module("vedit.pipeline.edit")

    def no_encoding(*args, **kwargs):
        raise AssertionError("a frame was encoded before the ControlNets were checked")

    monkeypatch.setattr(pipeline_edit, "encode_clip", no_encoding)
    with pytest.raises(ConfigError, match="annotator 'softedge' names no ControlNet for sd2 models"):
        vedit.edit(clip, tmp_path / "x", control=["softedge"], **{**OPTIONS, "model": "tiny-sd2"})
    sdxl_net = tmp_path / "xl-net"
    from vedit.control.controlnets import random_controlnet
    from vedit.model.loading import load_model

    random_controlnet(load_model("tiny-sdxl", device="cpu", dtype="fp32").unet).save_pretrained(sdxl_net)
    with pytest.raises(ModelError, match="it is made for sdxl models, the model is sd1"):
        vedit.edit(clip, tmp_path / "y", control=["canny"], controlnet=[str(sdxl_net)], **OPTIONS)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_the_preview_shows_the_control_frames_between_source_and_edit(clip, cache, tmp_path):
    from vedit.pipeline.preview import preview

    result = preview(clip, tmp_path / "sheet.png", cache_dir=cache, control=["canny"], controlnet=["random"],
                     preview_frames="1,5", **OPTIONS)  # fmt: skip
    sheet = np.asarray(Image.open(tmp_path / "sheet.png").convert("RGB"))
    from vedit.pipeline.preflight import open_clip

    frames = np.concatenate(list(open_clip(clip, RunConfig(**OPTIONS)).reader.batches(8)))
    width, height = result.size
    for (x, y), k in zip(result.tiles, [1, 5]):
        expected = canny().annotate(frames[k : k + 1])[0]
        assert np.array_equal(sheet[y : y + height, x + width : x + 2 * width], expected)


def test_the_command_line_runs_controls_and_names_them_in_the_summary(clip, tmp_path):
    from helpers.cli import vedit as cli

    out = tmp_path / "out.mp4"
    result = cli(
        "run", clip, "-o", out, "-p", "a statue", "--model", "tiny", "--steps", "2", "--inversion-steps", "2",
        "--size", "64x48", "--control", "canny:0.5", "--controlnet", "random", "--canny-low", "50",
        "--control-end", "0.5", "--cache-dir", tmp_path / "cache",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "canny ×0.5 via random, steps 0–0.5" in result.output
    assert out.is_file()
