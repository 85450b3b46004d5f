"""What the ``tensorrt`` and ``torch-tensorrt`` engines share: the shapes a pass is built for (its
optimisation profile, from the batch sizes of the run), precisions, cache keys and timing-cache
paths, the checks of whether a library can run here, and the entries loaded in this process.

Neither TensorRT library is imported when this module is (the availability check imports one
when it is asked), and the rest is plain Python, tested without a GPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vedit.plugins.passes import pass_spec

GIB = 1 << 30

_PRECISIONS = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


# --------------------------------------------------------------------------------------------
# Plain helpers (no TensorRT needed)


def rows_per_frame(pass_name: str) -> int:
    """Batch rows per frame, as the pass's spec says: the plain pass runs one branch, the others three."""
    return pass_spec(pass_name).rows_per_frame


def batch_range(pass_name: str, example: Sequence[torch.Tensor], batches: Sequence[int]) -> tuple[int, int]:
    """The smallest and largest batch the build must serve: ``batches`` and the example's own."""
    sizes = sorted({int(b) for b in batches} | {int(example[0].shape[0])})
    per = rows_per_frame(pass_name)
    odd = [b for b in sizes if b <= 0 or b % per]
    if odd:
        raise ValueError(f"batch sizes {odd} of the {pass_name} pass are not whole frames of {per} rows")
    return sizes[0], sizes[-1]


def profile_shapes(
    pass_name: str, input_names: Sequence[str], example: Sequence[torch.Tensor], batches: Sequence[int]
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shape of every input of a pass built for ``batches``.

    The inputs the pass's spec batches span the smallest to the largest batch, optimised for the
    largest (the full chunk most calls have); every other input (t, flags, the keyframes' records)
    is fixed at its example shape.
    """
    if len(input_names) != len(example):
        raise ValueError(f"the {pass_name} pass names {len(input_names)} inputs but the example has {len(example)}")
    low, high = batch_range(pass_name, example, batches)
    spec = pass_spec(pass_name)
    profile = {}
    for name, tensor in zip(input_names, example):
        shape = tuple(int(d) for d in tensor.shape)
        kind = spec.batched_inputs.get(name)
        if kind is None:
            profile[name] = (shape, shape, shape)
            continue
        step = 1 if kind == "rows" else spec.rows_per_frame
        rows = (low // step, high // step, high // step)
        profile[name] = tuple((r, *shape[1:]) for r in rows)  # type: ignore[assignment]
    return profile


def precision_for(dtype: torch.dtype) -> str:
    """The TensorRT precision a model of ``dtype`` is built in."""
    if dtype not in _PRECISIONS:
        raise ValueError(f"TensorRT builds fp16, bf16 or fp32 models, not {str(dtype).removeprefix('torch.')}")
    return _PRECISIONS[dtype]


def key_parts(
    target: Any,
    engine: str,
    input_names: Sequence[str],
    profile: dict[str, tuple[tuple[int, ...], ...]],
    **extra: str,
) -> dict[str, str]:
    """The cache key parts of a build: the target's, the profile, the GPU model and ``extra``
    (library versions, precision). Batched dimensions appear as -1 in ``shapes``: the slot is the
    same whichever batch asked for the build; the batches themselves are in the key."""
    shapes = []
    dynamic = {}
    for name in input_names:
        low, opt, high = profile[name]
        if low == high:
            shapes.append(list(low))
        else:
            shapes.append([-1, *low[1:]])
            dynamic[name] = [list(low), list(opt), list(high)]
    parts = target.parts(engine, shapes, profile=json.dumps(dynamic, sort_keys=True), **extra)
    if target.device.type == "cuda":
        parts["gpu"] = torch.cuda.get_device_name(target.device)
    return parts


def timing_cache_path(root: str | os.PathLike, compute_capability: str, prefix: str = "tensorrt") -> Path:
    """Where TensorRT's timing cache for one GPU generation is kept (beside the entries)."""
    return Path(root) / f"{prefix}-timing-{compute_capability}.cache"


def workspace_bytes(free_bytes: int) -> int:
    """The builder's workspace pool: half the free GPU memory, between 1 and 16 GiB."""
    return int(min(16 * GIB, max(GIB, free_bytes // 2)))


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# --------------------------------------------------------------------------------------------
# Availability


def library_version(name: str) -> str:
    return str(importlib.import_module(name).__version__)


_import_failures: dict[str, str | None] = {}


def _import_failure(name: str) -> str | None:
    """Why ``import name`` fails (first line), None when it works; asked once per process."""
    if name not in _import_failures:
        try:
            importlib.import_module(name)
            _import_failures[name] = None
        except (ImportError, OSError, RuntimeError, AttributeError) as error:  # a broken install
            _import_failures[name] = f"{type(error).__name__}: {first_line(error)}"
    return _import_failures[name]


def unavailable(module_name: str, pip_name: str) -> str | None:
    if importlib.util.find_spec(module_name) is None:
        return f"{module_name} is not installed (pip install {pip_name}; needs an NVIDIA GPU)"
    if not torch.cuda.is_available():
        return "needs an NVIDIA GPU with CUDA, and torch.cuda.is_available() is False"
    failure = _import_failure(module_name)
    if failure:
        return f"{module_name} is installed but does not import ({failure})"
    return None


def require_cuda(target: Any, engine: str) -> None:
    if target.device.type != "cuda":
        raise RuntimeError(f"the {engine} engine runs on NVIDIA GPUs only; this run is on {target.device}")


# Entries loaded in this process. The runner asks a dynamic-batch engine for a build per batch
# shape; each of those finds the same entry, which is deserialized (weights onto the GPU) once.
loaded: weakref.WeakValueDictionary[tuple[str, str, str], Any] = weakref.WeakValueDictionary()


def load_once(folder: Path, parts: dict[str, str], device: torch.device, load: Callable[[], Any]) -> Any:
    key = (str(folder), json.dumps(parts, sort_keys=True), str(device))
    found = loaded.get(key)
    if found is None:
        found = load()
        loaded[key] = found
    return found
