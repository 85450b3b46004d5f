"""ControlNets: loaded from a folder, the hub or made with random weights, checked against the model, fingerprinted.

A ControlNet is the UNet's encoder with zero-initialised 1×1 convolutions that turn its features into residuals
for the UNet's skip connections and middle block. One fits a model when it is of the model's family's ControlNet
architecture (:meth:`vedit.ModelFamily.controlnet_matches`) and its blocks have the UNet's widths.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError
from ..options import option_value

RANDOM = re.compile(r"^random(?:@(\d+))?$")
# What a ControlNet's residuals must agree with the UNet on, key by key.
SHAPE_KEYS = (
    "in_channels", "block_out_channels", "layers_per_block", "down_block_types", "cross_attention_dim",
    "transformer_layers_per_block", "projection_class_embeddings_input_dim", "addition_time_embed_dim",
)  # fmt: skip
RANDOM_STD = 0.02  # the zero convolutions of a random ControlNet: residuals of a few tenths on SD's features


@dataclass
class LoadedControlNet:
    """One ControlNet on the model's device and dtype, with what identifies its weights."""

    module: Any  # diffusers ControlNetModel
    source: str  # as given: a folder, a hub id, random@N
    fingerprint: str  # sha256 over its config and weights


def load_controlnet(spec: str, model: Any, *, warn: Any = None) -> LoadedControlNet:
    """The ControlNet ``spec`` names, for ``model`` (a :class:`~vedit.model.stable_diffusion.StableDiffusion`):
    ``random`` / ``random@N`` (made from the model's UNet, its residual convolutions drawn from seed N), a local
    diffusers folder, or a hub id (from the local cache when the hub cannot be reached). One that does not fit
    the model is a one-line :class:`ModelError`."""
    found = RANDOM.match(spec)
    if found:
        module = random_controlnet(model.unet, seed=int(found.group(1) or 0), vae_scale=model.vae_scale_factor)
    else:
        module = _pretrained(spec, model)
    check_fits(module.config, model, spec)
    module = _placed(module, model.device, model.dtype).eval().requires_grad_(False)
    digest = hashlib.sha256()
    from ..model.pipelines import digest_part

    digest_part(digest, module, as_json=True)
    return LoadedControlNet(module, spec, f"sha256:{digest.hexdigest()}")


def controlnet_identity(spec: str) -> tuple[str, ...]:
    """What tells whether a loaded ControlNet is still the one ``spec`` names: ``random@N`` itself, a folder by its
    files' names, sizes and times of change, a hub id by itself (its cached snapshot does not change)."""
    path = Path(spec).expanduser()
    if not RANDOM.match(spec) and path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return (
            str(path.resolve()),
            *(f"{p.relative_to(path)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files),
        )
    return (spec,)


def random_controlnet(unet: Any, *, seed: int = 0, vae_scale: int = 8) -> Any:
    """A ControlNet made from ``unet`` (its encoder's weights copied, as ControlNet training starts), whose
    zero-initialised convolutions get random weights drawn from ``seed``, so that it acts: for tests and
    benchmarks. The conditioning embedding downsamples by ``vae_scale``, so it takes frames at the pixel size."""
    from diffusers import ControlNetModel

    widths = [16, 32, 96, 256] if unet.config.block_out_channels[0] >= 64 else [8, 16, 16, 32]
    downsamples = max(0, int(vae_scale).bit_length() - 1)
    widths = (
        widths[: downsamples + 1]
        if downsamples + 1 <= len(widths)
        else widths + [widths[-1]] * (downsamples + 1 - len(widths))
    )
    with torch.random.fork_rng(devices=[]):  # the conditioning embedding's own initialisation, from the seed too
        torch.manual_seed(seed)
        module = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(widths))
    generator = torch.Generator().manual_seed(seed)
    zero_convs = [
        *module.controlnet_down_blocks,
        module.controlnet_mid_block,
        module.controlnet_cond_embedding.conv_out,
    ]
    with torch.no_grad():
        for conv in zero_convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * RANDOM_STD)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * RANDOM_STD)
    return _placed(module, unet.device, unet.dtype)


def _placed(module: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """``module`` on ``device`` in ``dtype``, cast only when it is not already (diffusers warns at every cast)."""
    module = module.to(device)
    return module if module.dtype == dtype else module.to(dtype)


def _pretrained(spec: str, model: Any) -> Any:
    from diffusers import ControlNetModel

    from ..model.loading import hub_unreachable, is_hub_id, is_load_error, route_library_logs

    route_library_logs()
    path = Path(spec).expanduser()
    if path.is_file():
        raise ModelError(
            f"ControlNet '{spec}' is a single file: pass the diffusers folder of the ControlNet "
            "(config.json and diffusion_pytorch_model.safetensors) or its hub id"
        )
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"ControlNet folder '{spec}' has no config.json: it is not a diffusers ControlNet")
        source, local = str(path.resolve()), True
    elif spec.startswith((".", "/", "~")) or not is_hub_id(spec):
        raise ModelError(
            f"ControlNet '{spec}' is neither an existing diffusers folder nor a hub id; "
            f"{option_value('controlnet', 'random')} makes one with random weights"
        )
    else:
        source, local = spec, hub_unreachable()
    try:
        module = ControlNetModel.from_pretrained(source, torch_dtype=model.dtype, local_files_only=local)
    except Exception as error:
        if not is_load_error(error):
            raise
        where = "this folder" if path.is_dir() else "the local Hugging Face cache or the hub"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"ControlNet '{spec}' cannot be loaded from {where}: {first}") from None
    if type(module).__name__ != "ControlNetModel":
        raise ModelError(f"'{spec}' is a {type(module).__name__}, not a ControlNet")
    return module


def check_fits(config: Any, model: Any, spec: str) -> None:
    """ModelError unless a ControlNet with ``config`` fits ``model``: of its family's ControlNet architecture,
    with the UNet's block widths."""
    family = model.family
    if not family.controlnet_matches(config):
        from .. import plugins

        claimed = [name for name, item in plugins.registered("model_family").items()
                   if item.item.controlnet_matches(config)]  # fmt: skip
        made_for = f"made for {' or '.join(claimed)} models" if claimed else "of no registered family"
        raise ModelError(
            f"ControlNet '{spec}' does not fit model '{model.model_id}': it is {made_for}, the model is {family.name}"
        )
    unet = model.unet.config
    for key in SHAPE_KEYS:
        theirs, ours = _normal(config.get(key)), _normal(unet.get(key))
        if theirs is not None and ours is not None and theirs != ours:
            raise ModelError(
                f"ControlNet '{spec}' does not fit model '{model.model_id}': its {key} is {theirs}, the UNet's {ours}"
            )


def _normal(value: Any) -> Any:
    """A config value compared as a list where it is a sequence (configs write tuples and lists)."""
    return list(value) if isinstance(value, (list, tuple)) else value


__all__ = ["LoadedControlNet", "check_fits", "controlnet_identity", "load_controlnet", "random_controlnet"]
