"""The run's plumbing for throughput: a step loop that never waits on the host, the reader and
writer threads, the per-component profile, the VAE's precision and ``--batch-size auto``."""

from __future__ import annotations

import importlib
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import vedit
from vedit.io.reader import FrameReader
from vedit.pipeline import stages
from vedit.pipeline.preflight import open_clip
from vedit.runtime.batch_sizes import CPU_BATCH, Batches, batch_for, choose_batches
from vedit.method.denoise import pick_frames
from vedit.model.device import vae_dtype_for
from vedit.model.loading import load_model
from vedit.runtime.profiling import Profile, profiling, stage
from vedit.io.threads import ReadAhead, WriteBehind
from vedit.runtime.transfer import to_device, to_host

from conftest import make_clip

OPTIONS = dict(prompt="a painting", model="tiny", steps=2, inversion_steps=2, device="cpu", dtype="fp32", chunk_size=4)


def _frames(folder: Path) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]


# ----------------------------------------------------------------------------- reader and writer threads


def test_read_ahead_gives_every_item_in_order_and_stays_within_its_depth():
    produced: list[int] = []

    def source():
        for i in range(20):
            produced.append(i)
            yield i

    with ReadAhead(source(), depth=3) as items:
        time.sleep(0.3)  # the reader runs ahead while nothing is taken
        ahead = len(produced)
        assert list(items) == list(range(20))
    # three queued, one more made and waiting for room: never the whole source
    assert 3 <= ahead <= 4


def test_read_ahead_raises_the_sources_error_where_it_happened_and_closes_the_source():
    closed = threading.Event()

    def source():
        try:
            yield 1
            yield 2
            raise ValueError("frame 3 is damaged")
        finally:
            closed.set()

    with ReadAhead(source(), depth=8) as items:
        got = []
        with pytest.raises(ValueError, match="frame 3 is damaged"):
            for item in items:
                got.append(item)
    assert got == [1, 2]
    assert closed.is_set()


def test_closing_read_ahead_early_stops_a_blocked_reader_and_runs_the_sources_cleanup():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    reader = ReadAhead(endless(), depth=2)
    assert next(iter(reader)) == 0
    reader.close()
    assert closed.is_set() and not reader._thread.is_alive()


def test_write_behind_consumes_in_order_on_its_own_thread():
    seen, threads = [], set()

    def consume(item):
        time.sleep(0.01)
        seen.append(item)
        threads.add(threading.current_thread().name)

    with WriteBehind(consume, depth=2) as behind:
        for i in range(10):
            behind.put(i)
    assert seen == list(range(10))
    assert threads == {"vedit-writer"}


def test_write_behind_raises_the_consumers_error_and_stops_consuming():
    seen = []

    def consume(item):
        if item == 3:
            raise OSError("disk full")
        seen.append(item)

    with pytest.raises(OSError, match="disk full"):
        with WriteBehind(consume, depth=1) as behind:
            for i in range(50):
                behind.put(i)
    assert seen == [0, 1, 2]


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_loop_runs_with_synchronising_calls_forbidden(clip, tmp_path, monkeypatch):
    from vedit.method import denoise as denoise_module

    real = denoise_module.denoise

    def strict(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return real(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(stages, "denoise", strict)
    options = {**OPTIONS, "device": "cuda", "dtype": "fp16"}
    vedit.edit(clip, tmp_path / "out.mp4", **options)


def test_pick_frames_slices_a_run_of_host_indices_and_sends_others():
    latents = torch.empty(10, 4, 2, 2, device="meta")  # stands in for a device the host must not wait on
    run = pick_frames(latents, torch.arange(3, 7))
    assert run.shape[0] == 4 and run._base is latents  # a view: no index tensor was sent
    picked = pick_frames(latents, torch.tensor([1, 5, 9]))
    assert picked.shape[0] == 3 and picked._base is None
    host = torch.arange(40.0).reshape(10, 4, 1, 1)
    assert torch.equal(pick_frames(host, torch.tensor([2, 7])), host[[2, 7]])


def test_host_copies_are_private_and_device_copies_are_no_ops_on_the_same_device():
    x = torch.arange(6.0)
    kept = to_host(x)
    x += 1
    assert torch.equal(kept, torch.arange(6.0))  # later work on the original does not change the copy
    assert to_device(x, torch.device("cpu")) is x
    assert to_device(x, torch.device("cpu"), torch.float64).dtype == torch.float64


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


def test_profile_stages_nest_add_up_and_are_no_ops_without_a_profile():
    with stage("anything"):  # nothing active: no error, nothing kept
        pass
    timer = Profile("cpu")
    with profiling(timer):
        with stage("outer"):
            time.sleep(0.02)
            with stage("inner"):
                time.sleep(0.01)
        with stage("inner"):
            pass
    seconds = timer.as_dict()
    assert seconds["outer"] >= 0.03 and 0.01 <= seconds["inner"] < seconds["outer"]
    assert timer.calls["inner"] == 2


# ----------------------------------------------------------------------------- precision and batches


def test_the_vae_runs_in_fp32_beside_an_fp16_unet_unless_it_says_it_need_not():
    assert vae_dtype_for(torch.float16) == torch.float32
    assert vae_dtype_for(torch.float16, force_upcast=False) == torch.float16
    assert vae_dtype_for(torch.bfloat16) == torch.bfloat16
    assert vae_dtype_for(torch.float32) == torch.float32


def test_a_vae_in_another_dtype_than_the_unet_takes_and_gives_the_models_dtype():
    sd = load_model("tiny", device="cpu", dtype="bf16")
    reference = load_model("tiny", device="cpu", dtype="fp32")
    sd.vae = reference.vae  # fp32 VAE beside a bf16 UNet, as an fp16 run on a GPU has
    assert sd.vae_dtype == torch.float32 and sd.dtype == torch.bfloat16
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    latents = sd.encode_images(images)
    assert latents.dtype == torch.bfloat16
    assert torch.allclose(latents.float(), reference.encode_images(images), atol=1e-2, rtol=1e-2)
    decoded = sd.decode_latents(latents)
    assert decoded.dtype == torch.float32
    assert torch.equal(decoded, reference.decode_latents(latents.float()))


def test_batch_for_fits_the_budget():
    assert batch_for(budget_bytes=1000, fixed_bytes=100, per_item_bytes=100, items=50) == 9
    assert batch_for(budget_bytes=1000, fixed_bytes=100, per_item_bytes=100, items=5) == 5
    assert batch_for(budget_bytes=50, fixed_bytes=100, per_item_bytes=100, items=5) == 1  # never 0
    assert batch_for(budget_bytes=10**12, fixed_bytes=0, per_item_bytes=1, items=1000, cap=64) == 64


def test_auto_batches_are_eight_on_the_cpu_and_a_given_size_is_kept():
    sd = load_model("tiny", device="cpu", dtype="fp32")
    assert choose_batches(sd, "auto", 40, (64, 64)) == Batches(CPU_BATCH, CPU_BATCH, "cpu")
    assert choose_batches(sd, "auto", 3, (64, 64)).unet == 3
    assert choose_batches(sd, 5, 40, (64, 64)) == Batches(5, 5, "given")


def test_batch_size_auto_and_8_edit_identically_on_the_cpu(clip, tmp_path):
    vedit.edit(clip, tmp_path / "auto", batch_size="auto", **OPTIONS)
    vedit.edit(clip, tmp_path / "eight", batch_size=8, **OPTIONS)
    assert all(np.array_equal(a, b) for a, b in zip(_frames(tmp_path / "auto"), _frames(tmp_path / "eight")))


def test_batch_size_must_be_auto_or_a_whole_number(clip, tmp_path):
    from vedit.errors import ConfigError

    with pytest.raises(ConfigError, match="^batch_size must be auto or a whole number, got 'lots'"):
        vedit.edit(clip, tmp_path / "out.mp4", batch_size="lots", **OPTIONS)


def test_a_long_clip_is_read_in_bounded_batches(tmp_path):
    """The read-ahead holds at most its byte budget of frames, whatever the clip's length."""
    long_clip = make_clip(tmp_path / "long.mp4", frames=60, size=(64, 48))
    from vedit.config import load_config

    checked_clip = open_clip(long_clip, load_config(size="64x48"))
    budget = 64 * 48 * 3 * 4 * 3  # three batches of four frames
    with stages.read_ahead(checked_clip, 4, budget_bytes=budget) as frames:
        time.sleep(0.5)
        assert frames._queue.qsize() <= 3
        assert sum(len(batch) for batch in frames) == 60


@pytest.mark.parametrize("engine, expected_tokens", [("eager", 64), ("torchscript", None)])
def test_auto_nn_backend_is_told_the_runs_tokens_only_when_the_passes_run_eagerly(clip, tmp_path, monkeypatch, engine, expected_tokens):
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
    vedit.edit(clip, tmp_path / "out", engine=engine, size="64x64", max_frames=4, engine_cache=str(tmp_path / "engines"), **options)
    assert asked[-1] == expected_tokens  # 64×64 frames: 8×8 latent tokens
