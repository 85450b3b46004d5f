"""A diffusers pipeline the caller has already loaded, as the model vedit runs: ``vedit.edit(..., pipeline=pipe)``.

Whatever diffusers can load into a ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` (LoRAs fused or
not, textual inversions, another scheduler, a finetune from anywhere) vedit edits with. Its parts are used as
they are, not copied; sampling uses a DDIM scheduler made from the pipeline's scheduler config (so its
prediction type, spacing and schedule carry over). Since nothing names where the weights came from, the
fingerprint that keys the inversion cache, checkpoints and engines is a hash of the weights themselves.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from ..errors import ConfigError
from .device import place_for_inference, resolve_device, resolve_dtype, use_fast_float32, vae_dtype_for
from .stable_diffusion import StableDiffusion

_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def from_pipeline(
    pipeline: Any, *, device: str | torch.device = "auto", dtype: str | torch.dtype | None = "auto"
) -> StableDiffusion:
    """The model of an already loaded diffusers pipeline. ``device``/``dtype`` "auto" keep the UNet's own;
    others move the parts there (in place: the pipeline's modules are the model's)."""
    from diffusers import DDIMScheduler

    missing = [name for name in _PARTS if getattr(pipeline, name, None) is None]
    if missing:
        raise ConfigError(
            f"pipeline= takes a diffusers StableDiffusionPipeline or StableDiffusionXLPipeline; "
            f"this {type(pipeline).__name__} has no {', '.join(missing)}"
        )
    unet = pipeline.unet
    here = next(unet.parameters())
    device = here.device if str(device) == "auto" else resolve_device(device)
    dtype = here.dtype if dtype in (None, "auto") else resolve_dtype(dtype, device)
    use_fast_float32(device)
    second = getattr(pipeline, "text_encoder_2", None)
    if getattr(pipeline, "text_encoder", None) is None and second is not None:
        raise ConfigError("pipeline= needs both text encoders of an SDXL pipeline (a refiner has only the second)")
    parts: dict[str, Any] = {
        "unet": place_for_inference(unet, device, dtype),
        "vae": place_for_inference(pipeline.vae, device, vae_dtype_for(dtype, pipeline.vae.config.force_upcast)),
        "text_encoder": place_for_inference(pipeline.text_encoder, device, dtype),
        "tokenizer": pipeline.tokenizer,
        "scheduler": DDIMScheduler.from_config(pipeline.scheduler.config),
    }
    if second is not None:
        parts["text_encoder_2"] = place_for_inference(second, device, dtype)
        parts["tokenizer_2"] = pipeline.tokenizer_2
    name = getattr(pipeline.config, "_name_or_path", "") or type(pipeline).__name__
    zeros = bool(getattr(pipeline.config, "force_zeros_for_empty_prompt", True))
    model = StableDiffusion(
        **parts, model_id=f"pipeline:{name}", revision=None, fingerprint="", device=device, dtype=dtype,
        force_zeros_for_empty_prompt=zeros,
    )  # fmt: skip
    model.fingerprint = weights_fingerprint(model)
    from .loading import check_compatible

    check_compatible(model)
    return model


def weights_fingerprint(model: StableDiffusion) -> str:
    """sha256 over every part's config, the tokenizers' vocabularies (added tokens included) and every weight's
    name, dtype, shape and bytes: the same weights give the same key wherever they were loaded from."""
    digest = hashlib.sha256()
    for name in model.components:
        part = getattr(model, name)
        digest.update(f"{name}\0{type(part).__name__}\n".encode())
        if name.startswith("tokenizer"):
            vocabulary = sorted(part.get_vocab().items())
            digest.update(repr((vocabulary, part.model_max_length)).encode())
            continue
        digest_part(digest, part)
    return f"weights:sha256:{digest.hexdigest()}"


def digest_part(digest: Any, part: Any, *, as_json: bool = False) -> None:
    """Feed ``digest`` (a hashlib object) a model part's config (not where it was read from, nor the library
    version that wrote it) and, for a module, every weight's name, dtype, shape and bytes. ``as_json``: the
    config as JSON writes it (a tuple as a list), so that a config made in code and one read back from its
    file agree."""
    config = getattr(part, "config", None)
    settings = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
    kept = {k: v for k, v in settings.items() if not k.startswith("_") and k != "transformers_version"}
    text = json.dumps(kept, sort_keys=True, default=str) if as_json else repr(sorted(kept.items()))
    digest.update(text.encode())
    if isinstance(part, torch.nn.Module):
        for key, tensor in part.state_dict().items():
            digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\n".encode())
            data = tensor.detach().reshape(-1).contiguous().cpu()
            digest.update(data.view(torch.uint8).numpy().tobytes())
