"""Engine ``torch-tensorrt``: a UNet pass compiled by Torch-TensorRT.

It takes the other route to TensorRT than the ``tensorrt`` engine: ``torch.export`` with a
symbolic batch, then Torch-TensorRT's dynamo compiler, saved as an ExportedProgram (the cache
entry). What it shares with ``tensorrt`` (:mod:`vedit_engines.tensorrt`) is in
:mod:`vedit_engines._tensorrt_common`.

Torch-TensorRT is not imported when this module is: the code that needs it imports it when it runs.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vedit.plugins.hookspecs import hookimpl
from vedit.plugins.passes import pass_spec

from ._tensorrt_common import (
    first_line,
    key_parts,
    library_version,
    load_once,
    loaded,
    precision_for,
    profile_shapes,
    require_cuda,
    timing_cache_path,
    unavailable,
    workspace_bytes,
)

PROGRAM_FILE = "pass.ep"


# --------------------------------------------------------------------------------------------
# Plain helpers (no Torch-TensorRT needed)


def dynamic_shapes(
    module: torch.nn.Module, input_names: Sequence[str], profile: dict[str, tuple[tuple[int, ...], ...]]
) -> dict[str, Any] | None:
    """``torch.export`` dynamic shapes for the profile (:meth:`vedit.PassSpec.dynamic_shapes`): one
    ``frames`` dimension that the pass's batched inputs share, keyed by the names of ``module.forward``'s
    parameters. None when the profile is one shape."""
    spec = pass_spec(str(getattr(module, "name", "")))
    batched = [n for n in input_names if n in spec.batched_inputs and profile[n][0] != profile[n][2]]
    if not batched:
        return None
    first = batched[0]
    per = spec.rows_per_frame if spec.batched_inputs[first] == "rows" else 1
    return spec.dynamic_shapes(module, profile[first][0][0] // per, profile[first][2][0] // per)


# --------------------------------------------------------------------------------------------
# Torch-TensorRT: torch.export → Torch-TensorRT's dynamo compiler


def export_program(
    module: torch.nn.Module, example: Sequence[torch.Tensor], profile: dict[str, tuple[tuple[int, ...], ...]]
) -> Any:
    """The pass as a ``torch.export`` program whose batch dimension spans the profile."""
    names = tuple(module.input_names)  # type: ignore[attr-defined]
    with torch.no_grad():
        return torch.export.export(module, tuple(example), dynamic_shapes=dynamic_shapes(module, names, profile),
                                   strict=False)  # fmt: skip


def _accepted(function: Callable, options: dict[str, Any]) -> dict[str, Any]:
    """The ``options`` that ``function`` takes (Torch-TensorRT's keywords change between releases)."""
    parameters = inspect.signature(function).parameters
    return {k: v for k, v in options.items() if k in parameters}


def compile_program(
    program: Any,
    example: Sequence[torch.Tensor],
    input_names: Sequence[str],
    profile: dict[str, tuple[tuple[int, ...], ...]],
    dtype: torch.dtype,
    *,
    device: torch.device,
    timing_cache: Path,
) -> Any:
    """Compile an exported pass with Torch-TensorRT; returns its GraphModule."""
    import torch_tensorrt

    specs: list[Any] = []
    for name, tensor in zip(input_names, example):
        low, opt, high = profile[name]
        if low == high:
            specs.append(tensor.to(device))  # a fixed shape: the tensor itself describes it
        else:
            specs.append(torch_tensorrt.Input(min_shape=low, opt_shape=opt, max_shape=high, dtype=tensor.dtype))
    free, _ = torch.cuda.mem_get_info(device)
    options = _accepted(
        torch_tensorrt.dynamo.compile,
        {
            "device": device,
            "min_block_size": 1,
            "workspace_size": workspace_bytes(free),
            "timing_cache_path": str(timing_cache),
            "disable_tf32": False,
        },
    )
    # enabled_precisions lets older releases pick fp16/bf16 kernels; newer ones type the engine
    # from the program's own dtypes and ignore it.
    return torch_tensorrt.compile(program, ir="dynamo", inputs=specs, enabled_precisions={dtype}, **options)


def save_compiled(compiled: Any, example: Sequence[torch.Tensor], path: Path, shapes: dict[str, Any] | None) -> None:
    """Save a compiled pass as an ExportedProgram (TensorRT engines inside) at ``path``."""
    import torch_tensorrt

    options: dict[str, Any] = {"output_format": "exported_program", "retrace": False}
    parameters = inspect.signature(torch_tensorrt.save).parameters
    options["arg_inputs" if "arg_inputs" in parameters else "inputs"] = list(example)
    if shapes is not None:
        options["dynamic_shapes"] = shapes
    torch_tensorrt.save(compiled, str(path), **_accepted(torch_tensorrt.save, options))


class _OnDevice:
    """A compiled pass called with the runner's tensors (moved to its device when they are not)."""

    def __init__(self, module: Any, device: torch.device):
        self.module = module
        self.device = device

    def __call__(self, *inputs: torch.Tensor):
        with torch.no_grad():
            return self.module(*(x.to(self.device) for x in inputs))


def load_program(path: Path, device: torch.device) -> _OnDevice:
    import torch_tensorrt  # noqa: F401 - registers the TensorRT ops and classes the program calls

    return _OnDevice(torch.export.load(str(path)).module(), device)


class _NotSaved(Exception):
    """A compiled pass that could not be written to the cache; it still runs from memory."""

    def __init__(self, compiled: Any, error: BaseException):
        super().__init__(first_line(error))
        self.compiled = compiled


class TorchTensorRT:
    name = "torch-tensorrt"
    description = "Torch-TensorRT: torch.export then TensorRT engines for what TensorRT supports (cached)"
    dynamic_batch = True

    def unavailable_reason(self) -> str | None:
        return unavailable("torch_tensorrt", "torch-tensorrt")

    def build(self, module: Any, example: tuple[torch.Tensor, ...], target: Any) -> Callable:
        require_cuda(target, self.name)
        precision = precision_for(target.dtype)
        names = tuple(module.input_names)
        profile = profile_shapes(module.name, names, example, target.batches)
        parts = key_parts(
            target, self.name, names, profile,
            torch_tensorrt=library_version("torch_tensorrt"), tensorrt=library_version("tensorrt"),
            precision=precision,
        )  # fmt: skip
        timing = timing_cache_path(target.cache.root, parts.get("compute_capability", "none"), "torch-tensorrt")

        def build(folder: Path) -> None:  # the engine cache says when it starts and how long it took
            program = export_program(module, example, profile)
            compiled = compile_program(program, example, names, profile, target.dtype, device=target.device,
                                       timing_cache=timing)  # fmt: skip
            try:
                save_compiled(compiled, example, folder / PROGRAM_FILE, dynamic_shapes(module, names, profile))
            except Exception as error:
                # Saving can fail where compiling did not (a graph part left to PyTorch that
                # torch.export cannot serialize, an older Torch-TensorRT): keep it for this run.
                raise _NotSaved(compiled, error) from error

        def load(folder: Path) -> _OnDevice:
            program = folder / PROGRAM_FILE
            return load_once(folder, parts, target.device, lambda: load_program(program, target.device))

        label = f"{precision} Torch-TensorRT program for the {target.pass_name} pass"
        in_memory = ("memory", json.dumps(parts, sort_keys=True), str(target.device))
        kept = loaded.get(in_memory)
        if kept is not None:  # compiled earlier in this run but not saved: not compiled again
            return kept
        try:
            return target.cache.load_or_build(parts, target.IDENTITY, build, load, label=label)
        except _NotSaved as unsaved:
            target.message(
                f"the Torch-TensorRT program for the {target.pass_name} pass cannot be saved ({unsaved}); "
                f"it runs from memory for this run only"
            )
            kept = _OnDevice(unsaved.compiled, target.device)
            loaded[in_memory] = kept
            return kept


@hookimpl
def register_engines(register):
    register(TorchTensorRT())
