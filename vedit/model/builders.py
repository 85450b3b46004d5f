"""Stable Diffusions built in code, offline, from a spec that names the architecture and the seed
its weights are drawn from:

- ``tiny``: a tiny randomly initialised SD 1.x with SD's exact block structure and a byte-level
  CLIP tokenizer written locally; it builds offline in a fraction of a second, for tests.
  ``tiny-sd2`` and ``tiny-sd2-v`` are the same size with SD 2.x's linear attention projections (the
  second a v-prediction model, as SD 2.x 768 is); ``tiny-sdxl`` has SDXL's three levels, two text
  encoders and added conditioning.
- ``random:sd15`` / ``random:sd21`` / ``random:sd21-v`` / ``random:sdxl``: the real SD 1.5, SD 2.1-base,
  SD 2.1 (768, v-prediction) and SDXL base architectures with random weights; they cost exactly what
  the real models cost, for speed and memory figures.

Every spec takes ``@N`` for weights drawn from seed N (``tiny@3``, ``random:sd15@7``); without it the seed
is 0. The weights' seed is part of the spec, so an edit's own seed never changes the model. Each gets its
architecture's training schedule (v-prediction for the ``-v`` ones) and the local tokenizer
(:func:`build_tokenizer`). The real architectures, and the layouts the tiny ones shrink, are the diffusers
configs vedit ships for single-file checkpoints (``configs/<family>/``, read by :func:`shipped_config`): one
source for both.
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

BUILT_IN_SPECS = (
    "tiny",
    "tiny-sd2",
    "tiny-sd2-v",
    "tiny-sdxl",
    "random:sd15",
    "random:sd21",
    "random:sd21-v",
    "random:sdxl",
)
PROMPT_LENGTH = 77  # CLIP's context: SD pads every prompt to 77 tokens
_BYTE_VOCAB_SIZE = 512  # the local tokenizer: every byte, alone and as a word's end ("</w>")

SPEC_HELP = (
    f"use {', '.join(BUILT_IN_SPECS[:-1])} or {BUILT_IN_SPECS[-1]} (with @N for weights drawn from seed N, "
    "e.g. tiny@3), a Hugging Face hub id, a local diffusers folder or a single-file checkpoint"
)


CONFIGS = Path(__file__).parent / "configs"  # the published architectures' diffusers configs, shipped as JSON
# A built spec's architecture → the config folder of the architecture it is (random:*) or shrinks (tiny*).
ARCHITECTURE_CONFIGS = {
    "sd15": "sd15", "sd21": "sd21-base", "sd21-v": "sd21-v", "sdxl": "sdxl-base",
    "tiny": "sd15", "tiny-sd2": "sd21-base", "tiny-sd2-v": "sd21-v", "tiny-sdxl": "sdxl-base",
}  # fmt: skip
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


def scheduler_config(spec: str) -> dict[str, Any]:
    """The scheduler config of a built-in spec's architecture (v-prediction for the ``-v`` ones)."""
    return shipped_config(ARCHITECTURE_CONFIGS[_architecture(spec)], "scheduler")


def unet_config(spec: str) -> dict[str, Any]:
    """``UNet2DConditionModel`` arguments of a built-in spec."""
    architecture = _architecture(spec)
    real = shipped_config(ARCHITECTURE_CONFIGS[architecture], "unet")
    if not architecture.startswith("tiny"):
        return real
    if architecture == "tiny-sdxl":
        # SDXL's three levels (no attention at the finest) with 1 and 2 transformer blocks per attention, the two
        # encoders' states side by side (32 + 48), and the added embedding of the second encoder's pooled output
        # (48) beside six size ids of 8 channels each
        return {
            **real, "sample_size": 8, "block_out_channels": [16, 32, 32], "transformer_layers_per_block": [1, 1, 2],
            "attention_head_dim": 2, "cross_attention_dim": 32 + 48, "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 48 + 6 * 8, "norm_num_groups": 4,
        }  # fmt: skip
    return {
        **real,
        "sample_size": 8,
        "block_out_channels": [16, 16, 32, 32],
        "norm_num_groups": 4,
        "cross_attention_dim": 32,
        "attention_head_dim": 2,
    }


def vae_config(spec: str) -> dict[str, Any]:
    """``AutoencoderKL`` arguments of a built-in spec: SD's VAE (the same for 1.5 and 2.1; SDXL's has the same
    layout, another scaling factor, and is upcast to fp32 beside an fp16 UNet)."""
    architecture = _architecture(spec)
    sd = shipped_config(ARCHITECTURE_CONFIGS[architecture], "vae")
    if architecture.startswith("tiny"):
        return {
            **sd,
            "block_out_channels": [8, 8, 16, 16],
            "layers_per_block": 1,
            "norm_num_groups": 4,
            "sample_size": 64,
        }
    return sd


def text_encoder_config(spec: str, second: bool = False) -> dict[str, Any]:
    """``CLIPTextConfig`` arguments of a built-in spec's text encoder (``second``: SDXL's second one), with
    the local tokenizer's token ids."""
    special = {
        "bos_token_id": _BYTE_VOCAB_SIZE,
        "eos_token_id": _BYTE_VOCAB_SIZE + 1,
        "pad_token_id": _BYTE_VOCAB_SIZE + 1,
    }
    architecture = _architecture(spec)
    if not architecture.startswith("tiny"):  # CLIP ViT-L/14's text tower, OpenCLIP ViT-H/14's without its last
        # layer (SD 2.x), or SDXL's ViT-L and ViT-bigG with its projection
        component = "text_encoder_2" if second else "text_encoder"
        return {**shipped_config(ARCHITECTURE_CONFIGS[architecture], component), **special}
    if second:  # as in SDXL, the second encoder is the wider one (single-file layouts tell them apart by width)
        return {**text_encoder_config(spec), "hidden_size": 48, "intermediate_size": 96, "projection_dim": 48,
                "hidden_act": "gelu"}  # fmt: skip
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
    def two_encoders(self) -> bool:
        """Whether the architecture is SDXL's, with a second text encoder."""
        return self.architecture.endswith("sdxl")

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
    return head == "tiny" or head.startswith(("tiny-", "random:"))


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
    """``tiny``, ``tiny-sdxl``, ``sd15``, ``sd21-v``, …: the architecture a built spec has, whatever its seed."""
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
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    spec, seed = built.architecture, built.seed
    if spec.startswith("tiny"):
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
        second = {}
        if built.two_encoders:
            second_config = CLIPTextConfig(**text_encoder_config(spec, second=True))
            second = {
                "text_encoder_2": place_for_inference(CLIPTextModelWithProjection(second_config), device, dtype),
                "tokenizer_2": build_tokenizer(),
            }
    return StableDiffusion(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_tokenizer(),
        scheduler=DDIMScheduler.from_config(scheduler_config(spec)),  # SDXL's ships as Euler: its schedule is DDIM's
        model_id=built.name,
        revision=None,
        fingerprint=fingerprint,
        device=device,
        dtype=dtype,
        **second,
    )
