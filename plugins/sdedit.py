"""Editor ``sdedit``: SDEdit (Meng et al., ICLR 2022) from the clip's DDIM noise.

Runs only the last ``round(start·T)`` steps of the T-step schedule, starting from the clean
latents noised with the noise DDIM inversion found.
"""

from __future__ import annotations

from vedit.denoise import EditJob, EditPlan
from vedit.errors import ConfigError
from vedit.hookspecs import hookimpl

from ._inverted import check_trajectory, source_from, start_from_ddim_noise


class SDEdit:
    name = "sdedit"
    description = "SDEdit: denoise the last --start fraction of the schedule from the DDIM noise (needs inversion)"
    needs_inversion = True

    def plan(self, job: EditJob) -> EditPlan:
        check_trajectory(job)
        total = len(job.scheduler.timesteps)
        run = round(job.config.start * total)
        if run == 0:
            raise ConfigError(f"--start {job.config.start} with --steps {total} runs no denoising step; raise either")
        timesteps = job.scheduler.timesteps[total - run :]
        return EditPlan(
            timesteps=timesteps,
            start_latents=start_from_ddim_noise(job, timesteps[0]),
            source=source_from(job),
        )


@hookimpl
def register_editors(register):
    register(SDEdit())
