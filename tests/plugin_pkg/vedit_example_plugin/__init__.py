"""An example third-party vedit plugin: the whole of it is this module plus one entry point.

- editor ``reconstruct``: runs no denoising step, so the output is the VAE's reconstruction of
  the input (useful to see what the autoencoder alone does to a clip);
- post-processor ``negative``: inverts the colours of the decoded frames.
"""

from __future__ import annotations

import numpy as np

from vedit.method.denoise import EditJob, EditPlan
from vedit.plugins.hookspecs import hookimpl


class Reconstruct:
    name = "reconstruct"
    description = "no denoising: write the VAE reconstruction of the input"
    needs_inversion = False

    def plan(self, job: EditJob) -> EditPlan:
        return EditPlan(timesteps=job.scheduler.timesteps[:0], start_latents=job.clean_latents)


class Negative:
    name = "negative"
    description = "invert the colours of every frame"

    def process(self, frames: np.ndarray, start: int) -> np.ndarray:
        return 255 - frames


@hookimpl
def register_editors(register):
    register(Reconstruct())


@hookimpl
def register_postprocessors(register):
    register(Negative())
