"""What only a CUDA GPU can show: the denoising loop never synchronises, the compile engine's CUDA graphs give
eager's outputs and keep each call's own, weights are channels-last, the VAE runs in fp32 beside an fp16 UNet, and
``--batch-size auto`` probes the device's memory. Skipped without a GPU; ``bench/gpu/check.sh`` runs them there,
where neither PyAV nor ffmpeg is installed, so every clip here is a folder of PNG frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vedit
from vedit import plugins
from vedit.model.loading import load_model
from vedit.pipeline import stages
from vedit.runtime.batch_sizes import MEMORY_SHARE, choose_batches, peak_growth
from vedit.runtime.engine_cache import EngineCache
from vedit.runtime.runner import Passes
from vedit_bench._common import synthetic_clip

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu/check.sh runs these)"),
]

OPTIONS = dict(prompt="a painting", model="tiny", steps=2, inversion_steps=2, device="cuda", dtype="fp16", chunk_size=4)
MiB = 2**20


@pytest.fixture
def frames_clip(tmp_path) -> Path:
    """12 frames of 64x48 as PNGs: the size and length of the CPU tests' clip, made without ffmpeg."""
    return synthetic_clip(tmp_path / "clip", 12, (64, 48))


@pytest.fixture(scope="module")
def cuda_sd():
    return load_model("tiny", device="cuda", dtype="fp16")


def test_the_loop_runs_with_synchronising_calls_forbidden(frames_clip, tmp_path, monkeypatch):
    from vedit.method import denoise as denoise_module

    real = denoise_module.denoise
    ran: list[bool] = []

    def strict(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            edited = real(*args, **kwargs)
            ran.append(True)  # the whole loop ran with synchronising calls forbidden
            return edited
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(stages, "denoise", strict)
    result = vedit.edit(frames_clip, tmp_path / "out", **OPTIONS)
    assert ran == [True]  # the edit's one denoising loop went through the strict wrapper
    assert result.frames == 12
    assert len(list((tmp_path / "out").glob("*.png"))) == 12


def test_the_compile_engine_captures_cuda_graphs_that_give_eagers_outputs_and_keep_each_calls_own(cuda_sd, tmp_path):
    from torch._dynamo.utils import counters

    from vedit_engines.compile import compile_mode

    assert compile_mode(torch.device("cuda")) == "reduce-overhead"  # the mode that captures CUDA graphs
    skips = counters["inductor"]["cudagraph_skips"]
    with Passes(cuda_sd, [plugins.get("engine", "eager")]) as eager:
        first = eager.example("plain", 4, (8, 8), generator=torch.Generator().manual_seed(1))
        second = eager.example("plain", 4, (8, 8), generator=torch.Generator().manual_seed(2))
        expected = [eager.run("plain", first), eager.run("plain", second)]
    cache = EngineCache(tmp_path / "engines")
    with Passes(cuda_sd, [plugins.get("engine", "compile")], strict=True, cache=cache) as compiled:
        got_first = compiled.run("plain", first)
        as_returned = got_first.clone()
        got_second = compiled.run("plain", second)  # a replay of the same graph, on other inputs
    assert counters["inductor"]["cudagraph_skips"] == skips  # every graph was captured, none fell back
    for got, want in ((got_first, expected[0]), (got_second, expected[1])):
        error = float((got.float() - want.float()).norm() / want.float().norm())
        assert error < 1e-2, error
    # the replay wrote its own output: the first call's, which a graph's replay would overwrite, is as it was
    assert torch.equal(got_first, as_returned)
    assert not torch.equal(got_first, got_second)


def test_convolution_weights_are_channels_last_on_cuda(cuda_sd):
    convolutions = [m for part in (cuda_sd.unet, cuda_sd.vae) for m in part.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions
    spatial = [m.weight for m in convolutions if m.weight.shape[-1] > 1]  # a 1x1 kernel is both layouts at once
    assert spatial
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in spatial)
    assert not any(w.is_contiguous() for w in spatial)


def test_beside_an_fp16_unet_the_vae_runs_in_fp32_and_decodes_what_the_cpu_decodes(cuda_sd):
    assert next(cuda_sd.unet.parameters()).dtype == torch.float16
    assert cuda_sd.vae_dtype == torch.float32
    cpu_sd = load_model("tiny", device="cpu", dtype="fp32")
    latents = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    on_gpu = cuda_sd.decode_latents(latents.to("cuda", torch.float16))
    on_cpu = cpu_sd.decode_latents(latents.half().float())
    assert torch.isfinite(on_gpu).all()
    error = float((on_gpu - on_cpu).norm() / on_cpu.norm())
    assert error < 1e-2, error  # TF32 convolutions on the GPU, fp32 on the CPU


def test_peak_growth_measures_a_known_allocation_per_item():
    device = torch.device("cuda", torch.cuda.current_device())

    def allocate(batch: int) -> None:
        block = torch.empty(batch * 64 * MiB, dtype=torch.uint8, device=device)
        del block

    fixed, per_item = peak_growth(allocate, device)
    assert (fixed, per_item) == (0, 64 * MiB)


def test_batch_size_auto_probes_the_free_memory_and_fits_the_clip(cuda_sd):
    free_before, _ = torch.cuda.mem_get_info()
    batches = choose_batches(cuda_sd, "auto", frames=40, size=(64, 64), branches=3)
    # the tiny model's images take kilobytes: every one of the 40 frames fits one call
    assert (batches.unet, batches.vae) == (40, 40)
    assert batches.how == f"from {free_before / 2**30:.0f} GiB free"
    assert 0 < MEMORY_SHARE < 1


def test_an_edit_with_batch_size_auto_on_cuda_writes_every_frame(frames_clip, tmp_path):
    result = vedit.edit(frames_clip, tmp_path / "auto", batch_size="auto", **OPTIONS)
    assert result.frames == 12
    frames = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "auto").glob("*.png"))]
    assert len(frames) == 12 and all(f.shape == (48, 64, 3) for f in frames)


def test_the_benchmarks_device_peak_counts_from_its_start_only():
    from vedit_bench._common import device_peak_mb, start_device_peak

    device = torch.device("cuda", torch.cuda.current_device())
    earlier = torch.empty(256 * MiB, dtype=torch.uint8, device=device)
    del earlier  # a higher peak before the start, which must not count
    before = start_device_peak(device)
    block = torch.empty(64 * MiB, dtype=torch.uint8, device=device)
    assert device_peak_mb(device) - before == pytest.approx(64, abs=0.2)  # MiB, each figure rounded to 0.1
    del block
