"""A third-party propagator with a UNet pass of its own: the example package's ``prevframe`` (every frame attends
to its own tokens and the previous frame's) registers the pass ``prevframe`` through ``register_passes``. The pass
is in the registry, the engines build it and it computes what eager does, ``vedit run`` and ``vedit engines
build`` use it, and its options are on the command line and reach ``job.options``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_clip
from helpers.cli import one_error_line, vedit
from helpers.engines import engine_cache, relative_error, sd  # noqa: F401  (fixtures, used by name)
from vedit import edit, plugins
from vedit.errors import ModelError
from vedit.plugins.passes import pass_kinds, registered_passes
from vedit.runtime.engine_cache import EngineCache
from vedit.runtime.runner import Passes

TINY = ["--model", "tiny", "--size", "64x48", "--max-frames", "4", "--steps", "2", "--inversion-steps", "2"]
TINY_API = dict(model="tiny", size="64x48", max_frames=4, steps=2, inversion_steps=2, device="cpu", dtype="fp32")


def panel(help_text: str, title: str) -> str:
    """The lines of one help panel of ``vedit run --help``, its title line first."""
    lines = help_text.splitlines()
    first = next(i for i, line in enumerate(lines) if f"─ {title} ─" in line)
    last = next(i for i in range(first, len(lines)) if lines[i].startswith("╰"))
    return "\n".join(lines[first : last + 1])


def table_rows(text: str) -> list[list[str]]:
    """The body rows of a rich table, as lists of stripped cells."""
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]


def png_frames(folder) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]).astype(int)


def test_the_package_registers_its_pass_beside_the_built_in_ones(example_plugin):
    entry = plugins.registered("pass")["prevframe"]
    assert (entry.plugin, entry.package) == ("example", "vedit-example-plugin")
    spec = registered_passes()["prevframe"]
    assert (spec.rows_per_frame, spec.kind) == (3, "prevframe")
    assert not spec.returns_records and not spec.searches_nearest
    assert spec.batched_inputs == {"latents": "rows", "text": "rows", "partners": "frames"}
    assert pass_kinds()[-1] == "prevframe"
    assert plugins.registered("propagator")["prevframe"].package == "vedit-example-plugin"
    # what a run of 10 frames in calls of 4 costs: calls 0-3, 3-7 and 7-9 (each with the frame before its first)
    prevframe = plugins.get("propagator", "prevframe")
    options = prevframe.Options(window=4)
    assert prevframe.pass_batches(10, 8, options) == {"prevframe": [9, 12, 15]}
    assert prevframe.planned_forwards(10, 2, options) == {"prevframe": 3 * (4 + 5 + 3) * 2}


def test_the_pass_through_torchscript_equals_eager_and_each_frame_attends_to_the_one_before(
    example_plugin, sd, engine_cache
):
    embeds = sd.encode_prompt(["a cat", "", "a dog"])
    got = {}
    for engine in ("eager", "torchscript"):
        with Passes(sd, [plugins.get("engine", engine)], strict=True, cache=EngineCache(engine_cache)) as passes:
            inputs = passes.example("prevframe", 3, (6, 8), embeds=embeds, generator=torch.Generator().manual_seed(1))
            alone = (*inputs[:4], torch.tensor([[0, 0], [1, 1], [2, 2]]))  # every frame with itself only
            got[engine] = passes.run("prevframe", inputs), passes.run("prevframe", alone)
        assert passes.used == {"prevframe": engine} and passes.forwards == {"prevframe": 2 * 9}
    assert inputs[4].tolist() == [[0, 0], [1, 0], [2, 1]]
    with Passes(sd, [plugins.get("engine", "eager")]) as passes:
        per_frame = passes.run("frames", inputs[:4])
    for a, b in zip(got["torchscript"], got["eager"]):
        assert relative_error(a, b) < 1e-4  # the built-in passes' engine tolerance (tests/runtime/test_runner.py)
    eps, alone = got["torchscript"]
    # Rows [source × 3, uncond × 3, cond × 3]: the source branch and each branch's first frame are the per-frame
    # pass's; the other frames see the one before them. Partners of each frame alone are the per-frame pass: the
    # graph reads the input rather than baking in the example's.
    same, crossed = [0, 1, 2, 3, 6], [4, 5, 7, 8]
    assert all(relative_error(eps[i], per_frame[i]) < 1e-5 for i in same)
    assert all(relative_error(eps[i], per_frame[i]) > 1e-2 for i in crossed)
    assert relative_error(alone, per_frame) < 1e-5


def test_vedit_run_edits_a_clip_with_it_and_its_options_reach_job_options(example_plugin, tmp_path):
    clip = make_clip(tmp_path / "cells.mp4", frames=4, source="cellauto")  # every frame unlike the one before
    out, none = tmp_path / "prevframe", tmp_path / "none"
    args = ["run", clip, "-p", "a watercolor", "--quiet", *TINY]
    with pytest.warns(UserWarning, match=r"^prevframe: 2 calls a step, frames 0-1, 1-3$"):
        result = vedit(*args, "-o", out, "--propagator", "prevframe", "--prevframe-window", "2",
                       "--prevframe-verbose", cwd=tmp_path)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert vedit(*args, "-o", none, "--propagator", "none", cwd=tmp_path).exit_code == 0
    edited, alone = png_frames(out), png_frames(none)
    assert edited.shape == (4, 48, 64, 3)
    # Frame 0 has no frame before it: the per-frame edit's (to a rounding step of the decoded pixels); the
    # others attend to theirs.
    assert np.abs(edited[0] - alone[0]).max() <= 1
    assert all(np.abs(edited[i] - alone[i]).mean() > 0.5 for i in (1, 2, 3))


def test_its_forwards_are_what_it_planned_and_an_editor_without_source_latents_is_one_line(
    example_plugin, clip, tmp_path
):
    # img2img gives source latents without injecting: the pass runs with the source branch, flags off
    result = edit(clip, tmp_path / "o", prompt="x", editor="img2img", propagator="prevframe", prevframe_window=3,
                  engine="eager", **TINY_API)  # fmt: skip
    assert result.engines == {"prevframe": "eager"}
    # img2img at strength 0.8 runs 1 of the 2 steps; calls 0-2 and 2-3: 5 frames of 3 branches, as planned
    prevframe = plugins.get("propagator", "prevframe")
    assert dict(result.forwards) == {"prevframe": 15} == prevframe.planned_forwards(4, 1, prevframe.Options(window=3))
    assert len(list((tmp_path / "o").glob("*.png"))) == 4

    args = ["run", clip, "-p", "x", "-o", tmp_path / "t.mp4", "--editor", "tint", "--propagator", "prevframe"]
    refused = vedit(*args, "--quiet", *TINY, cwd=tmp_path)
    assert refused.exit_code == 4
    assert one_error_line(refused) == (
        "vedit: error: propagator 'prevframe' needs the source clip's latents at every step, which editor 'tint' "
        "does not provide; use --propagator none with it"
    )


def test_vedit_engines_build_builds_its_pass_and_a_run_of_that_shape_builds_nothing(example_plugin, tmp_path):
    cache, out = tmp_path / "engines", tmp_path / "out"
    shape = ["--engine", "torchscript", "--engine-cache", cache, "--model", "tiny", "--size", "64x48"]
    plugin = ["--editor", "img2img", "--propagator", "prevframe", "--prevframe-window", "3"]
    built = vedit("engines", "build", "--frames", "5", *shape, *plugin, cwd=tmp_path)
    assert built.exit_code == 0, built.output
    # 5 frames in calls of 3 (0-2, then 2-4 with the frame before): 9 rows; img2img inverts nothing
    assert [row[:3] for row in table_rows(built.stdout)] == [["prevframe", "9", "torchscript"]]

    clip = make_clip(tmp_path / "cells.mp4", frames=5, source="cellauto")
    run = vedit("run", clip, "-p", "x", "-o", out, "--steps", "2", *shape, *plugin, cwd=tmp_path)
    assert run.exit_code == 0, run.output
    assert "building" not in run.stderr and "denoise: done" in run.stderr  # found in the engine cache
    assert len(list(out.glob("*.png"))) == 5


def test_its_options_are_in_run_help_in_its_panel_and_a_window_out_of_range_is_exit_4(
    example_plugin, clip, tmp_path, monkeypatch
):
    result = vedit("run", "--help")
    assert result.exit_code == 0
    own = panel(result.stdout, "propagator 'prevframe'")
    assert "--prevframe-window" in own and "Frames denoised per UNet call. (between 1 and 64) [default: 4]" in own
    assert "--prevframe-verbose" in own and "--no-prevframe-verbose" in own
    assert "Say the calls of each step, as a warning." in own
    listed = vedit("plugins", "--options").stdout
    assert [row for row in table_rows(listed) if row[0] == "propagator prevframe"] == [
        ["propagator prevframe", "--prevframe-window", "int", "4", "between 1 and 64", "changes",
         "Frames denoised per UNet call."],
        ["propagator prevframe", "--prevframe-verbose", "bool", "False", "-", "-",
         "Say the calls of each step, as a warning."],
    ]  # fmt: skip

    from vedit.model import loading

    def loader(*args, **kwargs):
        raise ModelError("the model loader was reached")

    monkeypatch.setattr(loading, "load_model", loader)
    out = tmp_path / "o.mp4"
    refused = vedit("run", clip, "-p", "x", "-o", out, "--propagator", "prevframe", "--prevframe-window", "0",
                    *TINY, cwd=tmp_path)  # fmt: skip
    assert refused.exit_code == 4
    assert one_error_line(refused) == "vedit: error: --prevframe-window must be between 1 and 64, got 0"
    assert not out.exists()
