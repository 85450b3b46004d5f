"""The tiny model, frames and prompts the method tests share."""

from __future__ import annotations

import pytest
import torch

from vedit import plugins
from vedit.config import RunConfig
from vedit.method.ddim import invert
from vedit.method.denoise import EditJob, denoise
from vedit.method.unet import COND, SOURCE, UNCOND
from vedit.model.loading import load_model
from vedit.runtime.runner import Passes

N, B, T = 11, 4, 6  # 11 frames: chunks of 4, 4 and 3


def plain_unet(sd):
    def run(x, t, text):
        return sd.unet(x, t, encoder_hidden_states=text, return_dict=False)[0]

    return run


def run_vedit(sd, clean, embeds, trajectory, tmp_path, **options):
    config = RunConfig(prompt="x", steps=T, chunk_size=B, guidance=7.5, **options)
    scheduler = sd.new_scheduler()
    scheduler.set_timesteps(config.steps)
    job = EditJob(
        config=config,
        model=sd,
        scheduler=scheduler,
        clean_latents=clean,
        trajectory=trajectory,
        generator=torch.Generator().manual_seed(0),
    )
    editor = plugins.get("editor", config.editor)
    plan = editor.plan(job.for_plugin(editor))
    propagator = plugins.get("propagator", config.propagator)
    eager = [plugins.get("engine", "eager")]
    with Passes(sd, eager, conv_layers=plan.conv_layers, qk_layers=plan.qk_layers) as passes:
        latents = denoise(job, plan, propagator, passes, embeds)
    return latents, passes.forwards, plan


# The fixtures the method's tests share: the tiny model, frames that resemble a video's, prompts, their inversion.


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
