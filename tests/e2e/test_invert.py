"""Inverting a clip end to end: the reconstruction check, and the cache the Python API reuses."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from helpers.cli import vedit
from vedit.model.loading import load_model

pytestmark = pytest.mark.slow


def test_invert_check_reports_psnr_that_matches_a_direct_computation(clip):
    result = vedit(
        "invert", clip, "--model", "tiny", "--size", "64x48", "--steps", "2", "--inversion-steps", "2", "--check"
    )
    assert result.exit_code == 0, result.output
    found = re.search(r"reconstruction PSNR ([\d.]+) dB \(the VAE alone: ([\d.]+) dB\)", result.stdout)
    assert found, result.stdout
    sampled, vae_alone = float(found.group(1)), float(found.group(2))
    from vedit.io.reader import FrameReader

    sd = load_model("tiny", device="cpu", dtype="fp32")
    frames = FrameReader(clip, size=(64, 48)).read_all()
    images = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    decoded = sd.decode_latents(sd.encode_images(images))
    decoded = (decoded.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    mse = np.mean((decoded.astype(np.float64) - frames) ** 2)
    assert vae_alone == pytest.approx(10 * np.log10(255**2 / mse), abs=0.01)
    assert 0 < sampled < 100


def test_python_api_inverts_once_then_reuses_the_cache(clip, tmp_path):
    import vedit as api

    options = dict(model="tiny", size="64x48", steps=2, inversion_steps=2)
    first = api.invert(clip, tmp_path / "t.safetensors", check=True, **options)
    again = api.invert(clip, **options)
    assert (first.how, again.how) == ("computed", "cached")
    assert first.path == tmp_path / "t.safetensors" and again.path is None
    assert again.reconstruction is None and 0 < first.reconstruction.psnr < 100
    assert torch.equal(
        first.trajectory.latents[first.trajectory.noisiest], again.trajectory.latents[again.trajectory.noisiest]
    )
