"""Devices and dtypes by name (vedit.model.device), and the VAE's dtype beside the UNet's (the model's encode and
decode in it)."""

from __future__ import annotations

import pytest
import torch

from helpers.models import one_line
from vedit.errors import ConfigError
from vedit.model.device import resolve_device, resolve_dtype, vae_dtype_for
from vedit.model.loading import load_model


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


def test_auto_device_is_the_cpu_without_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_device_prefers_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == torch.device("cuda", 0)


@pytest.mark.parametrize(
    "name, says",
    [
        ("gpu0", "unknown device 'gpu0'"),
        ("cuda", "no CUDA GPU"),
        ("mps", "not available"),
    ],
)
def test_devices_that_are_not_here_are_one_line_config_errors(monkeypatch, name, says):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError) as error:
        resolve_device(name)
    assert says in one_line(error)


def test_a_cuda_index_past_the_last_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError) as error:
        resolve_device("cuda:2")
    assert "cuda:0 to cuda:1" in one_line(error)


CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.mark.parametrize(
    "name, device, dtype",
    [
        ("auto", CPU, torch.float32),
        (None, CPU, torch.float32),
        ("auto", CUDA, torch.float16),
        ("auto", torch.device("mps", 0), torch.float16),
        ("fp32", CUDA, torch.float32),
        ("float32", CPU, torch.float32),
        ("FP16", CUDA, torch.float16),
        ("half", CUDA, torch.float16),
        ("float16", CUDA, torch.float16),
        ("bf16", CPU, torch.bfloat16),
        ("bfloat16", CPU, torch.bfloat16),
        ("torch.float32", CPU, torch.float32),
        (torch.bfloat16, CPU, torch.bfloat16),
    ],
)
def test_dtypes_by_name(monkeypatch, name, device, dtype):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_dtype(name, device) == dtype


def test_fp16_on_the_cpu_suggests_fp32_or_bf16():
    with pytest.raises(ConfigError) as error:
        resolve_dtype("fp16", CPU)
    message = one_line(error)
    assert "fp32" in message and "bf16" in message


@pytest.mark.parametrize("name", ["int8", "fp8", torch.int64])
def test_an_unknown_dtype_is_a_config_error(name):
    with pytest.raises(ConfigError) as error:
        resolve_dtype(name, CPU)
    assert "unknown dtype" in one_line(error)
