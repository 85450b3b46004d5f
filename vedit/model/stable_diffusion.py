"""The Stable Diffusion that vedit runs: its parts on one device in one dtype, prompts to text
embeddings, images to latents and back, and the model written as a diffusers folder."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from .families import ModelFamily

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SECOND_ENCODER = ("text_encoder_2", "tokenizer_2")  # SDXL's, in a diffusers folder beside the others


@dataclass(eq=False)
class StableDiffusion:
    """The parts of a Stable Diffusion model that vedit runs, on one device in one dtype.

    ``text_encoder_2`` and ``tokenizer_2`` are SDXL's second text encoder (None for SD 1.x/2.x). What the
    method needs to know of the architecture is its :attr:`family`'s.
    """

    unet: UNet2DConditionModel = field(repr=False)
    vae: AutoencoderKL = field(repr=False)
    text_encoder: CLIPTextModel = field(repr=False)
    tokenizer: CLIPTokenizer = field(repr=False)
    scheduler: DDIMScheduler = field(repr=False)
    model_id: str
    revision: str | None
    fingerprint: str
    device: torch.device
    dtype: torch.dtype
    text_encoder_2: Any = field(default=None, repr=False)
    tokenizer_2: Any = field(default=None, repr=False)
    # SDXL: whether the empty prompt's conditioning is zeros rather than its embedding (model_index.json says)
    force_zeros_for_empty_prompt: bool = field(default=True, repr=False)
    # Multi-vector embeddings' tokens (vedit.model.adapters): "<cat>" → ["<cat>", "<cat>_1", "<cat>_2"].
    embedding_tokens: dict[str, list[str]] = field(default_factory=dict, repr=False)
    # The last run's ControlNets by identity (vedit.pipeline.stages.load_controlnets), for a model used run after run.
    last_controlnets: dict[Any, Any] = field(default_factory=dict, repr=False)

    @cached_property
    def family(self) -> ModelFamily:
        """The registered model family of this UNet (:func:`vedit.model.families.family_of`)."""
        from .families import family_of

        return family_of(self.unet.config, self.model_id)

    @property
    def components(self) -> tuple[str, ...]:
        """The parts a diffusers folder of this model holds."""
        return COMPONENTS + (SECOND_ENCODER if self.text_encoder_2 is not None else ())

    @property
    def text_shape(self) -> tuple[int, int]:
        """(L, D) of one prompt's conditioning, the UNet passes' ``text`` input."""
        return self.family.text_shape(self)

    def unet_inputs(self, text: torch.Tensor) -> dict[str, Any]:
        """The UNet's keyword arguments for the conditioning ``text`` (traceable)."""
        return self.family.unet_inputs(text, self.unet.config)

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def vae_dtype(self) -> torch.dtype:
        """The VAE's own dtype: fp32 beside an fp16 UNet (see :func:`vae_dtype_for`), else the model's."""
        return next(self.vae.parameters()).dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def new_scheduler(self) -> DDIMScheduler:
        """A fresh scheduler: ``set_timesteps`` leaves state behind, so each run gets its own."""
        return type(self.scheduler).from_config(self.scheduler.config)

    def expand_prompt(self, prompt: str) -> str:
        """``prompt`` as the text encoder reads it: each multi-vector embedding's token written out as all of its
        tokens (:func:`expand_prompt`)."""
        return expand_prompt(prompt, self.embedding_tokens) if self.embedding_tokens else prompt

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str], size: tuple[int, int] | None = None) -> torch.Tensor:
        """The UNet's conditioning for each prompt (n, L, D), as the family makes it: for SD 1.x/2.x the
        CLIP text embeddings padded to 77 tokens. ``size`` is the frames' (height, width) in pixels (SDXL's
        size conditioning; the family's training size without it)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        return self.family.encode_prompt(self, [self.expand_prompt(prompt) for prompt in prompts], size)

    def prompt_overflow(self, prompt: str) -> tuple[int, str, str] | None:
        """(tokens, kept, dropped) when ``prompt`` is longer than the text encoder reads, else None.

        CLIP reads 77 tokens including its start and end markers and ``encode_prompt`` cuts the
        rest. ``kept`` and ``dropped`` are the prompt's own words on either side of the cut (a word
        the cut falls inside counts as dropped).
        """
        limit = self.tokenizer.model_max_length

        def tokens(text: str) -> int:
            return len(self.tokenizer(self.expand_prompt(text), truncation=False, verbose=False).input_ids)

        count = tokens(prompt)
        if count <= limit:
            return None
        words = prompt.split()
        low, high = 0, len(words)  # the most whole words that fit
        while low < high:
            middle = (low + high + 1) // 2
            if tokens(" ".join(words[:middle])) <= limit:
                low = middle
            else:
                high = middle - 1
        return count, " ".join(words[:low]), " ".join(words[low:])

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Images (n, 3, H, W) in [0, 1] to latents (n, 4, H/8, W/8): posterior mean × scale."""
        height, width = _check_images(images, self.vae_scale_factor)
        if not images.is_floating_point():
            images = images.float() / 255
        scale = self.vae_scale_factor
        latents = [
            torch.empty(
                0,
                self.vae.config.latent_channels,
                height // scale,
                width // scale,
                device=self.device,
                dtype=self.dtype,
            )
        ]
        for start in range(0, images.shape[0], max(1, batch_size)):
            batch = images[start : start + batch_size].to(self.device, self.vae_dtype) * 2 - 1  # [-1, 1]
            posterior = self.vae.encode(batch).latent_dist
            latents.append((posterior.mean * self.latent_scale).to(self.dtype))  # (b, 4, H/8, W/8)
        return torch.cat(latents)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Latents (n, 4, h, w) to images (n, 3, 8h, 8w) in [0, 1], float32 on the CPU."""
        if latents.ndim != 4:
            raise ValueError(f"latents must have shape (n, 4, h, w), not {tuple(latents.shape)}")
        n, _, height, width = latents.shape
        scale = self.vae_scale_factor
        images = [torch.empty(0, 3, height * scale, width * scale)]
        for start in range(0, n, max(1, batch_size)):
            batch = latents[start : start + batch_size].to(self.device, self.vae_dtype) / self.latent_scale
            decoded = self.vae.decode(batch).sample  # (b, 3, H, W) in about [-1, 1]
            images.append((decoded / 2 + 0.5).clamp(0, 1).float().cpu())
        return torch.cat(images)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the model as a diffusers folder that ``load_model(folder)`` reads back."""
        from diffusers import __version__ as diffusers_version

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in self.components:
            getattr(self, name).save_pretrained(folder / name)
        second = self.text_encoder_2 is not None
        index = {
            "_class_name": "StableDiffusionXLPipeline" if second else "StableDiffusionPipeline",
            "_diffusers_version": diffusers_version,
            "unet": ["diffusers", type(self.unet).__name__],
            "vae": ["diffusers", type(self.vae).__name__],
            "text_encoder": ["transformers", type(self.text_encoder).__name__],
            "tokenizer": ["transformers", type(self.tokenizer).__name__],
            "scheduler": ["diffusers", type(self.scheduler).__name__],
        }
        if second:
            index["text_encoder_2"] = ["transformers", type(self.text_encoder_2).__name__]
            index["tokenizer_2"] = ["transformers", type(self.tokenizer_2).__name__]
            index["force_zeros_for_empty_prompt"] = self.force_zeros_for_empty_prompt
        else:
            index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
        (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        return folder


def expand_prompt(prompt: str, embedding_tokens: dict[str, list[str]]) -> str:
    """``prompt`` with each multi-vector embedding's token written out as all of its tokens, as the text encoder
    reads them and :mod:`vedit.model.adapters` adds them (``<cat>`` → ``<cat> <cat>_1 <cat>_2``)."""
    for token, tokens in embedding_tokens.items():
        written_out = " ".join(tokens)
        prompt = re.sub(re.escape(token) + r"(?!_\d)", lambda _, text=written_out: text, prompt)
    return prompt


def _check_images(images: torch.Tensor, scale: int) -> tuple[int, int]:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (n, 3, H, W), not {tuple(images.shape)}")
    height, width = images.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"image size {width}x{height} is not a multiple of {scale}")
    return height, width
