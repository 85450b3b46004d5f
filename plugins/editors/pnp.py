"""Editor ``pnp``: Plug-and-Play feature injection (Tumanyan et al., CVPR 2023) from the inverted clip.

For the first ``int(T·f_t)`` steps (``--pnp-f-t``) the residual branch of ``up_blocks[1].resnets[1]`` in the
uncond and cond branches takes the source branch's; for the first ``int(T·pnp_attn_t)`` steps the
self-attention queries and keys of decoder blocks 4–11 do (``--pnp-attn-t``).
"""

from __future__ import annotations

import torch

import vedit
from vedit.method.denoise import EditJob, EditPlan
from vedit.method.unet import Injection
from vedit.plugins.hookspecs import hookimpl

from ._inverted import check_trajectory, source_from, start_from_ddim_noise

CONV_LAYERS = ("up_blocks.1.resnets.1",)
QK_LAYERS = (
    "up_blocks.1.attentions.1",
    "up_blocks.1.attentions.2",
    "up_blocks.2.attentions.0",
    "up_blocks.2.attentions.1",
    "up_blocks.2.attentions.2",
    "up_blocks.3.attentions.0",
    "up_blocks.3.attentions.1",
    "up_blocks.3.attentions.2",
)


class PnP:
    name = "pnp"
    description = "Plug-and-Play: inject source conv features and self-attention Q/K (needs inversion)"
    needs_inversion = True
    conv_layers = CONV_LAYERS  # what `vedit engines build` builds the passes with
    qk_layers = QK_LAYERS

    class Options(vedit.Options):
        f_t: float = vedit.option(0.8, help="Fraction of steps with conv feature injection.", min=0.0, max=1.0)
        attn_t: float = vedit.option(0.5, help="Fraction of steps with self-attention Q/K injection.", min=0.0, max=1.0)

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
        return EditPlan(
            timesteps=timesteps,
            start_latents=start_from_ddim_noise(job, timesteps[0]),
            source=source_from(job),
            injection=lambda step: Injection(conv=step < conv_steps, qk=step < qk_steps),
            conv_layers=CONV_LAYERS,
            qk_layers=QK_LAYERS,
            needs_source_branch=True,
        )


@hookimpl
def register_editors(register):
    register(PnP())
