"""Stable Diffusion's parts: loaded from the hub or a local folder, or built in code.

``load_model(spec)`` understands four kinds of spec:

- ``tiny``: a tiny randomly initialised SD with SD's exact block structure and a byte-level
  CLIP tokenizer written locally; it builds offline in a fraction of a second, for tests.
- ``random:sd15`` / ``random:sd21``: the real SD 1.5 / SD 2.1-base architectures with random
  weights; they cost exactly what the real models cost, for speed and memory figures.
  These three take ``@N`` for weights drawn from seed N (``tiny@3``, ``random:sd15@7``); without
  it the seed is 0. The weights' seed is part of the spec, so an edit's own seed never changes
  the model.
- a local diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
  ``scheduler/``, as ``save_pretrained`` writes them);
- anything else is a Hugging Face hub id (read from the local cache when ``HF_HUB_OFFLINE``
  is set).

Whatever the spec, sampling uses a fresh DDIM scheduler built from the model's own scheduler
config, and every module is in eval mode with gradients off.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import sys
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch

from ..config import MAX_SEED
from ..config import option_label, option_value
from ..errors import ConfigError, ModelError

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"
BUILT_IN_SPECS = ("tiny", "random:sd15", "random:sd21")
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PROMPT_LENGTH = 77  # CLIP's context: SD pads every prompt to 77 tokens
_BYTE_VOCAB_SIZE = 512  # the local tokenizer: every byte, alone and as a word's end ("</w>")

# SD 1.x / 2.x-base training schedule, as their scheduler_config.json files give it.
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
_DTYPE_ALIASES = {
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32, "full": torch.float32,
}
_SPEC_HELP = ("use tiny, random:sd15 or random:sd21 (with @N for weights drawn from seed N, e.g. tiny@3), "
              "a Hugging Face hub id or a local diffusers folder")


@dataclass(eq=False)
class StableDiffusion:
    """The parts of a Stable Diffusion model that vedit runs, on one device in one dtype."""

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

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """CLIP text embeddings of the prompts, each padded to the tokenizer's 77 tokens."""
        if isinstance(prompts, str):
            prompts = [prompts]
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(self.text_encoder.device)  # (n, 77)
        return self.text_encoder(ids)[0].to(self.device, self.dtype)  # (n, 77, dim)

    def prompt_overflow(self, prompt: str) -> tuple[int, str, str] | None:
        """(tokens, kept, dropped) when ``prompt`` is longer than the text encoder reads, else None.

        CLIP reads 77 tokens including its start and end markers and ``encode_prompt`` cuts the
        rest. ``kept`` and ``dropped`` are the prompt's own words on either side of the cut (a word
        the cut falls inside counts as dropped).
        """
        limit = self.tokenizer.model_max_length

        def tokens(text: str) -> int:
            return len(self.tokenizer(text, truncation=False, verbose=False).input_ids)

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
        latents = [torch.empty(0, self.vae.config.latent_channels, height // scale, width // scale,
                               device=self.device, dtype=self.dtype)]
        for start in range(0, images.shape[0], max(1, batch_size)):
            batch = images[start:start + batch_size].to(self.device, self.vae_dtype) * 2 - 1  # [-1, 1]
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
            batch = latents[start:start + batch_size].to(self.device, self.vae_dtype) / self.latent_scale
            decoded = self.vae.decode(batch).sample  # (b, 3, H, W) in about [-1, 1]
            images.append((decoded / 2 + 0.5).clamp(0, 1).float().cpu())
        return torch.cat(images)

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the model as a diffusers folder that ``load_model(folder)`` reads back."""
        from diffusers import __version__ as diffusers_version

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in COMPONENTS:
            getattr(self, name).save_pretrained(folder / name)
        index = {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": diffusers_version,
            "unet": ["diffusers", type(self.unet).__name__],
            "vae": ["diffusers", type(self.vae).__name__],
            "text_encoder": ["transformers", type(self.text_encoder).__name__],
            "tokenizer": ["transformers", type(self.tokenizer).__name__],
            "scheduler": ["diffusers", type(self.scheduler).__name__],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        }
        (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        return folder


def _check_images(images: torch.Tensor, scale: int) -> tuple[int, int]:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (n, 3, H, W), not {tuple(images.shape)}")
    height, width = images.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"image size {width}x{height} is not a multiple of {scale}")
    return height, width


# ----------------------------------------------------------------------------- device, dtype


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; a named device must exist here."""
    if name is None or (isinstance(name, str) and name.strip().lower() in ("", "auto")):
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps", 0)
        return torch.device("cpu")
    try:
        device = torch.device(name.strip().lower() if isinstance(name, str) else name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device '{name}': use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{name}' is not available: this PyTorch sees no CUDA GPU; "
                              f"use {option_value('device', 'cpu')} (or auto)")
        count = torch.cuda.device_count()
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= count:
            raise ConfigError(f"device '{name}' does not exist: this machine has {count} CUDA "
                              f"device(s), cuda:0 to cuda:{count - 1}")
        return torch.device("cuda", index)
    if device.type == "mps":
        if not _mps_available():
            raise ConfigError(f"device '{name}' is not available here: use {option_value('device', 'cpu')} (or auto)")
        return torch.device("mps", 0)
    backend = getattr(torch, device.type, None)  # xpu and other accelerators PyTorch knows of
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        raise ConfigError(f"device '{name}' is not available here: use auto, cpu, cuda, cuda:N or mps")
    return device


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto`` is fp16 on a GPU and fp32 on the CPU; fp16 on the CPU is refused."""
    device = torch.device(device)
    if name is None or (isinstance(name, str) and name.strip().lower() in ("", "auto")):
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if isinstance(name, torch.dtype):
        dtype = name
    else:
        dtype = _DTYPE_ALIASES.get(name.strip().lower().removeprefix("torch."))
    if dtype not in _DTYPE_NAMES:
        raise ConfigError(f"unknown dtype '{name}': use auto, fp16, bf16 or fp32")
    if dtype == torch.float16 and device.type == "cpu":
        raise ConfigError("fp16 is not supported on the CPU (many of its kernels are missing or "
                          f"slow there): use {option_value('dtype', 'fp32')} or {option_value('dtype', 'bf16')}")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"bf16 is not supported by {torch.cuda.get_device_name(device)}: "
                          f"use {option_value('dtype', 'fp16')}")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """The short name vedit's options use: fp16, bf16 or fp32."""
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


# ----------------------------------------------------------------------------- loading


def peek_scheduler(spec: str = DEFAULT_MODEL, revision: str | None = None) -> DDIMScheduler | None:
    """The model's DDIM scheduler from its config file alone (no weights), or None if not at hand.

    Lets option combinations be checked against the model's real schedule before loading it.
    """
    from diffusers import DDIMScheduler

    spec = str(spec).strip()
    if built_spec(spec) is not None:
        return DDIMScheduler(**SD_SCHEDULER_CONFIG)
    try:
        path = Path(spec).expanduser()
        if path.is_dir():
            config_file = path / "scheduler" / "scheduler_config.json"
        else:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec, "scheduler/scheduler_config.json", revision=revision)
            if not isinstance(cached, str):
                return None
            config_file = Path(cached)
        return DDIMScheduler.from_config(json.loads(config_file.read_text(encoding="utf-8")))
    except Exception:  # unreadable or not there: loading the model will say what is wrong
        return None



def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = "auto",
    revision: str | None = None,
    seed: int | None = None,
) -> StableDiffusion:
    """Load (or, for ``tiny`` and ``random:*``, build from the seed the spec names) a Stable Diffusion model.

    ``seed`` is deprecated: it gives a built spec written without ``@N`` its weights' seed, as
    ``tiny@N`` does.
    """
    spec = str(spec).strip()
    built = built_spec(spec)
    if seed is not None:
        warnings.warn("load_model(seed=N) is deprecated: the weights' seed is part of the spec, as in 'tiny@N'",
                      DeprecationWarning, stacklevel=2)
        if built is not None and "@" not in spec:
            built = built_spec(f"{spec}@{seed}")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    _use_fast_float32(device)
    try:
        if built is not None:
            model = _build(built, device, dtype)
        else:
            model = _load_pretrained(spec, device, dtype, revision)
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        _release_memory()
        raise ModelError(f"not enough memory on {device} for '{spec}' in {dtype_name(dtype)}: "
                         f"{_loading_hint(device, dtype)}") from None
    _check_compatible(model)
    return model


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed: a GPU's (torch.OutOfMemoryError, MPS's
    RuntimeError) or the host's (MemoryError, the CPU allocator's RuntimeError)."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in message or "can't allocate memory" in message)


def _loading_hint(device: torch.device, dtype: torch.dtype) -> str:
    """What lets the weights fit: half precision where the device runs it (bf16 on the CPU, which
    has no fp16), else less of everything else. The working size does not change the weights."""
    others = "close other programs using it"
    if dtype != torch.float32:
        return others
    half = "bf16" if device.type == "cpu" else "fp16"
    return f"try {option_value('dtype', half)} (half the memory) or {others}"


def memory_hint(error: BaseException) -> str:
    """What to try when a run runs out of memory: a GPU's (fp16 halves what it holds) or the
    host's, where fp16 is refused (bf16 halves it there)."""
    smaller = f"a smaller {option_label('size')}, {option_label('chunk_size')} or {option_label('batch_size')}"
    if isinstance(error, MemoryError) or "can't allocate memory" in str(error).lower():
        return f"try {smaller} (or {option_value('dtype', 'bf16')} on the CPU)"
    return f"try {option_value('dtype', 'fp16')}, {smaller}"


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _check_compatible(model: StableDiffusion) -> None:
    """Refuse models whose shape or objective the rest of vedit does not handle."""
    name = model.model_id
    if model.vae_scale_factor != 8:
        raise ModelError(f"model '{name}' has a VAE that scales by {model.vae_scale_factor}, "
                         "not 8: vedit needs a Stable Diffusion 1.x/2.x VAE")
    if model.unet.config.in_channels != 4 or model.unet.config.out_channels != 4:
        raise ModelError(f"model '{name}' has a UNet with {model.unet.config.in_channels} input "
                         "channels (an inpainting or depth model?): vedit needs a text-to-image "
                         "model with 4")
    if model.unet.config.cross_attention_dim != model.text_encoder.config.hidden_size:
        raise ModelError(f"model '{name}' is inconsistent: its UNet expects "
                         f"{model.unet.config.cross_attention_dim}-dim text embeddings, its text "
                         f"encoder makes {model.text_encoder.config.hidden_size}-dim ones")
    prediction = model.scheduler.config.prediction_type
    if prediction != "epsilon":
        raise ModelError(f"model '{name}' predicts '{prediction}', not noise ('epsilon'): vedit "
                         "supports epsilon models such as SD 1.5 and SD 2.1-base")


def vae_dtype_for(dtype: torch.dtype, force_upcast: bool = True) -> torch.dtype:
    """The dtype the VAE runs in beside a UNet in ``dtype``.

    SD's VAE overflows fp16 in its decoder's last blocks (black or NaN frames at 512×512 and
    above), which its config says with ``force_upcast`` (True unless a fixed VAE says otherwise): beside an fp16 UNet it runs in fp32
    (bf16 has fp32's range, so a bf16 VAE is kept). Its share of the run's time is small.
    """
    if dtype == torch.float16 and force_upcast:
        return torch.float32
    return dtype


def _finish(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> Any:
    # nn.Module.to, not diffusers' override: that one warns on every dtype cast, even to fp32
    module = torch.nn.Module.to(module, device=device, dtype=dtype)
    if device.type == "cuda" and any(isinstance(m, torch.nn.Conv2d) for m in module.modules()):
        # cuDNN's fp16/bf16 convolutions run NHWC natively; NCHW weights cost a transpose per call
        module = module.to(memory_format=torch.channels_last)
    module.eval()
    module.requires_grad_(False)
    return module


def _use_fast_float32(device: torch.device) -> None:
    """TF32 for the fp32 matrix products left on a CUDA GPU (the fp16 run's VAE): 8x the fp32 rate
    on Ampere and later, at the precision the VAE's output (8-bit frames) needs."""
    if device.type == "cuda" and torch.get_float32_matmul_precision() == "highest":
        torch.set_float32_matmul_precision("high")


# ----------------------------------------------------------------------------- built in code


def unet_config(spec: str) -> dict[str, Any]:
    """``UNet2DConditionModel`` arguments of a built-in spec (tiny, random:sd15, random:sd21)."""
    sd = {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "center_input_sample": False,
        "dual_cross_attention": False,
        "only_cross_attention": False,
        "upcast_attention": False,
    }
    architecture = _architecture(spec)
    if architecture == "sd15":
        # attention_head_dim is diffusers' (misnamed) head count: 8 heads at every level
        return {**sd, "cross_attention_dim": 768, "attention_head_dim": 8,
                "use_linear_projection": False}
    if architecture == "sd21":
        # 5/10/20/20 heads of 64 channels each
        return {**sd, "cross_attention_dim": 1024, "attention_head_dim": [5, 10, 20, 20],
                "use_linear_projection": True}
    return {**sd, "sample_size": 8, "block_out_channels": [16, 16, 32, 32], "norm_num_groups": 4,
            "cross_attention_dim": 32, "attention_head_dim": 2, "use_linear_projection": False}


def vae_config(spec: str) -> dict[str, Any]:
    """``AutoencoderKL`` arguments of a built-in spec: SD's VAE (the same for 1.5 and 2.1)."""
    sd = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    }
    if _architecture(spec) == "tiny":
        return {**sd, "block_out_channels": [8, 8, 16, 16], "layers_per_block": 1,
                "norm_num_groups": 4, "sample_size": 64}
    return sd


def text_encoder_config(spec: str) -> dict[str, Any]:
    """``CLIPTextConfig`` arguments of a built-in spec, with the local tokenizer's token ids."""
    special = {"bos_token_id": _BYTE_VOCAB_SIZE, "eos_token_id": _BYTE_VOCAB_SIZE + 1,
               "pad_token_id": _BYTE_VOCAB_SIZE + 1}
    architecture = _architecture(spec)
    if architecture == "sd15":  # CLIP ViT-L/14's text tower
        return {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
                "num_hidden_layers": 12, "num_attention_heads": 12, "projection_dim": 768,
                "max_position_embeddings": PROMPT_LENGTH, "hidden_act": "quick_gelu",
                "layer_norm_eps": 1e-5, **special}
    if architecture == "sd21":  # OpenCLIP ViT-H/14's text tower without its last layer
        return {"vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096,
                "num_hidden_layers": 23, "num_attention_heads": 16, "projection_dim": 512,
                "max_position_embeddings": PROMPT_LENGTH, "hidden_act": "gelu",
                "layer_norm_eps": 1e-5, **special}
    return {"vocab_size": _BYTE_VOCAB_SIZE + 2, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "projection_dim": 32,
            "max_position_embeddings": PROMPT_LENGTH, "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5, **special}


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
        raise ConfigError(f"unknown model '{spec}': {_SPEC_HELP}")
    if not at:
        return BuiltSpec(architecture)
    if not re.fullmatch(r"[0-9]+", seed) or int(seed) > MAX_SEED:
        raise ConfigError(f"model '{spec}': the weights' seed after '@' must be a whole number from 0 to "
                          f"{MAX_SEED}, as in '{architecture}@3'")
    return BuiltSpec(architecture, int(seed))


def _architecture(spec: str) -> str:
    """``tiny``, ``sd15`` or ``sd21``: the architecture a built spec has, whatever its seed."""
    built = built_spec(spec)
    if built is None:
        raise ConfigError(f"unknown model '{spec}': {_SPEC_HELP}")
    return built.architecture.removeprefix("random:")


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's byte-to-unicode table: printable bytes stand for themselves, the rest are
    shifted past 255 so that no symbol is whitespace or a control character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
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

    symbols = _byte_symbols()
    tokens = symbols + [symbol + "</w>" for symbol in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    with tempfile.TemporaryDirectory(prefix="vedit-tokenizer-") as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        Path(folder, "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=PROMPT_LENGTH,
                                             local_files_only=True)


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


def _build(built: BuiltSpec, device: torch.device, dtype: torch.dtype) -> StableDiffusion:
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
        unet = _finish(UNet2DConditionModel(**unet_config(spec)), device, dtype)
        vae = AutoencoderKL(**vae_config(spec))
        vae = _finish(vae, device, vae_dtype_for(dtype, vae.config.force_upcast))
        text_config = CLIPTextConfig(**text_encoder_config(spec))
        text_encoder = _finish(CLIPTextModel(text_config), device, dtype)
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


# ----------------------------------------------------------------------------- from_pretrained


class _CurrentStderr:
    """A stream that writes to whatever ``sys.stderr`` is now, not to the one of the first import."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _route_library_logs() -> None:
    """diffusers and transformers bind their log handler to ``sys.stderr`` when first imported; an
    embedding application (or a test runner) may have swapped and closed that stream since."""
    import logging

    for name in ("diffusers", "transformers"):
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler and not isinstance(handler.stream, _CurrentStderr):
                handler.stream = _CurrentStderr()  # not setStream: it flushes the old, maybe closed, one


def _load_pretrained(spec: str, device: torch.device, dtype: torch.dtype,
                     revision: str | None) -> StableDiffusion:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    _route_library_logs()

    folder = _local_folder(spec)
    source = str(folder) if folder else spec
    options: dict[str, Any] = {"local_files_only": folder is not None or _offline() or _fully_cached(spec, revision)}
    if not options["local_files_only"] and not _hub_reachable():
        # one quick probe instead of huggingface_hub's five logged retries per file (about 25 s)
        options["local_files_only"] = True
    if folder is None and revision:
        options["revision"] = revision
    # Weights go from the file straight to the device in their dtype (accelerate's empty-weights
    # loading): no random initialisation first, no full fp32 copy in host memory.
    placed = {"device_map": str(device)} if _can_place(device) else {}
    loaders = {
        "unet": lambda: UNet2DConditionModel.from_pretrained(
            source, subfolder="unet", torch_dtype=dtype, **placed, **options),
        "vae": lambda: AutoencoderKL.from_pretrained(
            source, subfolder="vae", torch_dtype=_stored_vae_dtype(source, dtype, options), **placed, **options),
        "text_encoder": lambda: CLIPTextModel.from_pretrained(
            source, subfolder="text_encoder", **{_transformers_dtype_keyword(): dtype}, **placed, **options),
        "tokenizer": lambda: CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **options),
        "scheduler": lambda: DDIMScheduler.from_pretrained(source, subfolder="scheduler", **options),
    }
    parts: dict[str, Any] = {}
    for name, load in loaders.items():
        try:
            with warnings.catch_warnings():
                # diffusers passes an argument that newer huggingface_hub versions ignore
                warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
                parts[name] = load()
        except Exception as error:
            if is_out_of_memory(error) or not _is_load_error(error):
                raise
            if folder is None and isinstance(error, OSError):  # not in the cache, not on the hub
                raise ModelError(_hub_message(spec, revision, error)) from None
            where = f"model folder '{folder}'" if folder is not None else f"model '{spec}'"
            raise ModelError(f"could not read the {name} of {where}: {_first_line(error)}") from None
    for name in ("unet", "vae", "text_encoder"):
        wanted = vae_dtype_for(dtype, parts[name].config.force_upcast) if name == "vae" else dtype
        parts[name] = _finish(parts[name], device, wanted)
    if folder is not None:
        model_id, revision, fingerprint = str(folder), None, _folder_fingerprint(folder)
    else:
        model_id, fingerprint = spec, _hub_fingerprint(spec, revision)
    return StableDiffusion(**parts, model_id=model_id, revision=revision,
                           fingerprint=fingerprint, device=device, dtype=dtype)


def _can_place(device: torch.device) -> bool:
    """Whether from_pretrained can load onto ``device`` directly (it needs accelerate)."""
    import importlib.util

    return device.type in ("cpu", "cuda") and importlib.util.find_spec("accelerate") is not None


def _stored_vae_dtype(source: str, dtype: torch.dtype, options: dict[str, Any]) -> torch.dtype:
    """The dtype to load the VAE in: :func:`vae_dtype_for` of its config (read before its weights)."""
    from diffusers import AutoencoderKL

    try:
        config = AutoencoderKL.load_config(source, subfolder="vae", **options)
    except Exception:  # loading the weights will say what is wrong
        return dtype
    return vae_dtype_for(dtype, bool(config.get("force_upcast", True)))


def _local_folder(spec: str) -> Path | None:
    """The folder ``spec`` names, or None when it is a hub id; a missing path is an error."""
    path = Path(spec).expanduser()
    if path.is_dir():
        folder = path.resolve()
        missing = [name for name in COMPONENTS if not (folder / name).is_dir()]
        if missing:
            listed = " and ".join(", ".join(f"{name}/" for name in missing).rsplit(", ", 1))
            raise ModelError(f"'{spec}' is not a diffusers model folder: it lacks {listed} "
                             "(write one with save_pretrained, or pass a hub id)")
        return folder
    if path.exists():
        raise ModelError(f"'{spec}' is a file, not a diffusers model folder (unet/, vae/, "
                         "text_encoder/, tokenizer/, scheduler/): convert single-file "
                         "checkpoints to the diffusers layout first")
    looks_like_path = (spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1
                       or spec.endswith("/"))
    if looks_like_path:
        raise ModelError(f"model folder '{spec}' does not exist: pass "
                         f"{option_value('model', 'PATH', placeholder=True)} to a local diffusers folder or a "
                         f"Hugging Face hub id; {option_value('model', 'tiny')} runs offline")
    if not _is_hub_id(spec):
        raise ModelError(f"model '{spec}' is neither a folder nor a Hugging Face hub id (like "
                         f"'{DEFAULT_MODEL}'); {_SPEC_HELP}")
    return None


def _is_hub_id(spec: str) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(spec)
    except HFValidationError:
        return False
    return True


def _fully_cached(spec: str, revision: str | None) -> bool:
    """Whether every component's config of hub model ``spec`` is in the local hub cache at a pinned
    revision (none given, or a commit hash), so loading needs no request: each request to the hub
    costs a round trip per file, and without a network several retries before failing."""
    if revision is not None and not re.fullmatch(r"[0-9a-f]{40}", revision):
        return False  # a branch or tag may have moved on the hub since it was cached
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    files = ["unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
             "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json", "text_encoder/model.safetensors",
             "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json"]
    try:
        return all(isinstance(try_to_load_from_cache(spec, name, revision=revision), str) for name in files)
    except Exception:  # a malformed id: loading says what is wrong
        return False


HUB_PROBE_TIMEOUT = 10.0  # seconds to wait for the hub before treating it as unreachable


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``) answers one HEAD request within ``timeout``.

    Any HTTP answer counts, an error status included: what the hub says about the model is for the
    loader to report. Only a failure to connect (no network, DNS, refused, timed out) is False.
    Proxies from the environment are used, as huggingface_hub uses them.
    """
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    request = urllib.request.Request(constants.ENDPOINT.rstrip("/") + "/api/models", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # URLError, socket errors and timeouts; a malformed endpoint
        return False


def _offline() -> bool:
    from huggingface_hub import constants

    setting = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return setting in ("1", "true", "yes", "on") or bool(constants.HF_HUB_OFFLINE)


def _transformers_dtype_keyword() -> str:
    import transformers

    major, minor = (int(part) for part in re.findall(r"\d+", transformers.__version__)[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _is_load_error(error: BaseException) -> bool:
    from safetensors import SafetensorError

    return isinstance(error, (OSError, ValueError, RuntimeError, SafetensorError, KeyError))


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _hub_message(spec: str, revision: str | None, error: BaseException) -> str:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if not _offline():
        for cause in _causes(error):
            if isinstance(cause, GatedRepoError):
                return (f"model '{spec}' is gated on the Hugging Face hub: accept its licence on "
                        "huggingface.co and log in with 'hf auth login'")
            if isinstance(cause, RevisionNotFoundError):
                return (f"model '{spec}' has no revision '{revision}': pass a branch, tag or "
                        f"commit that exists, or leave {option_label('revision')} out")
            if isinstance(cause, RepositoryNotFoundError):
                return f"model '{spec}' was not found on the Hugging Face hub: check the id, or {_local_model()}"
    return (f"model weights for '{spec}' are not available (not in the Hugging Face cache and "
            f"the hub cannot be reached): download them with 'hf download {spec}' or {_local_model()}")


def _local_model() -> str:
    """What to do without the hub's weights, naming the option as the user gives it."""
    return (f"pass {option_value('model', 'PATH', placeholder=True)} to a local diffusers folder; "
            f"{option_value('model', 'tiny')} runs offline")


def _hub_fingerprint(spec: str, revision: str | None) -> str:
    """``id@commit`` when the cache tells which commit was loaded, else ``id@revision``."""
    from huggingface_hub import try_to_load_from_cache

    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return f"{spec}@{revision}"
    try:
        cached = try_to_load_from_cache(spec, "unet/config.json", revision=revision)
    except Exception:  # an id the cache cannot hold: fall back on the name
        cached = None
    if isinstance(cached, str):
        commit = Path(cached).parent.parent.name  # .../snapshots/<commit>/unet/config.json
        if re.fullmatch(r"[0-9a-f]{40}", commit):
            return f"{spec}@{commit}"
    return f"{spec}@{revision or 'main'}"


def _folder_fingerprint(folder: Path) -> str:
    """sha256 over (relative path, size, mtime_ns) of every file of the five components.

    Configs, tokenizer and scheduler files count too: changing any of them changes the outputs.
    """
    digest = hashlib.sha256()
    for name in COMPONENTS:
        for path in sorted((folder / name).rglob("*")):
            relative = path.relative_to(folder)
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue
            stat = path.stat()
            digest.update(f"{relative.as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return f"sha256:{digest.hexdigest()}"
