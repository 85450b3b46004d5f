"""The built-in model families: Stable Diffusion 1.x, 2.x (ε and v-prediction) and SDXL base.

Where PnP injects and TokenFlow propagates in each is chosen by one principle, PnP's (Tumanyan et al.,
CVPR 2023): structure lives in the decoder's features at the coarse resolutions, so the residual of the
coarsest decoder level with attention and the self-attention queries and keys from there on are injected;
TokenFlow (Geyer et al., ICLR 2024) extends and propagates the self-attention of every transformer block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from vedit.errors import ModelError
from vedit.model.families import ModelFamily, tokenize
from vedit.plugins.hookspecs import hookimpl

# The decoder of SD 1.x/2.x at 512×512 (64×64 latents): up_blocks.0 at 8×8 has no attention,
# up_blocks.1/2/3 at 16/32/64 have three transformer blocks each. PnP injects the residual of the 16×16
# level's second resnet and the self-attention Q/K of decoder blocks 4–11 (all but the first at 16×16).
SD_CONV_LAYERS = ("up_blocks.1.resnets.1",)
SD_QK_LAYERS = (
    "up_blocks.1.attentions.1",
    "up_blocks.1.attentions.2",
    "up_blocks.2.attentions.0",
    "up_blocks.2.attentions.1",
    "up_blocks.2.attentions.2",
    "up_blocks.3.attentions.0",
    "up_blocks.3.attentions.1",
    "up_blocks.3.attentions.2",
)


def _is_sd_layout(config: Mapping[str, Any]) -> bool:
    """Stable Diffusion 1.x/2.x's block layout: three cross-attention levels over four, no added embedding."""
    return (
        list(config.get("down_block_types", ())) == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
        and list(config.get("up_block_types", ())) == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
        and config.get("addition_embed_type") is None
    )


class _StableDiffusion(ModelFamily):
    """SD 1.x and 2.x: one layout and one injection choice; they differ in how attention projects, which tells
    them apart (``linear_projection``)."""

    conv_layers = SD_CONV_LAYERS
    qk_layers = SD_QK_LAYERS
    linear_projection = False

    def matches(self, unet_config: Mapping[str, Any]) -> bool:
        return _is_sd_layout(unet_config) and bool(unet_config.get("use_linear_projection")) == self.linear_projection

    def controlnet_matches(self, controlnet_config: Mapping[str, Any]) -> bool:
        # A ControlNet is the UNet's encoder: the down blocks tell the layout, the projections 1.x from 2.x.
        return (
            list(controlnet_config.get("down_block_types", ())) == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
            and controlnet_config.get("addition_embed_type") is None
            and bool(controlnet_config.get("use_linear_projection")) == self.linear_projection
        )


class SD1(_StableDiffusion):
    """Stable Diffusion 1.x: CLIP ViT-L/14's text tower, attention projections as 1×1 convolutions."""

    name = "sd1"
    description = "Stable Diffusion 1.x (and finetunes): one CLIP ViT-L text encoder, 512×512"


class SD2(_StableDiffusion):
    """Stable Diffusion 2.x, ε- or v-prediction: OpenCLIP ViT-H/14's text tower, linear attention projections."""

    name = "sd2"
    description = "Stable Diffusion 2.x (base 512 ε and 768 v-prediction, and finetunes): one OpenCLIP ViT-H encoder"
    linear_projection = True


# SDXL's decoder at 1024×1024 (128×128 latents): up_blocks.0 at 32×32 with three attentions of ten transformer
# blocks each, up_blocks.1 at 64×64 with three of two, up_blocks.2 at 128×128 without attention. Relative to the
# image, SDXL's 32×32 level is SD's 16×16 one (1/32 of the side) and its 64×64 level SD's 32×32 one; SDXL has
# no level at 1/8 with attention. PnP's choice carries over by that correspondence: the residual of the
# coarsest decoder level's second resnet, and the self-attention Q/K of that level's second and third
# attentions and of every attention of the next level.
SDXL_CONV_LAYERS = ("up_blocks.0.resnets.1",)
SDXL_QK_LAYERS = (
    "up_blocks.0.attentions.1",
    "up_blocks.0.attentions.2",
    "up_blocks.1.attentions.0",
    "up_blocks.1.attentions.1",
    "up_blocks.1.attentions.2",
)
TIME_IDS = 6  # SDXL's added time ids: original (h, w), crop (top, left), target (h, w)


class SDXL(ModelFamily):
    """SDXL base: two text encoders (CLIP ViT-L and OpenCLIP ViT-bigG), the second's pooled embedding and the
    added time ids as an extra conditioning."""

    name = "sdxl"
    description = "SDXL base 1.0 (and finetunes): two text encoders, pooled embedding and size ids, 1024×1024"
    conv_layers = SDXL_CONV_LAYERS
    qk_layers = SDXL_QK_LAYERS
    default_size = 1024

    def matches(self, unet_config: Mapping[str, Any]) -> bool:
        return unet_config.get("addition_embed_type") == "text_time"

    def controlnet_matches(self, controlnet_config: Mapping[str, Any]) -> bool:
        return controlnet_config.get("addition_embed_type") == "text_time"

    @staticmethod
    def pooled_dim(unet_config: Mapping[str, Any]) -> int:
        """The width of the pooled text embedding the UNet's added embedding takes beside the time ids."""
        total = int(unet_config["projection_class_embeddings_input_dim"])
        return total - TIME_IDS * int(unet_config["addition_time_embed_dim"])

    def text_shape(self, model: Any) -> tuple[int, int]:
        return int(model.tokenizer.model_max_length) + 1, int(model.unet.config.cross_attention_dim)

    def encode_prompt(self, model: Any, prompts: Sequence[str], size: tuple[int, int] | None = None) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        hidden, pooled = [], None
        for tokenizer, encoder in ((model.tokenizer, model.text_encoder), (model.tokenizer_2, model.text_encoder_2)):
            ids = tokenize(tokenizer, prompts).to(encoder.device)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # the penultimate layer, as SDXL was trained
            pooled = out[0]  # the second encoder's projected pooled embedding (n, pooled)
        embeds = torch.cat(hidden, dim=-1).to(model.device, model.dtype)  # (n, 77, 2048)
        pooled = pooled.to(model.device, model.dtype)
        # SDXL base conditions the unconditional branch on zeros, not on the empty prompt's embedding.
        if model.force_zeros_for_empty_prompt:
            empty = torch.tensor([not p for p in prompts], device=model.device).reshape(-1, 1)
            embeds = torch.where(empty.unsqueeze(-1), torch.zeros_like(embeds), embeds)
            pooled = torch.where(empty, torch.zeros_like(pooled), pooled)
        height, width = size if size is not None else (self.default_size, self.default_size)
        time_ids = torch.tensor([height, width, 0, 0, height, width], device=model.device, dtype=model.dtype)
        extra = torch.zeros(embeds.shape[0], 1, embeds.shape[-1], device=model.device, dtype=model.dtype)
        extra[:, 0, : pooled.shape[-1]] = pooled
        extra[:, 0, pooled.shape[-1] : pooled.shape[-1] + TIME_IDS] = time_ids
        return torch.cat([embeds, extra], dim=1)  # (n, 78, 2048)

    def unet_inputs(self, text: torch.Tensor, unet_config: Mapping[str, Any]) -> dict[str, Any]:
        pooled = self.pooled_dim(unet_config)
        extra = text[:, -1]
        added = {"text_embeds": extra[:, :pooled], "time_ids": extra[:, pooled : pooled + TIME_IDS]}
        return {"encoder_hidden_states": text[:, :-1], "added_cond_kwargs": added}

    def check(self, model: Any) -> None:
        if getattr(model, "text_encoder_2", None) is None or getattr(model, "tokenizer_2", None) is None:
            raise ModelError(f"model '{model.model_id}' is an SDXL UNet without SDXL's second text encoder")
        config = model.unet.config
        widths = model.text_encoder.config.hidden_size + model.text_encoder_2.config.hidden_size
        if widths != config.cross_attention_dim:
            raise ModelError(
                f"model '{model.model_id}' is inconsistent: its UNet expects {config.cross_attention_dim}-dim text "
                f"embeddings, its two text encoders make {widths}-dim ones together"
            )
        if self.pooled_dim(config) + TIME_IDS > config.cross_attention_dim:
            raise ModelError(
                f"model '{model.model_id}': a pooled embedding of {self.pooled_dim(config)} does not fit beside "
                f"the time ids in one {config.cross_attention_dim}-wide conditioning row"
            )


@hookimpl
def register_model_families(register):
    register(SDXL())
    register(SD2())
    register(SD1())
