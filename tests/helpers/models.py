"""The tiny Stable Diffusion as several test modules check it: its UNet's output, its weights, one-line errors."""

from __future__ import annotations

import pytest
import torch

from vedit.model.stable_diffusion import StableDiffusion


def unet_output(model: StableDiffusion, frames: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(frames, 4, 8, 8, generator=generator)  # 64×64 frames
    text = model.encode_prompt(["a photo of a cat"] * frames)
    with torch.no_grad():
        return model.unet(latents, 981, encoder_hidden_states=text).sample


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message.strip() == message and message
    return message
