"""An example third-party vedit plugin: the whole of it is this module plus one entry point, and it uses
only vedit's public API.

- editor ``reconstruct``: runs no denoising step, so the output is the VAE's reconstruction of
  the input (useful to see what the autoencoder alone does to a clip);
- editor ``tint``: runs no denoising step either, and shifts the clean latents along their first
  channel before they are decoded: a colour cast of ``--tint-amount`` (changes the output), said
  as a warning with ``--tint-verbose`` (changes nothing written);
- post-processor ``negative``: inverts the colours of the decoded frames.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

import vedit
from vedit.method.denoise import EditJob, EditPlan
from vedit.plugins.hookspecs import hookimpl

# The latent direction ``tint`` shifts along: the first of SD's four latent channels.
TINT = torch.tensor([1.0, 0.0, 0.0, 0.0]).reshape(1, 4, 1, 1)


class Reconstruct:
    name = "reconstruct"
    description = "no denoising: write the VAE reconstruction of the input"
    needs_inversion = False

    def plan(self, job: EditJob) -> EditPlan:
        return EditPlan(timesteps=job.scheduler.timesteps[:0], start_latents=job.clean_latents)


class Tint:
    name = "tint"
    description = "no denoising: shift the clean latents along their first channel (a colour cast)"
    needs_inversion = False

    class Options(vedit.Options):
        amount: float = vedit.option(0.5, help="How far to shift the latents.", min=0.0, max=1.0)
        verbose: bool = vedit.option(False, help="Say the shift applied, as a warning.", affects_output=False)

    def timesteps(self, scheduler, config) -> torch.Tensor:
        """None of them: what is written is the decoded start latents."""
        return scheduler.timesteps[:0]

    def plan(self, job: EditJob) -> EditPlan:
        z0 = job.clean_latents  # (N, 4, h, w)
        if job.options.verbose:
            warnings.warn(f"tint: amount {job.options.amount:g} on {job.num_frames} frames", stacklevel=1)
        start = z0 + job.options.amount * TINT.to(z0)
        return EditPlan(timesteps=self.timesteps(job.scheduler, job.config), start_latents=start)


class Negative:
    name = "negative"
    description = "invert the colours of every frame"

    def process(self, frames: np.ndarray, start: int) -> np.ndarray:
        return 255 - frames


@hookimpl
def register_editors(register):
    register(Reconstruct())
    register(Tint())


@hookimpl
def register_postprocessors(register):
    register(Negative())
