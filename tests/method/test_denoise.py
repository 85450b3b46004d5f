"""The denoising loop: the same seed gives the same keyframes, and TokenFlow's work figures."""

from __future__ import annotations

import pytest
import torch

from helpers.method import B, N, T, plain_unet, run_vedit
from vedit.method.ddim import invert
from vedit.method.trajectory import Trajectory
from vedit.method.unet import COND, SOURCE, UNCOND
from vedit.model.loading import load_model


@pytest.fixture(scope="module")
def sd():
    return load_model("tiny@3", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def clean(sd):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1, 4, 8, 8, generator=gen)
    drift = torch.randn(N, 4, 8, 8, generator=gen)
    return base + 0.3 * drift  # frames that resemble each other, like a video's


@pytest.fixture(scope="module")
def embeds(sd):
    prompts = ["a photo of a cat", "", "a watercolor of a dog"]
    return dict(zip((SOURCE, UNCOND, COND), sd.encode_prompt(prompts).split(1)))


@pytest.fixture(scope="module")
def trajectory(sd, clean, embeds):
    return invert(
        plain_unet(sd), sd.new_scheduler(), clean, embeds[SOURCE], inversion_steps=2 * T, steps=T, batch_size=4
    )


@pytest.mark.slow
def test_same_seed_same_keyframes_different_seed_different(sd, clean, embeds, trajectory, tmp_path):
    a, _, _ = run_vedit(sd, clean, embeds, trajectory, tmp_path, seed=1)
    b, _, _ = run_vedit(sd, clean, embeds, trajectory, tmp_path, seed=1)
    c, _, _ = run_vedit(sd, clean, embeds, trajectory, tmp_path, seed=2)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_tokenflow_work_is_three_times_one_plus_one_over_b(sd, clean, embeds, trajectory, tmp_path):
    _, forwards, plan = run_vedit(sd, clean, embeds, trajectory, tmp_path)
    chunks = -(-N // B)
    assert forwards["keyframes"] == 3 * chunks * T
    assert forwards["propagation"] == 3 * N * T
    assert sum(forwards.values()) / (N * T) == pytest.approx(3 * (1 + chunks / N))
    # with B dividing N it is exactly 3(1 + 1/B)
    eight = clean[:8]
    traj8 = Trajectory(
        clean=eight,
        latents={t: v[:8] for t, v in trajectory.latents.items()},
        timesteps=trajectory.timesteps,
        noisiest=trajectory.noisiest,
    )
    _, forwards8, _ = run_vedit(sd, eight, embeds, traj8, tmp_path)
    assert sum(forwards8.values()) / (8 * T) == pytest.approx(3 * (1 + 1 / B))
