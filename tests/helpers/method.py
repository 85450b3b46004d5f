"""The tiny model, frames and prompts the method tests share."""

from __future__ import annotations

import torch

from vedit import plugins
from vedit.config import RunConfig
from vedit.method.denoise import EditJob, denoise
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
    plan = plugins.get("editor", config.editor).plan(job)
    propagator = plugins.get("propagator", config.propagator)
    eager = [plugins.get("engine", "eager")]
    with Passes(sd, eager, conv_layers=plan.conv_layers, qk_layers=plan.qk_layers) as passes:
        latents = denoise(job, plan, propagator, passes, embeds)
    return latents, passes.forwards, plan
