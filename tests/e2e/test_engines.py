"""Whole runs through the engines: eager's frames from every engine that runs here, one compiled graph per
pass and shape, falling back, per-frame editing through the engine, `vedit engines` and what a run says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_clip
from helpers.engines import ENGINES, RUN, eager_run, engine_cache, frames_of, run_clip  # noqa: F401  (fixtures, used by name)
from vedit import plugins
from vedit.pipeline.edit import edit
from vedit.plugins.hookspecs import hookimpl
from vedit.runtime.engine_cache import EngineCache
from vedit.runtime.runner import EngineError

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("engine", ENGINES)
def test_a_whole_run_through_the_engine_gives_eagers_frames(run_clip, eager_run, engine_cache, tmp_path, engine):
    from torch._dynamo.utils import counters

    expected, eager_result = eager_run
    if engine == "compile":
        torch._dynamo.reset()  # count from nothing (inductor's on-disk cache still spares the codegen)
    graphs = counters["stats"]["unique_graphs"]
    out = tmp_path / "frames"
    result = edit(run_clip, out, engine=engine, engine_cache=str(engine_cache), no_cache=True, **RUN)
    got = frames_of(out)
    assert got.shape == expected.shape == (8, 48, 64, 3)
    assert np.abs(got - expected).max() <= 1
    assert result.engines == {"plain": engine, "keyframe": engine, "propagation": engine}
    assert result.forwards == eager_result.forwards
    if engine == "compile":
        # 2 inversion steps, 2 denoising steps of 2 chunks: 3 graphs (plain 8, keyframe 6, propagation
        # 12), not one per step or chunk, although t, flags, keyframes and weights change between calls.
        assert counters["stats"]["unique_graphs"] - graphs == 3


class Broken:
    name = "broken"
    description = "an engine whose build always fails"

    def build(self, module, example, target):
        raise RuntimeError("unsupported operator aten::frobnicate\nmore detail that must not be printed")


class BrokenPlugin:
    @hookimpl
    def register_engines(self, register):
        register(Broken())


@pytest.fixture
def broken_engine():
    plugins.get_plugin_manager().register(BrokenPlugin(), name="broken-engine")
    yield
    plugins.reset()


def test_a_failing_engine_falls_back_in_one_line_unless_named_alone(run_clip, eager_run, broken_engine, tmp_path):
    expected, _ = eager_run
    result = edit(run_clip, tmp_path / "frames", engine="broken,eager", no_cache=True, **RUN)
    assert np.array_equal(frames_of(tmp_path / "frames"), expected)
    assert result.engines == {"plain": "eager", "keyframe": "eager", "propagation": "eager"}
    fallbacks = [w for w in result.warnings if "broken" in w]
    # one line per pass it could not run, naming the engine, the pass and the first line of the reason
    assert sorted(fallbacks) == sorted(
        f"engine 'broken' cannot run the {name} pass "
        "(RuntimeError: unsupported operator aten::frobnicate); trying the next"
        for name in ("plain", "keyframe", "propagation")
    )
    with pytest.raises(EngineError) as error:
        edit(run_clip, tmp_path / "alone", engine="broken", no_cache=True, **RUN)
    assert error.value.exit_code == 5
    assert (
        str(error.value)
        == "engine 'broken' cannot run the plain pass: RuntimeError: unsupported operator aten::frobnicate"
    )
    assert not (tmp_path / "alone").exists()


def test_engines_build_list_and_clear_from_the_cli(tmp_path):
    from typer.testing import CliRunner

    from vedit.cli import create_app

    app, runner = create_app(), CliRunner()
    cache = tmp_path / "engines"
    build = [
        "engines",
        "build",
        "--engine",
        "torchscript",
        "--model",
        "tiny",
        "--size",
        "64x48",
        "--frames",
        "4",
        "--chunk-size",
        "4",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--engine-cache",
        str(cache),
    ]
    first = runner.invoke(app, build)
    assert first.exit_code == 0, first.output
    # N = 4, B = 4: the inversion batch of 4, one keyframe (3K = 3), one chunk (3B = 12)
    rows = [line.split() for line in first.stdout.splitlines() if "torchscript" in line]
    assert [(r[1], r[3]) for r in rows] == [("plain", "4"), ("keyframe", "3"), ("propagation", "12")]
    listed = runner.invoke(app, ["engines", "list", "--engine-cache", str(cache)])
    assert listed.exit_code == 0 and listed.stdout.count("torchscript") == 3

    keyframe = next(e for e in EngineCache(cache).entries() if e.pass_name == "keyframe")
    (keyframe.path / "pass.pt").write_bytes(b"not a module")  # corrupt
    again = runner.invoke(app, [*build, "--seed", "3"])  # the seed draws nothing here: the same model's engines
    assert again.exit_code == 0, again.output
    notes = [line for line in again.stderr.splitlines() if line.startswith("vedit: engine cache:")]
    assert len(notes) == 1 and "keyframe pass" in notes[0] and "is corrupt" in notes[0] and "rebuilding" in notes[0]
    assert "vedit: warning: --seed is ignored: building engines draws nothing at random" in again.stderr
    assert len(EngineCache(cache).entries()) == 3
    assert [line for line in again.stderr.splitlines() if line.startswith("vedit: building")] == [
        "vedit: building the torchscript keyframe pass (batch 3); the engine cache keeps it for later runs"
    ]  # the other passes come from the cache, silently

    cleared = runner.invoke(app, ["engines", "clear", "--engine-cache", str(cache)])
    assert cleared.exit_code == 0 and "removed" in cleared.stdout
    assert EngineCache(cache).entries() == []
    empty = runner.invoke(app, ["engines", "list", "--engine-cache", str(cache)])
    assert "no built engines" in empty.stdout


def test_per_frame_editing_with_injection_runs_the_frames_pass_through_the_engine(run_clip, engine_cache, tmp_path):
    options = {**RUN, "propagator": "none"}
    eager = edit(run_clip, tmp_path / "eager", engine="eager", no_cache=True, **options)
    traced = edit(
        run_clip, tmp_path / "traced", engine="torchscript", engine_cache=str(engine_cache), no_cache=True, **options
    )
    assert eager.engines == {"plain": "eager", "frames": "eager"}
    assert traced.engines == {"plain": "torchscript", "frames": "torchscript"}
    assert traced.forwards == eager.forwards == {"inversion": 8 * 2, "frames": 3 * 8 * 2}
    assert np.abs(frames_of(tmp_path / "traced") - frames_of(tmp_path / "eager")).max() <= 1


def test_a_run_says_when_it_builds_a_pass_and_how_long_it_took_and_nothing_when_cached(tmp_path):
    from typer.testing import CliRunner

    from vedit.cli import create_app

    clip = make_clip(tmp_path / "clip.mp4", frames=4, size=(64, 48))
    args = [
        "run",
        str(clip),
        "-p",
        "x",
        "--model",
        "tiny",
        "--size",
        "64x48",
        "--steps",
        "2",
        "--inversion-steps",
        "2",
        "--chunk-size",
        "4",
        "--no-cache",
        "--engine",
        "torchscript",
        "--engine-cache",
        str(tmp_path / "engines"),
        "-o",
        str(tmp_path / "out.mp4"),
    ]
    first = CliRunner().invoke(create_app(), args)
    assert first.exit_code == 0, first.output
    said = [line for line in first.stderr.splitlines() if "torchscript" in line]
    # N = 4, B = 4: the inversion batch of 4, one keyframe (3K = 3), one chunk (3B = 12), each built once
    assert [line.split(" in ")[0] if "built" in line else line for line in said] == [
        f"vedit: building the torchscript {name} pass (batch {batch}); the engine cache keeps it for later runs"
        if step == "building"
        else f"vedit: built the torchscript {name} pass"
        for name, batch in (("plain", 4), ("keyframe", 3), ("propagation", 12))
        for step in ("building", "built")
    ]
    assert all(line.endswith(" s") and float(line.split(" in ")[1][:-2]) > 0 for line in said[1::2])
    again = CliRunner().invoke(create_app(), args)
    assert again.exit_code == 0, again.output
    assert [line for line in again.stderr.splitlines() if "torchscript" in line] == []  # loaded from the cache
