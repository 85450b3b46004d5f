"""Editor ``pnp``: Plug-and-Play feature injection (Tumanyan et al., CVPR 2023) from the inverted clip.

For the first ``int(T·f_t)`` steps (``--pnp-f-t``) the residual branch of the model family's conv-injection
resnet (SD 1.x/2.x: ``up_blocks[1].resnets[1]``) in the uncond and cond branches takes the source branch's;
for the first ``int(T·pnp_attn_t)`` steps the self-attention queries and keys of its Q/K-injection blocks
(SD: decoder blocks 4–11) do (``--pnp-attn-t``).
"""

from __future__ import annotations

import torch

import vedit
from vedit.method.denoise import EditJob, EditPlan
from vedit.method.unet import Injection
from vedit.plugins.hookspecs import hookimpl

from ..families.sd import SD_CONV_LAYERS as CONV_LAYERS  # SD 1.x/2.x's, for callers that name them
from ..families.sd import SD_QK_LAYERS as QK_LAYERS
from ._inverted import check_trajectory, source_from, start_from_ddim_noise


class PnP:
    name = "pnp"
    description = "Plug-and-Play: inject source conv features and self-attention Q/K (needs inversion)"
    needs_inversion = True
    conv_layers = CONV_LAYERS  # SD 1.x/2.x's; every family's come from injection_layers
    qk_layers = QK_LAYERS

    class Options(vedit.Options):
        f_t: float = vedit.option(0.8, help="Fraction of steps with conv feature injection.", min=0.0, max=1.0)
        attn_t: float = vedit.option(0.5, help="Fraction of steps with self-attention Q/K injection.", min=0.0, max=1.0)

    def injection_layers(self, family) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Where PnP injects in a model of ``family``: the layers the family names for it."""
        return family.conv_layers, family.qk_layers

    def timesteps(self, scheduler, config) -> torch.Tensor:
        """All T timesteps."""
        scheduler.set_timesteps(config.steps)
        return scheduler.timesteps

    def plan(self, job: EditJob) -> EditPlan:
        check_trajectory(job)
        timesteps = self.timesteps(job.scheduler, job.config)
        total = len(timesteps)
        conv_steps = int(total * job.options.f_t)
        qk_steps = int(total * job.options.attn_t)
        conv_layers, qk_layers = self.injection_layers(job.model.family)
        return EditPlan(
            timesteps=timesteps,
            start_latents=start_from_ddim_noise(job, timesteps[0]),
            source=source_from(job),
            injection=lambda step: Injection(conv=step < conv_steps, qk=step < qk_steps),
            conv_layers=conv_layers,
            qk_layers=qk_layers,
            needs_source_branch=True,
        )


@hookimpl
def register_editors(register):
    register(PnP())
