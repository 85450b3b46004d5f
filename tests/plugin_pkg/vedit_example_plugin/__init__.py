"""An example third-party vedit plugin: the whole of it is this module plus one entry point, and it uses
only vedit's public API.

- editor ``reconstruct``: runs no denoising step, so the output is the VAE's reconstruction of
  the input (useful to see what the autoencoder alone does to a clip);
- editor ``tint``: runs no denoising step either, and shifts the clean latents along their first
  channel before they are decoded: a colour cast of ``--tint-amount`` (changes the output), said
  as a warning with ``--tint-verbose`` (changes nothing written);
- post-processor ``negative``: inverts the colours of the decoded frames;
- propagator ``prevframe``, with a UNet pass of its own (``prevframe``, registered through
  ``register_passes``): every frame attends to its own tokens and to the previous frame's, in calls of
  ``--prevframe-window`` frames (changes the output); ``--prevframe-verbose`` says the calls (changes
  nothing written).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

import vedit
from vedit.method.attention import bounded_joint_attention, per_frame_attention, project_out, project_qkv
from vedit.method.denoise import Denoiser, EditJob, EditPlan, Step
from vedit.method.passes import BRANCHES, PassModule, branched_example
from vedit.method.unet import SOURCE, CallContext, Injection
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


class PrevFrameAttention:
    """Cross-frame attention (Text2Video-Zero, Khachatryan et al., ICCV 2023), with the previous frame in place
    of the first: in the edited branches each frame's queries attend to the keys and values of the frames
    ``partners`` (n, 2) names, itself and the one before; the source branch attends per frame, as the
    unedited clip does, so that what PnP injects from it is the clip's own."""

    def __init__(self, partners: torch.Tensor):
        self.partners = partners

    def self_attention(self, layer, attn, hidden_states, ctx):
        query, key, value = project_qkv(attn, hidden_states, ctx, layer)  # (3n, seq, inner) each
        parts = []
        for branch in ctx.branches:
            s = ctx.branch(branch)
            if branch == SOURCE:
                parts.append(per_frame_attention(attn, query[s], key[s], value[s]))
            else:
                parts.append(bounded_joint_attention(attn, query[s], key[s], value[s], self.partners))
        return project_out(attn, torch.cat(parts))  # (3n, seq, dim)


class PrevFramePass(PassModule):
    """``(latents[3n], t, text[3n], flags, partners (n, 2)) → ε``: the UNet with :class:`PrevFrameAttention`
    and PnP injection."""

    name = "prevframe"
    input_names = ("latents", "t", "text", "flags", "partners")

    def forward(self, latents, t, text, flags, partners):
        ctx = CallContext(
            branches=BRANCHES, frames=latents.shape[0] // 3, attention=PrevFrameAttention(partners),
            injection=Injection(conv=flags[0], qk=flags[1]),
        )  # fmt: skip
        return self.run_unet(latents, t, text, ctx)


def previous_partners(frames: int) -> torch.Tensor:
    """Each frame of a call with the one before it, ``[[0, 0], [1, 0], [2, 1], …]`` (frames, 2) int64: the
    first attends to itself twice, which is its own self-attention."""
    own = torch.arange(frames)
    return torch.stack([own, (own - 1).clamp(min=0)], dim=1)


def prevframe_example(request: vedit.ExampleRequest) -> tuple[torch.Tensor, ...]:
    return (*branched_example(request), previous_partners(request.frames).to(request.device))


PREVFRAME = vedit.PassSpec(
    name="prevframe", build=PrevFramePass, example=prevframe_example,
    batched_inputs={"latents": "rows", "text": "rows", "partners": "frames"},
    description="every frame attends to its own tokens and the previous frame's",
)  # fmt: skip


def calls(frames: int, window: int) -> list[tuple[range, int]]:
    """The UNet calls of one step: ``window`` frames each, and the frame before the first (whose ε is
    not used: it is there so that the first attends to it), as (the frames of the call, the first
    frame whose ε it gives)."""
    return [(range(max(start - 1, 0), min(start + window, frames)), start) for start in range(0, frames, window)]


class PrevFrame:
    """Every frame denoised with :class:`PrevFrameAttention`, ``window`` frames a call. A call also holds the
    frame before its first, as that frame is alone (it attends to itself), so that the first attends to it."""

    name = "prevframe"
    description = "every frame attends to its own tokens and the previous frame's (cross-frame attention)"
    # Always the source branch: a pass has one number of images per frame (PassSpec.rows_per_frame), and what
    # the host asks of the cost (pass_batches, planned_forwards) does not say whether a run has that branch.
    # An editor that provides no source latents cannot run with it (one line, exit 4).
    needs_source_branch = True

    class Options(vedit.Options):
        window: int = vedit.option(4, help="Frames denoised per UNet call.", min=1, max=64)
        verbose: bool = vedit.option(False, help="Say the calls of each step, as a warning.", affects_output=False)

    def planned_forwards(self, frames: int, steps_run: int, options: Options) -> dict[str, int]:
        """Three branches of every frame of every call, each step."""
        return {"prevframe": 3 * steps_run * sum(len(call) for call, _ in calls(frames, options.window))}

    def pass_batches(self, frames: int, batch_size: int, options: Options) -> dict[str, list[int]]:
        """Every call's length, three branches each; ``--batch-size`` plays no part."""
        return {"prevframe": sorted({3 * len(call) for call, _ in calls(frames, options.window)})}

    def batch_size_branches(self, branches: int, options: Options) -> int:
        """1: it makes no call of ``--batch-size`` frames (only the inversion does)."""
        return 1

    def begin(self, job: EditJob, plan: EditPlan) -> None:
        self.calls = calls(job.num_frames, job.options.window)
        self.partners: dict[int, torch.Tensor] = {}
        if job.options.verbose:
            spans = ", ".join(f"{call.start}-{call.stop - 1}" for call, _ in self.calls)
            warnings.warn(f"prevframe: {len(self.calls)} calls a step, frames {spans}", stacklevel=1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}  # nothing changes from step to step but the latents

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def predict(self, step: Step, latents: torch.Tensor, denoiser: Denoiser) -> torch.Tensor:
        eps = torch.empty_like(latents)
        for call, first in self.calls:
            n = len(call)
            if n not in self.partners:
                self.partners[n] = previous_partners(n).to(latents.device)  # once per call length
            frames = torch.arange(call.start, call.stop)
            guided, _ = denoiser.run("prevframe", frames, latents[call.start : call.stop], step, self.partners[n])
            eps[first : call.stop] = guided[first - call.start :]
        return eps


@hookimpl
def register_editors(register):
    register(Reconstruct())
    register(Tint())


@hookimpl
def register_postprocessors(register):
    register(Negative())


@hookimpl
def register_propagators(register):
    register(PrevFrame())


@hookimpl
def register_passes(register):
    register(PREVFRAME)
