"""Propagator ``none``: every frame is denoised on its own (the per-frame baseline)."""

from __future__ import annotations

import torch

from vedit.method.denoise import Denoiser, EditJob, EditPlan, Step
from vedit.plugins.hookspecs import hookimpl


class PerFrame:
    name = "none"
    description = "no coupling: each frame is edited on its own, in batches of --batch-size"
    needs_source_branch = False

    def begin(self, job: EditJob, plan: EditPlan) -> None:
        self.batch_size = job.config.batch_size

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}  # nothing changes from step to step but the latents

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def predict(self, step: Step, latents: torch.Tensor, denoiser: Denoiser) -> torch.Tensor:
        eps = torch.empty_like(latents)
        for start in range(0, latents.shape[0], self.batch_size):
            stop = min(start + self.batch_size, latents.shape[0])
            # slices, not index tensors: indexing a device tensor with host indices waits for the device
            eps[start:stop] = denoiser(torch.arange(start, stop), latents[start:stop], step)
        return eps


@hookimpl
def register_propagators(register):
    register(PerFrame())
