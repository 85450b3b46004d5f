"""LoRAs and embeddings for the tiny model, written by the tests: a kohya-layout LoRA (its keys written here), a
diffusers-layout one (peft's LoraConfig on the UNet's attention projections) and textual-inversion embeddings."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import save_file

from vedit.model.stable_diffusion import StableDiffusion

UNET_LAYERS = ("attn1.to_q", "attn1.to_v", "attn2.to_k")  # the UNet layers the kohya LoRA adapts
TEXT_LAYERS = ("q_proj", "k_proj", "v_proj", "out_proj")  # the text encoder's (every attention projection)


def kohya_lora(
    model: StableDiffusion, path: Path, *, seed: int = 0, rank: int = 2, alpha: float = 1.0, text: bool = True
) -> dict[str, torch.Tensor]:
    """A LoRA in kohya's layout (``lora_unet_<module path with _>.lora_down.weight``, ``.lora_up.weight``,
    ``.alpha``; ``lora_te_text_model_…`` for the text encoder, as kohya names CLIP's layers), written to
    ``path``; returns its tensors."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    adapted = [("lora_unet_", model.unet, UNET_LAYERS)] + ([("lora_te_text_model_", model.text_encoder, TEXT_LAYERS)]
                                                           if text else [])  # fmt: skip
    for prefix, module, layers in adapted:
        for name, layer in module.named_modules():
            if name.endswith(layers):
                key = prefix + name.replace(".", "_")
                tensors[f"{key}.lora_down.weight"] = torch.randn(rank, layer.in_features, generator=generator) * 0.1
                tensors[f"{key}.lora_up.weight"] = torch.randn(layer.out_features, rank, generator=generator) * 0.1
                tensors[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path))
    return tensors


def kohya_delta(tensors: dict[str, torch.Tensor], layer: str, prefix: str = "lora_unet_") -> torch.Tensor:
    """What a kohya LoRA adds to ``layer``'s weight at scale 1, from its file's tensors alone: (alpha/r)·B·A."""
    key = prefix + layer.replace(".", "_")
    down, up = tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"]
    return float(tensors[f"{key}.alpha"]) / down.shape[0] * (up @ down)


def diffusers_lora(model: StableDiffusion, path: Path, *, seed: int = 0, rank: int = 4) -> dict[str, torch.Tensor]:
    """A LoRA in diffusers' layout: peft's LoraConfig on the UNet's attention projections (alpha = rank, as
    diffusers' trainers save them), B drawn non-zero so that it changes the output, keys ``unet.<peft key>``."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    unet = inject_adapter_in_model(
        LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]),
        copy.deepcopy(model.unet),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    tensors = {f"unet.{key}": value.contiguous() for key, value in get_peft_model_state_dict(unet).items()}
    save_file(tensors, str(path))
    return tensors


def embedding_vectors(model: StableDiffusion, count: int = 1, seed: int = 0) -> torch.Tensor:
    width = model.text_encoder.get_input_embeddings().weight.shape[1]
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed))  # (count, width)


def a1111_embedding(path: Path, vectors: torch.Tensor, name: str = "<cat-toy>") -> Path:
    """An embedding as A1111 saves it (.pt): ``string_to_param`` and its name."""
    torch.save({"string_to_param": {"*": vectors}, "name": name, "step": 500}, path)
    return path


def tiny_sdxl(base: StableDiffusion) -> StableDiffusion:
    """An SDXL-shaped model: a UNet with SDXL's added conditioning (``text_time``), one 32-wide ``CLIPTextModel``
    and one 48-wide ``CLIPTextModelWithProjection`` with a tokenizer each (``text_encoder_2``, ``tokenizer_2``); the
    rest of ``base``. Two levels, one ResNet each, the second with two transformer blocks."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from vedit.model.builders import build_tokenizer, text_encoder_config

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=4, attention_head_dim=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), use_linear_projection=True, cross_attention_dim=32 + 48,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=48 + 6 * 8,
    )  # fmt: skip
    config = text_encoder_config("tiny")
    model = StableDiffusion(
        unet=unet.eval(), vae=base.vae, text_encoder=CLIPTextModel(CLIPTextConfig(**config)).eval(),
        tokenizer=build_tokenizer(), scheduler=base.scheduler, model_id="tiny-sdxl", revision=None,
        fingerprint="tiny-sdxl", device=torch.device("cpu"), dtype=torch.float32,
    )  # fmt: skip
    wider = CLIPTextConfig(**{**config, "hidden_size": 48, "projection_dim": 48})
    model.text_encoder_2 = CLIPTextModelWithProjection(wider).eval()  # type: ignore[attr-defined]
    model.tokenizer_2 = build_tokenizer()  # type: ignore[attr-defined]
    return model
