"""Engine ``tensorrt``: a UNet pass compiled by NVIDIA TensorRT.

It exports the pass to ONNX (:func:`vedit.runtime.onnx_export.export_pass`), has TensorRT's
ONNX parser read it and builds one engine ("plan") per pass whose optimisation profile spans
every batch size of the run; the plan is the cache entry. What it shares with ``torch-tensorrt``
(:mod:`vedit_engines.torch_tensorrt`) is in :mod:`vedit_engines._tensorrt_common`.

TensorRT is not imported when this module is: the helpers that decide shapes, precisions and
cache keys are plain Python (and tested without a GPU); the code that needs TensorRT imports it
when it runs.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vedit.plugins.hookspecs import hookimpl

from ._tensorrt_common import (
    key_parts,
    library_version,
    load_once,
    precision_for,
    profile_shapes,
    require_cuda,
    timing_cache_path,
    unavailable,
    workspace_bytes,
)

ONNX_FILE = "pass.onnx"
PLAN_FILE = "pass.plan"
ALIGNMENT = 256  # bytes; TensorRT wants its I/O addresses aligned to this

_TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
}


# --------------------------------------------------------------------------------------------
# Plain helpers (no TensorRT needed)


def _enum_name(value: Any) -> str:
    """``DataType.HALF``, ``trt.DataType.HALF`` or ``"HALF"`` → ``"HALF"``."""
    name = getattr(value, "name", None)
    return str(name if isinstance(name, str) else value).rsplit(".", 1)[-1].upper()


def torch_dtype_for(trt_dtype: Any) -> torch.dtype:
    """The torch dtype of a TensorRT data type (given as the enum or its name)."""
    name = _enum_name(trt_dtype)
    if name not in _TORCH_DTYPES:
        raise TypeError(f"TensorRT data type {name} has no torch equivalent this engine handles")
    return _TORCH_DTYPES[name]


def write_atomically(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(scratch, "wb") as f:
            f.write(data)
        os.replace(scratch, path)
    finally:
        with contextlib.suppress(OSError):
            scratch.unlink()


def parser_error_line(errors: Sequence[str], file: str) -> str:
    """The ONNX parser's errors as one line."""
    if not errors:
        return f"TensorRT's ONNX parser rejected {file} without saying why"
    first = " ".join(str(errors[0]).split())
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"TensorRT's ONNX parser rejected {file}: {first}{more}"


def remove_onnx(folder: Path) -> None:
    """Delete the exported ONNX model and its external weights from ``folder``."""
    for file in folder.glob(f"{ONNX_FILE}*"):
        with contextlib.suppress(OSError):
            file.unlink()


# --------------------------------------------------------------------------------------------
# TensorRT: ONNX → plan


def export_onnx(module: torch.nn.Module, example: Sequence[torch.Tensor], folder: Path, batches: Sequence[int]) -> Path:
    """The ONNX model TensorRT parses: ``folder/pass.onnx`` (weights in ``pass.onnx.data``)."""
    from vedit.runtime.onnx_export import export_pass

    return export_pass(module, tuple(example), Path(folder) / ONNX_FILE, batches=tuple(batches))


_trt_logger: Any = None


def _logger(trt: Any) -> Any:
    """One TensorRT logger for the process (TensorRT warns when builders and runtimes get
    different ones); it keeps the errors TensorRT reports, for the exception's message, and
    drops the rest."""
    global _trt_logger
    if _trt_logger is None:

        class _Errors(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg):
                if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                    self.errors = [*self.errors[-9:], " ".join(str(msg).split())]

        _trt_logger = _Errors()
    return _trt_logger


def _use_timing_cache(config: Any, path: Path) -> None:
    """Give the builder the timing cache saved at ``path`` (an empty one when there is none or
    it does not fit this TensorRT or GPU)."""
    data = b""
    with contextlib.suppress(OSError):
        data = path.read_bytes()
    if data:
        with contextlib.suppress(Exception):
            cache = config.create_timing_cache(data)
            if cache is not None and config.set_timing_cache(cache, False):
                return
    config.set_timing_cache(config.create_timing_cache(b""), False)  # False: reject a mismatched cache


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    profile: dict[str, tuple[tuple[int, ...], ...]],
    precision: str,
    *,
    timing_cache: Path,
    device: torch.device,
) -> None:
    """Parse ``onnx_path`` and write the serialized engine to ``plan_path``."""
    import tensorrt as trt

    logger = _logger(trt)
    logger.errors = []
    with torch.cuda.device(device):
        builder = trt.Builder(logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, logger)
        # From the file, not from bytes: the parser then finds pass.onnx.data beside it.
        if not parser.parse_from_file(str(onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError(parser_error_line(errors, onnx_path.name))

        config = builder.create_builder_config()
        free, _ = torch.cuda.mem_get_info(device)
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes(free))
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif precision == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)
        else:
            config.set_flag(trt.BuilderFlag.TF32)

        shapes = builder.create_optimization_profile()
        dynamic = 0
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            if all(d >= 0 for d in tuple(tensor.shape)):
                continue  # fixed in the graph: nothing to choose
            if tensor.name not in profile:
                raise RuntimeError(
                    f"the ONNX graph's input {tensor.name} has a dynamic shape the profile does not cover"
                )
            shapes.set_shape(tensor.name, *profile[tensor.name])
            dynamic += 1
        if dynamic:
            config.add_optimization_profile(shapes)

        _use_timing_cache(config, timing_cache)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            reason = logger.errors[-1] if logger.errors else "see TensorRT's log"
            raise RuntimeError(f"TensorRT could not build the engine: {reason}")
        with open(plan_path, "wb") as f:
            f.write(serialized)
        # Shared by later builds of every pass on this GPU generation; losing it costs time only.
        with contextlib.suppress(OSError):
            write_atomically(timing_cache, config.get_timing_cache().serialize())


class PlanRunner:
    """Runs a deserialized engine on torch tensors: ``runner(*inputs)`` returns ε, or the
    keyframe pass's tuple, as the pass module would.

    ``input_names`` and ``output_names`` are the pass's; inputs the ONNX export pruned (unused by
    the graph) are not engine inputs and are skipped by name.
    """

    def __init__(
        self,
        engine: Any,
        context: Any,
        input_names: Sequence[str],
        output_names: Sequence[str],
        device: torch.device,
        *,
        keep: tuple = (),
    ):
        self.engine = engine
        self.context = context
        self.device = device
        self._keep = keep  # the runtime must outlive its engine
        io = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = {n for n in io if _enum_name(engine.get_tensor_mode(n)) == "INPUT"}
        outputs = {n for n in io if n not in inputs}
        unknown = sorted(inputs - set(input_names))
        if unknown:
            raise RuntimeError(f"the engine wants inputs the pass does not have: {', '.join(unknown)}")
        missing = [n for n in output_names if n not in outputs]
        if missing:
            raise RuntimeError(f"the engine lacks the pass's outputs {', '.join(missing)}")
        self.arity = len(input_names)
        self.inputs = [
            (index, name, torch_dtype_for(engine.get_tensor_dtype(name)))
            for index, name in enumerate(input_names)
            if name in inputs
        ]
        self.outputs = [(name, torch_dtype_for(engine.get_tensor_dtype(name))) for name in output_names]

    def _stream(self) -> int:
        return torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0

    def __call__(self, *inputs: torch.Tensor):
        if len(inputs) != self.arity:
            raise TypeError(f"the engine takes {self.arity} inputs, not {len(inputs)}")
        place = torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
        with place:
            bound = []
            for index, name, dtype in self.inputs:
                x = inputs[index].to(device=self.device, dtype=dtype).contiguous()
                if x.data_ptr() % ALIGNMENT:
                    x = x.clone()
                shape = tuple(x.shape)
                if not self.context.set_input_shape(name, shape):
                    raise ValueError(f"the TensorRT engine was not built for {name} of shape {list(shape)}")
                if not self.context.set_tensor_address(name, x.data_ptr()):
                    raise RuntimeError(f"TensorRT refused the address of input {name}")
                bound.append(x)
            results = []
            for name, dtype in self.outputs:
                shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise RuntimeError(f"TensorRT cannot tell the shape of output {name} ({list(shape)})")
                y = torch.empty(shape, dtype=dtype, device=self.device)
                if not self.context.set_tensor_address(name, y.data_ptr()):
                    raise RuntimeError(f"TensorRT refused the address of output {name}")
                results.append(y)
            if not self.context.execute_async_v3(self._stream()):
                raise RuntimeError("TensorRT could not run the engine")
            del bound  # safe: later work on this stream cannot reuse the memory before the engine ran
        return results[0] if len(results) == 1 else tuple(results)


def load_plan(
    plan_path: Path, input_names: Sequence[str], output_names: Sequence[str], device: torch.device
) -> PlanRunner:
    """Deserialize the plan at ``plan_path`` onto ``device``."""
    import tensorrt as trt

    with torch.cuda.device(device):
        runtime = trt.Runtime(_logger(trt))
        engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {plan_path.name} (built by another TensorRT or GPU?)")
        context = engine.create_execution_context()
        if context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of GPU memory?)")
    return PlanRunner(engine, context, input_names, output_names, device, keep=(runtime,))


class TensorRT:
    name = "tensorrt"
    description = "NVIDIA TensorRT engines built from the passes' ONNX export (one per pass, cached)"
    dynamic_batch = True

    def unavailable_reason(self) -> str | None:
        return unavailable("tensorrt", "tensorrt")

    def build(self, module: Any, example: tuple[torch.Tensor, ...], target: Any) -> Callable:
        require_cuda(target, self.name)
        precision = precision_for(target.dtype)
        names = tuple(module.input_names)
        outputs = list(module.output_names())
        profile = profile_shapes(module.name, names, example, target.batches)
        parts = key_parts(
            target, self.name, names, profile,
            tensorrt=library_version("tensorrt"), precision=precision, onnx_opset=str(_onnx_opset()),
        )  # fmt: skip
        timing = timing_cache_path(target.cache.root, parts.get("compute_capability", "none"))

        def build(folder: Path) -> None:  # the engine cache says when it starts and how long it took
            try:
                onnx_path = export_onnx(module, example, folder, target.batches)
                build_plan(onnx_path, folder / PLAN_FILE, profile, precision, timing_cache=timing, device=target.device)
            finally:
                remove_onnx(folder)  # large, and the plan is the whole entry

        def load(folder: Path) -> PlanRunner:
            plan = folder / PLAN_FILE
            return load_once(folder, parts, target.device, lambda: load_plan(plan, names, outputs, target.device))

        label = f"{precision} TensorRT engine for the {target.pass_name} pass"
        return target.cache.load_or_build(parts, target.IDENTITY, build, load, label=label)


def _onnx_opset() -> int:
    from vedit.runtime.onnx_export import OPSET

    return OPSET


@hookimpl
def register_engines(register):
    register(TensorRT())
