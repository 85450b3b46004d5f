"""What the editors that start from an inverted clip (pnp, sdedit) share."""

from __future__ import annotations

import torch

from vedit.config import option_value
from vedit.errors import ConfigError
from vedit.method.denoise import EditJob, SourceLatents
from vedit.runtime.transfer import to_device


def check_trajectory(job: EditJob) -> None:
    trajectory = job.trajectory
    if trajectory is None:
        raise ConfigError("this editor needs the inverted clip, but none was given")
    expected = [int(t) for t in job.scheduler.timesteps]
    if trajectory.timesteps != expected:
        raise ConfigError(
            f"the inversion was stored for a {len(trajectory.timesteps)}-step schedule, "
            f"this run uses {len(expected)} steps: pass {option_value('steps', len(trajectory.timesteps))} "
            "or invert again"
        )
    if trajectory.num_frames != job.num_frames:
        raise ConfigError(
            f"the inversion holds {trajectory.num_frames} frames but {job.num_frames} were selected from the clip"
        )


def start_from_ddim_noise(job: EditJob, t: torch.Tensor) -> torch.Tensor:
    """z_0 noised to ``t`` with the DDIM noise ε = (z_T − √ᾱ_T z_0)/√(1 − ᾱ_T) of each frame."""
    trajectory = job.trajectory
    z0 = trajectory.clean.to(job.clean_latents)
    eps = trajectory.ddim_noise(job.scheduler.alphas_cumprod).to(job.clean_latents)
    return job.scheduler.add_noise(z0, eps, t.reshape(1))


def source_from(job: EditJob) -> SourceLatents:
    trajectory = job.trajectory
    device = job.clean_latents.device

    def source(t: int, frames: torch.Tensor | None) -> torch.Tensor:
        return to_device(trajectory.at(t, frames), device)

    return source
