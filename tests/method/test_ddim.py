"""DDIM inversion: exact reversibility, the sampling schedule it stores, the inversion-steps rule, and its cost."""

from __future__ import annotations

import pytest
import torch

from helpers.method import N, T, clean, embeds, plain_unet, sd  # noqa: F401  (fixtures, used by name)
from vedit.errors import ConfigError
from vedit.method.ddim import inversion_timesteps, invert, reconstruct
from vedit.method.unet import SOURCE
from vedit.model.loading import load_model


def latent_blind_unet(x, t, text):
    """ε that depends on t and the text only: DDIM inversion is then exactly reversible."""
    gen = torch.Generator().manual_seed(int(t))
    return torch.randn(x.shape[1:], generator=gen).expand_as(x) * (1 + text.mean())


@pytest.mark.parametrize("inversion_steps, steps", [(50, 50), (500, 50), (1000, 50), (20, 10)])
def test_inversion_is_exactly_reversible_and_stores_the_sampling_schedule(inversion_steps, steps):
    sd = load_model("tiny", device="cpu", dtype="fp32")
    clean = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    text = torch.zeros(1, 77, 32, dtype=torch.float64)
    calls = []

    def counting(x, t, text):
        calls.append(x.shape[0])
        return latent_blind_unet(x, t, text)

    trajectory = invert(
        counting, sd.new_scheduler(), clean, text, inversion_steps=inversion_steps, steps=steps, batch_size=2
    )
    scheduler = sd.new_scheduler()
    scheduler.set_timesteps(steps)
    assert trajectory.timesteps == [int(t) for t in scheduler.timesteps]
    assert trajectory.noisiest == max(inversion_timesteps(sd.new_scheduler(), inversion_steps)) < 1000
    assert set(trajectory.latents) == set(trajectory.timesteps) | {trajectory.noisiest}
    assert sum(calls) == 3 * len(inversion_timesteps(sd.new_scheduler(), inversion_steps))
    back = reconstruct(latent_blind_unet, sd.new_scheduler(), trajectory, text, inversion_steps=inversion_steps)
    assert torch.allclose(back, clean, atol=1e-8)
    # the DDIM noise recovered from z_T brings z_0 back to z_T
    eps = trajectory.ddim_noise(scheduler.alphas_cumprod)
    z_t = scheduler.add_noise(clean, eps, torch.tensor([trajectory.noisiest]))
    assert torch.allclose(z_t, trajectory.latents[trajectory.noisiest], atol=1e-6)


def test_a_schedule_that_misses_the_sampling_steps_is_refused():
    sd = load_model("tiny", device="cpu", dtype="fp32")
    with pytest.raises(ConfigError, match="^inversion_steps=30 does not pass through the 50-step"):
        invert(
            latent_blind_unet,
            sd.new_scheduler(),
            torch.zeros(1, 4, 8, 8),
            torch.zeros(1, 77, 32),
            inversion_steps=30,
            steps=50,
        )


def test_the_inversion_steps_rule_is_the_one_the_help_states():
    from diffusers import DDIMScheduler

    from vedit.cli.options import INVERSION_STEPS_HELP
    from vedit.method.ddim import check_schedules
    from vedit.model.builders import SD_SCHEDULER_CONFIG

    scheduler = DDIMScheduler(**SD_SCHEDULER_CONFIG)

    def passes(steps: int, inversion_steps: int) -> bool:
        try:
            check_schedules(scheduler, steps, inversion_steps)
        except ConfigError:
            return False
        return True

    assert [n for n in range(50, 1001, 50) if passes(50, n)] == [50, 100, 200, 250, 500, 1000]
    assert "with 50 steps, 50, 100, 200, 250, 500 and 1000 do" in INVERSION_STEPS_HELP
    assert not passes(3, 6)  # a multiple of the steps, and yet it misses t=667
    for steps, given, nearest in ((3, 6, 9), (20, 50, 40), (50, 300, 250), (50, 400, 500), (2, 3, 4)):
        with pytest.raises(ConfigError) as error:
            check_schedules(scheduler, steps, given)
        assert str(error.value).endswith(f"; use inversion_steps={nearest}")
        assert passes(steps, nearest)
    with pytest.raises(
        ConfigError,
        match=r"^inversion_steps=6 does not pass through the 3-step sampling schedule "
        r"\(it never visits t=667\); use inversion_steps=9$",
    ):
        check_schedules(scheduler, 3, 6)


def test_inversion_costs_one_forward_per_frame_per_step(sd, clean, embeds):
    calls = []

    def counting(x, t, text):
        calls.append(x.shape[0])
        return plain_unet(sd)(x, t, text)

    invert(counting, sd.new_scheduler(), clean, embeds[SOURCE], inversion_steps=12, steps=T, batch_size=4)
    assert sum(calls) == N * 12
