"""Editor ``sdedit``: SDEdit (Meng et al., ICLR 2022) from the clip's DDIM noise.

Runs only the last ``round(start·T)`` steps of the T-step schedule, starting from the clean
latents noised with the noise DDIM inversion found.
"""

from __future__ import annotations

import torch

import vedit
from vedit.config import option_value
from vedit.errors import ConfigError
from vedit.method.denoise import EditJob, EditPlan
from vedit.plugins.hookspecs import hookimpl

from ._inverted import check_trajectory, source_from, start_from_ddim_noise


class SDEdit:
    name = "sdedit"
    description = "SDEdit: denoise the last --start fraction of the schedule from the DDIM noise (needs inversion)"
    needs_inversion = True

    class Options(vedit.Options):
        start: float = vedit.option(
            0.9, help="Fraction of the schedule to run from the DDIM noise.", min=0.0, max=1.0, aliases=("start",)
        )

    def timesteps(self, scheduler, config, options: Options | None = None) -> torch.Tensor:
        """The last ``round(start·T)`` timesteps of the T-step schedule."""
        start = (options or config.plugin_options(self.name)).start
        scheduler.set_timesteps(config.steps)
        total = len(scheduler.timesteps)
        run = round(start * total)
        if run == 0:
            raise ConfigError(
                f"{option_value('start', start)} with {option_value('steps', total)} "
                "runs no denoising step; raise either"
            )
        return scheduler.timesteps[total - run :]

    def plan(self, job: EditJob) -> EditPlan:
        check_trajectory(job)
        timesteps = self.timesteps(job.scheduler, job.config, job.options)
        return EditPlan(
            timesteps=timesteps,
            start_latents=start_from_ddim_noise(job, timesteps[0]),
            source=source_from(job),
        )


@hookimpl
def register_editors(register):
    register(SDEdit())
