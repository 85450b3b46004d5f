"""ControlNets acting inside every UNet pass, as tensor inputs: one graph with the UNet for every engine.

A run with controls runs each pass ``P`` as :class:`ControlledPass` (P's module and the ControlNets in one
module): its inputs are P's, then one control image batch per ControlNet, ``control_0 … control_{m−1}``
(frames, 3, H, W) in [0, 1] at the pixel size, then ``control_scales`` (m,), each ControlNet's scale at this
step (a step outside ``--control-start``/``--control-end`` runs the uncontrolled pass instead: :class:`ControlFeed`).
Inside the UNet call (:func:`vedit.method.unet.residuals`) the ControlNets see the rows of
the branches that denoise the edit (uncond and cond; for ``plain`` every row) with their text, and their
residuals, scaled and summed, are added to the UNet's skip connections and middle block. The source branch
gets none: its latents are the inversion's, made by the UNet without control, and what PnP injects and
TokenFlow matches comes from it, so it must stay the unguided reconstruction of the source.

A scale of 0 adds exact zeros: the output is the uncontrolled pass's, bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..plugins.passes import ExampleRequest, PassSpec
from ..runtime.transfer import to_device
from .unet import ControlInputs, residuals

CONTROL_SCALES = "control_scales"


def control_input_names(count: int) -> tuple[str, ...]:
    """The inputs a controlled pass adds after its own: one image batch per ControlNet, then the scales."""
    return (*(f"control_{j}" for j in range(count)), CONTROL_SCALES)


class ControlledPass(nn.Module):
    """A pass module with the run's ControlNets inside: ``(*pass inputs, control_0, …, control_scales) → as the
    pass``. The ControlNets are submodules, so every engine traces and exports them with the UNet."""

    def __init__(self, inner: nn.Module, controlnets: Sequence[nn.Module]):
        super().__init__()
        self.inner = inner
        self.controlnets = nn.ModuleList(controlnets)
        self.name = inner.name
        self._controlled = inner._controlled  # the run's ControlledUNet (a list: not a submodule)

    @property
    def input_names(self) -> tuple[str, ...]:
        return (*self.inner.input_names, *control_input_names(len(self.controlnets)))

    @property
    def layers(self) -> Any:
        return self.inner.layers

    def output_names(self) -> list[str]:
        return self.inner.output_names()

    def forward(self, *inputs: torch.Tensor) -> Any:
        count = len(self.controlnets)
        own = len(inputs) - count - 1
        control = ControlInputs(images=tuple(inputs[own : own + count]), scales=inputs[-1])
        with self._controlled[0].controlling(control):
            return self.inner(*inputs[:own])


def controlled_spec(spec: PassSpec, count: int, vae_scale: int) -> PassSpec:
    """``spec`` as its controlled form with ``count`` ControlNets: the control images grow with the frames of a
    call (one per row for a pass of one image per frame, whose every row is its own image), the scales do not."""
    batched = dict(spec.batched_inputs)
    for name in control_input_names(count)[:-1]:
        batched[name] = "frames"

    def example(request: ExampleRequest) -> tuple[Any, ...]:
        images = [
            torch.rand((request.frames, 3, request.height * vae_scale, request.width * vae_scale),
                       generator=request.generator).to(request.device, request.dtype)
            for _ in range(count)
        ]  # fmt: skip
        scales = torch.ones(count, device=request.device, dtype=torch.float32)
        return (*spec.example(request), *images, scales)

    return dataclasses.replace(spec, example=example, batched_inputs=batched)


class ControlFeed:
    """Each call's control inputs in the denoising loop: the control frames of the frames it covers, sent to the
    device, and every step's scales, sent once.

    ``frames`` holds per ControlNet the control frames of every frame the loop edits, (N, H, W, 3) uint8 arrays
    (memory-mapped ones are read as needed); ``scales`` the scales by step, (steps, m). At a step where every
    scale is 0 (outside ``--control-start``/``--control-end``) the calls run the uncontrolled passes instead,
    which give the same output without running the ControlNets (:meth:`acts`)."""

    def __init__(self, frames: Sequence[Any], scales: Sequence[Sequence[float]], device: torch.device):
        self.frames = list(frames)
        self.device = device
        self._acting = [any(scale != 0 for scale in row) for row in scales]
        self._scales = to_device(
            torch.tensor(scales, dtype=torch.float32).reshape(len(scales), len(self.frames)), device
        )

    def acts(self, step: int) -> bool:
        """Whether any control acts at step index ``step`` (known on the host: no device wait)."""
        return self._acting[step]

    def inputs(self, frames: torch.Tensor, step: int, repeats: int = 1) -> ControlInputs:
        """The control inputs of a call on ``frames`` (global indices among the loop's frames) at step index
        ``step``; with ``repeats``, each image repeated for a pass that takes one row per branch of a frame."""
        index = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
        images = []
        for source in self.frames:
            picked = torch.from_numpy(np.ascontiguousarray(source[index]))
            image = to_device(picked, self.device).permute(0, 3, 1, 2).to(torch.float32) / 255.0
            images.append(image.repeat(repeats, 1, 1, 1) if repeats > 1 else image)
        return ControlInputs(images=tuple(images), scales=self._scales[step])


__all__ = [
    "CONTROL_SCALES", "ControlFeed", "ControlInputs", "ControlledPass", "control_input_names", "controlled_spec",
    "residuals",
]  # fmt: skip
