"""Throughput over whole edits: reading overlaps loading, the loop never waits on the host, a profiled
edit, batch sizes that edit identically, and a failing post-processor."""

from __future__ import annotations

import importlib
import threading
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import vedit
from vedit.io.reader import FrameReader
from vedit.pipeline import stages

pytestmark = pytest.mark.slow


OPTIONS = dict(prompt="a painting", model="tiny", steps=2, inversion_steps=2, device="cpu", dtype="fp32", chunk_size=4)


def _frames(folder: Path) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]


def test_a_failing_post_processor_leaves_no_output_and_its_error_reaches_the_caller(clip, tmp_path):
    from vedit import plugins
    from vedit.plugins.hookspecs import hookimpl

    class Breaks:
        name = "breaks"
        description = "fails on its second batch"

        def process(self, frames, start):
            if start > 0:
                raise RuntimeError("post-processor failed")
            return frames

    class Plugin:
        @hookimpl
        def register_postprocessors(self, register):
            register(Breaks())

    plugins.get_plugin_manager().register(Plugin(), name="breaks-test")
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="post-processor failed"):
        vedit.edit(clip, out, postprocess="breaks", batch_size=4, **OPTIONS)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_reading_the_clip_overlaps_loading_the_model(clip, tmp_path, monkeypatch):
    read_first_batch = threading.Event()
    batches = FrameReader.batches

    def recording(self, size):
        for batch in batches(self, size):
            read_first_batch.set()
            yield batch

    edit_module = importlib.import_module("vedit.pipeline.edit")  # vedit.pipeline.edit is the function
    load = edit_module.load_model_for

    def slow_load(*args, **kwargs):
        # the reader thread must deliver a batch while the model is still "loading"
        overlapped.append(read_first_batch.wait(timeout=20))
        return load(*args, **kwargs)

    overlapped: list[bool] = []
    monkeypatch.setattr(FrameReader, "batches", recording)
    monkeypatch.setattr(edit_module, "load_model_for", slow_load)
    vedit.edit(clip, tmp_path / "out.mp4", **OPTIONS)
    assert overlapped == [True]


# ----------------------------------------------------------------------------- the step loop never waits on the host


class _HostReads(TorchDispatchMode):
    """Records every read of a tensor's value by the host (``.item()``, ``int()``, ``bool()``...),
    with the functions it came from."""

    def __init__(self):
        super().__init__()
        self.reads: list[tuple[torch.dtype, int, set[str]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            callers = {f"{Path(frame.filename).name}:{frame.name}" for frame in traceback.extract_stack()}
            self.reads.append((args[0].dtype, args[0].numel(), callers))
        return func(*args, **(kwargs or {}))


# Host values the loop may read: they stay on the host in a GPU run too (the schedule's timesteps,
# the DDIM scheduler's arithmetic on them, and the keyframes drawn with the host generator).
HOST_SIDE = {"scheduling_ddim.py:step", "tokenflow.py:keyframes", "denoise.py:source_latents"}


@pytest.mark.parametrize("propagator", ["tokenflow", "none"])
def test_the_denoising_loop_reads_no_device_value_on_the_host(clip, tmp_path, monkeypatch, propagator):
    """Latents, noise predictions, records, weights and indices, which live on the device in a
    GPU run, are never read by the host inside the loop: every read there is of a host value."""
    from vedit.method import denoise as denoise_module

    reads = _HostReads()
    real = denoise_module.denoise

    def watched(job, plan, *args, **kwargs):
        with reads:
            return real(job, plan, *args, **kwargs)

    monkeypatch.setattr(stages, "denoise", watched)
    vedit.edit(clip, tmp_path / "out.mp4", propagator=propagator, **OPTIONS)
    assert reads.reads, "the dispatch mode saw nothing: it is not watching the loop"
    for dtype, numel, callers in reads.reads:
        assert not dtype.is_floating_point and numel == 1, (dtype, numel, callers)
        assert callers & HOST_SIDE, callers


# The same loop on a GPU, with synchronising calls forbidden: tests/e2e/test_cuda.py.


# ----------------------------------------------------------------------------- profile


def test_a_profiled_edit_splits_its_time_by_component_and_writes_the_same_frames(clip, tmp_path):
    plain = vedit.edit(clip, tmp_path / "plain", **OPTIONS)
    profiled = vedit.edit(clip, tmp_path / "profiled", profile=True, **OPTIONS)
    assert plain.profile == {}
    parts = profiled.profile
    for key in ("load", "read", "encode", "invert", "keyframe", "propagation", "nn", "decode", "postprocess", "write"):
        assert parts.get(key, 0) > 0, key
    assert parts["nn"] < parts["propagation"]  # the search is a part of the propagation pass
    assert parts["keyframe"] + parts["propagation"] < profiled.stage_seconds["denoise"]
    assert parts["invert"] <= profiled.stage_seconds["invert"] + 1e-3
    frames_plain, frames_profiled = _frames(tmp_path / "plain"), _frames(tmp_path / "profiled")
    assert len(frames_plain) == 12
    assert all(np.array_equal(a, b) for a, b in zip(frames_plain, frames_profiled))


def test_batch_size_auto_and_8_edit_identically_on_the_cpu(clip, tmp_path):
    vedit.edit(clip, tmp_path / "auto", batch_size="auto", **OPTIONS)
    vedit.edit(clip, tmp_path / "eight", batch_size=8, **OPTIONS)
    assert all(np.array_equal(a, b) for a, b in zip(_frames(tmp_path / "auto"), _frames(tmp_path / "eight")))


@pytest.mark.parametrize("engine, expected_tokens", [("eager", 64), ("torchscript", None)])
def test_auto_nn_backend_is_told_the_runs_tokens_only_when_the_passes_run_eagerly(
    clip, tmp_path, monkeypatch, engine, expected_tokens
):
    """The crossover rule may pick a Python search backend by size only where the propagation pass
    is not in a compiled graph (leaving it would cost the graph)."""
    from vedit import plugins

    asked = []
    choose = plugins.choose

    def spying(kind, requested, device, **kwargs):
        if kind == "nn_backend":
            asked.append(kwargs.get("tokens"))
        return choose(kind, requested, device, **kwargs)

    monkeypatch.setattr(plugins, "choose", spying)
    options = {**OPTIONS, "steps": 1, "inversion_steps": 1}
    vedit.edit(
        clip,
        tmp_path / "out",
        engine=engine,
        size="64x64",
        max_frames=4,
        engine_cache=str(tmp_path / "engines"),
        **options,
    )
    assert asked[-1] == expected_tokens  # 64×64 frames: 8×8 latent tokens
