"""Models written as single-file checkpoints in the original (LDM / SGM) layout, as Stable Diffusion's
own training code saves them, so the tests can load them back through vedit's single-file loader.

The key mapping is written here from the original layout's module names (the LDM ``openaimodel``
UNet, the ``autoencoder`` VAE, Hugging Face CLIP under ``cond_stage_model.transformer`` and OpenCLIP
under ``cond_stage_model.model``); the tests check that loading a file undoes it weight for weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPEN_CLIP_NAMES = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def _rename(rest: str, names: dict[str, str]) -> str:
    for new, old in names.items():
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    return rest


def unet_to_original(unet: Any) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel``'s weights under ``model.diffusion_model.`` in LDM's names."""
    per_block = unet.config.layers_per_block + 1  # LDM numbers every layer of the encoder and decoder in one list
    top = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    original = {}
    for key, value in unet.state_dict().items():
        parts = key.split(".")
        module, leaf = ".".join(parts[:-1]), parts[-1]
        if module in top:
            name = f"{top[module]}.{leaf}"
        elif parts[0] == "down_blocks":
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "downsamplers":
                name = f"input_blocks.{(block + 1) * per_block}.0.op.{rest.removeprefix('conv.')}"
            elif kind == "resnets":
                name = f"input_blocks.{1 + block * per_block + index}.0.{_rename(rest, RESNET_NAMES)}"
            else:
                name = f"input_blocks.{1 + block * per_block + index}.1.{rest}"
        elif parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            if kind == "resnets":
                name = f"middle_block.{2 * index}.{_rename(rest, RESNET_NAMES)}"
            else:
                name = f"middle_block.1.{rest}"
        elif parts[0] == "up_blocks":
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "upsamplers":
                has_attention = (
                    len(unet.up_blocks[block].attentions) > 0 if hasattr(unet.up_blocks[block], "attentions") else False
                )
                name = f"output_blocks.{block * per_block + per_block - 1}.{2 if has_attention else 1}.{rest}"
            elif kind == "resnets":
                name = f"output_blocks.{block * per_block + index}.0.{_rename(rest, RESNET_NAMES)}"
            else:
                name = f"output_blocks.{block * per_block + index}.1.{rest}"
        else:
            raise AssertionError(f"no original name for UNet weight {key}")
        original["model.diffusion_model." + name] = value
    return original


def vae_to_original(vae: Any) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL``'s weights under ``first_stage_model.`` in LDM's names."""
    levels = len(vae.config.block_out_channels)
    original = {}
    for key, value in vae.state_dict().items():
        parts = key.split(".")
        coder = parts[0]
        if coder in ("quant_conv", "post_quant_conv"):
            name = key
        elif parts[1] in ("conv_in", "conv_out"):
            name = key
        elif parts[1] == "conv_norm_out":
            name = f"{coder}.norm_out.{parts[2]}"
        elif parts[1] == "mid_block":
            kind, index, rest = parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                name = f"{coder}.mid.block_{index + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
            else:
                name = f"{coder}.mid.attn_1.{_rename(rest, VAE_ATTENTION_NAMES)}"
                if value.ndim == 2:  # LDM's attention projections are 1×1 convolutions
                    value = value[:, :, None, None]
        elif parts[1] == "down_blocks":
            block, kind, rest = int(parts[2]), parts[3], ".".join(parts[4:])
            if kind == "downsamplers":
                name = f"encoder.down.{block}.downsample.{rest.removeprefix('0.')}"
            else:
                name = f"encoder.down.{block}.block.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        elif parts[1] == "up_blocks":
            block, kind, rest = levels - 1 - int(parts[2]), parts[3], ".".join(parts[4:])  # LDM counts up from the top
            if kind == "upsamplers":
                name = f"decoder.up.{block}.upsample.{rest.removeprefix('0.')}"
            else:
                name = f"decoder.up.{block}.block.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        else:
            raise AssertionError(f"no original name for VAE weight {key}")
        original["first_stage_model." + name] = value
    return original


def _text_weights(encoder: Any) -> dict[str, torch.Tensor]:
    """The encoder's weights named as ``CLIPTextModel``'s inner ``text_model`` names them."""
    return {key.removeprefix("text_model."): value for key, value in encoder.state_dict().items()}


def clip_to_original(encoder: Any, prefix: str = "cond_stage_model.transformer.") -> dict[str, torch.Tensor]:
    """A Hugging Face CLIP text encoder as SD 1.x (and SDXL's first embedder) store it."""
    return {f"{prefix}text_model.{key}": value for key, value in _text_weights(encoder).items()}


def open_clip_to_original(encoder: Any, prefix: str = "cond_stage_model.model.") -> dict[str, torch.Tensor]:
    """A CLIP text encoder as OpenCLIP stores it (SD 2.x, SDXL's second embedder): one packed q/k/v
    projection per layer and the text projection as a (width, dim) matrix."""
    weights = _text_weights(encoder)
    original = {
        "token_embedding.weight": weights.pop("embeddings.token_embedding.weight"),
        "positional_embedding": weights.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": weights.pop("final_layer_norm.weight"),
        "ln_final.bias": weights.pop("final_layer_norm.bias"),
    }
    projection = weights.pop("text_projection.weight", None)
    hidden = encoder.config.hidden_size
    generator = torch.Generator().manual_seed(5)
    # SD 2.x keeps OpenCLIP's projection though its UNet never sees it
    original["text_projection"] = (
        projection.T.contiguous()
        if projection is not None
        else torch.randn(hidden, encoder.config.projection_dim, generator=generator)
    )
    weights.pop("embeddings.position_ids", None)
    for layer in range(encoder.config.num_hidden_layers):
        here = f"encoder.layers.{layer}."
        for kind in ("weight", "bias"):
            packed = [weights.pop(f"{here}self_attn.{name}_proj.{kind}") for name in ("q", "k", "v")]
            original[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(packed)
        for key in [key for key in weights if key.startswith(here)]:
            original[f"transformer.resblocks.{layer}.{_rename(key[len(here) :], OPEN_CLIP_NAMES)}"] = weights.pop(key)
    assert not weights, f"no OpenCLIP name for {sorted(weights)}"
    return {prefix + key: value for key, value in original.items()}


def to_original(model: Any, text_layout: str = "clip") -> dict[str, torch.Tensor]:
    """A whole model in the original layout: ``clip`` (SD 1.x), ``open_clip`` (SD 2.x) or ``sdxl``."""
    weights = {**unet_to_original(model.unet), **vae_to_original(model.vae)}
    if text_layout == "clip":
        weights.update(clip_to_original(model.text_encoder))
    elif text_layout == "open_clip":
        weights.update(open_clip_to_original(model.text_encoder))
    else:
        weights.update(clip_to_original(model.text_encoder, "conditioner.embedders.0.transformer."))
        weights.update(open_clip_to_original(model.text_encoder_2, "conditioner.embedders.1.model."))
    return {key: value.detach().cpu().contiguous() for key, value in weights.items()}


def write_checkpoint(model: Any, path: Path, text_layout: str = "clip", **extra: Any) -> Path:
    """``model`` written to ``path`` in the original layout: safetensors, or ``torch.save`` of
    ``{"state_dict": ..., **extra}`` for any other suffix."""
    weights = to_original(model, text_layout)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(weights, path)
    else:
        torch.save({"state_dict": weights, **extra}, path)
    return path


def module_weights(model: Any, parts: tuple[str, ...] = ("unet", "vae", "text_encoder")) -> dict[str, torch.Tensor]:
    """Every weight of the named parts, keyed ``part.name``."""
    return {
        f"{part}.{key}": value
        for part in parts
        for key, value in getattr(model, part).state_dict().items()
        if not key.endswith("position_ids")
    }
