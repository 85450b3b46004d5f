"""Editor ``img2img``: fresh Gaussian noise added to each frame at the strength's timestep (SDEdit-style,
as in diffusers' img2img pipeline); needs no inversion."""

from __future__ import annotations

import torch

import vedit
from vedit.config import option_value
from vedit.errors import ConfigError
from vedit.method.denoise import EditJob, EditPlan
from vedit.plugins.hookspecs import hookimpl


class Img2Img:
    name = "img2img"
    description = "plain img2img: noise each frame to --strength and denoise it with the target prompt"
    needs_inversion = False

    class Options(vedit.Options):
        strength: float = vedit.option(
            0.8, help="Fraction of the schedule to run.", min=0.0, max=1.0, aliases=("strength",)
        )

    def timesteps(self, scheduler, config, options: Options | None = None) -> torch.Tensor:
        """The last ``int(strength·T)`` timesteps of the T-step schedule."""
        strength = (options or config.plugin_options(self.name)).strength
        scheduler.set_timesteps(config.steps)
        total = len(scheduler.timesteps)
        run = min(int(total * strength), total)
        if run == 0:
            raise ConfigError(
                f"{option_value('strength', strength)} with {option_value('steps', total)} "
                "runs no denoising step; raise either"
            )
        return scheduler.timesteps[total - run :]

    def plan(self, job: EditJob) -> EditPlan:
        scheduler = job.scheduler
        timesteps = self.timesteps(scheduler, job.config, job.options)
        z0 = job.clean_latents
        noise = torch.randn(z0.shape, generator=job.generator, dtype=torch.float32).to(z0)
        start = scheduler.add_noise(z0, noise, timesteps[:1])

        alphas = scheduler.alphas_cumprod.to(z0)  # on the device once: add_noise would send it every call

        def source(t: int, frames: torch.Tensor | None) -> torch.Tensor:
            # The unedited frames at the same noise level (scheduler.add_noise's formula), for
            # propagators that match tokens.
            clean, drawn = (z0, noise) if frames is None else (z0[frames], noise[frames])
            alpha = alphas[int(t)]
            return alpha**0.5 * clean + (1 - alpha) ** 0.5 * drawn

        return EditPlan(timesteps=timesteps, start_latents=start, source=source)


@hookimpl
def register_editors(register):
    register(Img2Img())
