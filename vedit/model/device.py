"""Where and in what precision a model runs: the device (``auto`` picks CUDA, then MPS, then the
CPU), the dtype and its short name, the VAE's dtype beside it, TF32 on CUDA, modules placed there for
inference, and what to say when memory runs out."""

from __future__ import annotations

from typing import Any

import torch

from ..config import option_label, option_value
from ..errors import ConfigError

_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
_DTYPE_ALIASES = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "full": torch.float32,
}


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
            raise ConfigError(
                f"device '{name}' is not available: this PyTorch sees no CUDA GPU; "
                f"use {option_value('device', 'cpu')} (or auto)"
            )
        count = torch.cuda.device_count()
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= count:
            raise ConfigError(
                f"device '{name}' does not exist: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
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
        raise ConfigError(
            "fp16 is not supported on the CPU (many of its kernels are missing or "
            f"slow there): use {option_value('dtype', 'fp32')} or {option_value('dtype', 'bf16')}"
        )
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"bf16 is not supported by {torch.cuda.get_device_name(device)}: use {option_value('dtype', 'fp16')}"
        )
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """The short name vedit's options use: fp16, bf16 or fp32."""
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def vae_dtype_for(dtype: torch.dtype, force_upcast: bool = True) -> torch.dtype:
    """The dtype the VAE runs in beside a UNet in ``dtype``.

    SD's VAE overflows fp16 in its decoder's last blocks (black or NaN frames at 512×512 and
    above), which its config says with ``force_upcast`` (True unless a fixed VAE says otherwise):
    beside an fp16 UNet it runs in fp32 (bf16 has fp32's range, so a bf16 VAE is kept). Its share
    of the run's time is small.
    """
    if dtype == torch.float16 and force_upcast:
        return torch.float32
    return dtype


def place_for_inference(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> Any:
    """``module`` on ``device`` in ``dtype``, in eval mode with gradients off."""
    # nn.Module.to, not diffusers' override: that one warns on every dtype cast, even to fp32
    module = torch.nn.Module.to(module, device=device, dtype=dtype)
    if device.type == "cuda" and any(isinstance(m, torch.nn.Conv2d) for m in module.modules()):
        # cuDNN's fp16/bf16 convolutions run NHWC natively; NCHW weights cost a transpose per call
        module = module.to(memory_format=torch.channels_last)
    module.eval()
    module.requires_grad_(False)
    return module


def use_fast_float32(device: torch.device) -> None:
    """TF32 for the fp32 matrix products left on a CUDA GPU (the fp16 run's VAE): 8x the fp32 rate
    on Ampere and later, at the precision the VAE's output (8-bit frames) needs."""
    if device.type == "cuda" and torch.get_float32_matmul_precision() == "highest":
        torch.set_float32_matmul_precision("high")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed: a GPU's (torch.OutOfMemoryError, MPS's
    RuntimeError) or the host's (MemoryError, the CPU allocator's RuntimeError)."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def memory_hint(error: BaseException) -> str:
    """What to try when a run runs out of memory: a GPU's (fp16 halves what it holds) or the
    host's, where fp16 is refused (bf16 halves it there)."""
    smaller = f"a smaller {option_label('size')}, {option_label('chunk_size')} or {option_label('batch_size')}"
    if isinstance(error, MemoryError) or "can't allocate memory" in str(error).lower():
        return f"try {smaller} (or {option_value('dtype', 'bf16')} on the CPU)"
    return f"try {option_value('dtype', 'fp16')}, {smaller}"
