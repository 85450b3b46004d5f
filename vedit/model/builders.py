"""Stable Diffusions built in code, offline, from a spec that names the architecture and the seed
its weights are drawn from:

- ``tiny``: a tiny randomly initialised SD with SD's exact block structure and a byte-level
  CLIP tokenizer written locally; it builds offline in a fraction of a second, for tests.
- ``random:sd15`` / ``random:sd21``: the real SD 1.5 / SD 2.1-base architectures with random
  weights; they cost exactly what the real models cost, for speed and memory figures.
  These three take ``@N`` for weights drawn from seed N (``tiny@3``, ``random:sd15@7``); without
  it the seed is 0. The weights' seed is part of the spec, so an edit's own seed never changes
  the model.

Each gets SD's training schedule (:data:`SD_SCHEDULER_CONFIG`) and the local tokenizer
(:func:`build_tokenizer`). The real architectures are the diffusers configs vedit ships for
single-file checkpoints (``configs/<family>/``, read by :func:`shipped_config`): one source for both.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..config import MAX_SEED
from ..errors import ConfigError
from .device import place_for_inference, vae_dtype_for
from .stable_diffusion import StableDiffusion

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

BUILT_IN_SPECS = ("tiny", "random:sd15", "random:sd21")
PROMPT_LENGTH = 77  # CLIP's context: SD pads every prompt to 77 tokens
_BYTE_VOCAB_SIZE = 512  # the local tokenizer: every byte, alone and as a word's end ("</w>")

SPEC_HELP = (
    "use tiny, random:sd15 or random:sd21 (with @N for weights drawn from seed N, e.g. tiny@3), "
    "a Hugging Face hub id or a local diffusers folder"
)


CONFIGS = Path(__file__).parent / "configs"  # the published architectures' diffusers configs, shipped as JSON
ARCHITECTURE_CONFIGS = {"sd15": "sd15", "sd21": "sd21-base"}  # a built spec's architecture → its config folder
_CONFIG_METADATA = ("architectures", "model_type")  # keys of a config file that are no constructor argument


def shipped_config(family: str, component: str) -> dict[str, Any]:
    """The constructor arguments in the shipped config of ``component`` (``unet``, ``vae``,
    ``text_encoder``...) of ``family`` (``sd15``, ``sd21-base``, ``sd21-v``, ``sdxl-base``)."""
    folder = CONFIGS / family / component
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    config = json.loads((folder / name).read_text(encoding="utf-8"))
    return {key: value for key, value in config.items() if not key.startswith("_") and key not in _CONFIG_METADATA}


# SD 1.x / 2.x-base training schedule, as their scheduler_config.json files give it.
SD_SCHEDULER_CONFIG: dict[str, Any] = shipped_config("sd15", "scheduler")


def unet_config(spec: str) -> dict[str, Any]:
    """``UNet2DConditionModel`` arguments of a built-in spec (tiny, random:sd15, random:sd21)."""
    architecture = _architecture(spec)
    if architecture in ARCHITECTURE_CONFIGS:
        return shipped_config(ARCHITECTURE_CONFIGS[architecture], "unet")
    return {
        **shipped_config("sd15", "unet"),
        "sample_size": 8,
        "block_out_channels": [16, 16, 32, 32],
        "norm_num_groups": 4,
        "cross_attention_dim": 32,
        "attention_head_dim": 2,
        "use_linear_projection": False,
    }


def vae_config(spec: str) -> dict[str, Any]:
    """``AutoencoderKL`` arguments of a built-in spec: SD's VAE (the same for 1.5 and 2.1)."""
    sd = shipped_config("sd15", "vae")
    if _architecture(spec) == "tiny":
        return {
            **sd,
            "block_out_channels": [8, 8, 16, 16],
            "layers_per_block": 1,
            "norm_num_groups": 4,
            "sample_size": 64,
        }
    return sd


def text_encoder_config(spec: str) -> dict[str, Any]:
    """``CLIPTextConfig`` arguments of a built-in spec, with the local tokenizer's token ids."""
    special = {
        "bos_token_id": _BYTE_VOCAB_SIZE,
        "eos_token_id": _BYTE_VOCAB_SIZE + 1,
        "pad_token_id": _BYTE_VOCAB_SIZE + 1,
    }
    architecture = _architecture(spec)
    if architecture in ARCHITECTURE_CONFIGS:  # CLIP ViT-L/14's text tower; OpenCLIP ViT-H/14's without its last layer
        return {**shipped_config(ARCHITECTURE_CONFIGS[architecture], "text_encoder"), **special}
    return {
        "vocab_size": _BYTE_VOCAB_SIZE + 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "projection_dim": 32,
        "max_position_embeddings": PROMPT_LENGTH,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        **special,
    }


@dataclass(frozen=True)
class BuiltSpec:
    """A model built in code: its architecture (one of :data:`BUILT_IN_SPECS`) and the seed its
    weights are drawn from."""

    architecture: str
    seed: int = 0

    @property
    def name(self) -> str:
        """The spec as vedit writes it: ``tiny`` for seed 0, ``tiny@3`` otherwise."""
        return self.architecture if self.seed == 0 else f"{self.architecture}@{self.seed}"

    @property
    def fingerprint(self) -> str:
        """``tiny:seed3``: the same for ``tiny@3`` as it was for ``tiny`` built from seed 3, so
        inversions cached then stay valid."""
        return f"{self.architecture}:seed{self.seed}"


def is_built_in(spec: str) -> bool:
    """Whether ``spec`` is meant as a model built in code (``tiny``, ``tiny@N``, ``random:...``),
    well formed or not, rather than a hub id or a folder."""
    head = str(spec).strip().partition("@")[0]
    return head == "tiny" or head.startswith("random:")


def built_spec(spec: str) -> BuiltSpec | None:
    """The model built in code that ``spec`` names (``tiny``, ``tiny@3``, ``random:sd15@7``; without
    ``@N`` the weights' seed is 0), or None for a hub id or a folder; ConfigError for a malformed one."""
    spec = str(spec).strip()
    if not is_built_in(spec):
        return None
    architecture, at, seed = spec.partition("@")
    if architecture not in BUILT_IN_SPECS:
        raise ConfigError(f"unknown model '{spec}': {SPEC_HELP}")
    if not at:
        return BuiltSpec(architecture)
    if not re.fullmatch(r"[0-9]+", seed) or int(seed) > MAX_SEED:
        raise ConfigError(
            f"model '{spec}': the weights' seed after '@' must be a whole number from 0 to "
            f"{MAX_SEED}, as in '{architecture}@3'"
        )
    return BuiltSpec(architecture, int(seed))


def _architecture(spec: str) -> str:
    """``tiny``, ``sd15`` or ``sd21``: the architecture a built spec has, whatever its seed."""
    built = built_spec(spec)
    if built is None:
        raise ConfigError(f"unknown model '{spec}': {SPEC_HELP}")
    return built.architecture.removeprefix("random:")


def byte_symbols() -> list[str]:
    """GPT-2/CLIP's byte-to-unicode table: printable bytes stand for themselves, the rest are
    shifted past 255 so that no symbol is whitespace or a control character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {byte: chr(byte) for byte in printable}
    shifted = 256
    for byte in range(256):
        if byte not in symbols:
            symbols[byte] = chr(shifted)
            shifted += 1
    return [symbols[byte] for byte in sorted(symbols, key=lambda b: (b not in printable, b))]


def build_tokenizer() -> CLIPTokenizer:
    """A real ``CLIPTokenizer`` over a byte-level vocabulary with no merges, made offline.

    Ids follow CLIP's layout: the 256 byte symbols, then the same with "</w>", then
    <|startoftext|> and <|endoftext|>. Every text encodes (one token per byte); prompts pad to 77.
    """
    from transformers import CLIPTokenizer

    symbols = byte_symbols()
    tokens = symbols + [symbol + "</w>" for symbol in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    with tempfile.TemporaryDirectory(prefix="vedit-tokenizer-") as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        Path(folder, "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=PROMPT_LENGTH, local_files_only=True)


@contextmanager
def _drawing(seed: int, device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """New modules get their weights on ``device`` in ``dtype`` from generators seeded with
    ``seed``; the generators and the default device and dtype are restored afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    default_dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=devices), device:
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(default_dtype)


def build_model(built: BuiltSpec, device: torch.device, dtype: torch.dtype) -> StableDiffusion:
    """The model ``built`` names, its weights drawn from its seed, on ``device`` in ``dtype``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    spec, seed = built.architecture, built.seed
    if spec == "tiny":
        # drawn on the CPU in fp32 and then cast: a seed gives the same model everywhere
        draw_on, draw_in, fingerprint = torch.device("cpu"), torch.float32, built.fingerprint
    else:
        # a billion random numbers: drawn where and as they will live (a GPU draws them in
        # well under a second; fp32-then-cast on the CPU takes several times longer). CUDA's
        # generator draws other numbers than the CPU's, so then the fingerprint says so.
        draw_on = device if device.type == "cuda" else torch.device("cpu")
        draw_in = dtype
        fingerprint = built.fingerprint + (":cuda" if draw_on.type == "cuda" else "")
    with _drawing(seed, draw_on, draw_in):
        unet = place_for_inference(UNet2DConditionModel(**unet_config(spec)), device, dtype)
        vae = AutoencoderKL(**vae_config(spec))
        vae = place_for_inference(vae, device, vae_dtype_for(dtype, vae.config.force_upcast))
        text_config = CLIPTextConfig(**text_encoder_config(spec))
        text_encoder = place_for_inference(CLIPTextModel(text_config), device, dtype)
    return StableDiffusion(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_tokenizer(),
        scheduler=DDIMScheduler(**SD_SCHEDULER_CONFIG),
        model_id=built.name,
        revision=None,
        fingerprint=fingerprint,
        device=device,
        dtype=dtype,
    )
