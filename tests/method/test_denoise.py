"""The denoising loop: the same seed gives the same keyframes, and TokenFlow's work figures."""

from __future__ import annotations

import pytest
import torch

from helpers.method import B, N, T, clean, embeds, plain_unet, run_vedit, sd, trajectory  # noqa: F401  (fixtures, used by name)
from vedit.method.trajectory import Trajectory


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
    assert forwards["keyframe"] == 3 * chunks * T
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
