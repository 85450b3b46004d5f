"""Engines ``tensorrt`` and ``torch-tensorrt``: a UNet pass compiled by NVIDIA TensorRT.

``tensorrt`` exports the pass to ONNX (:func:`vedit.runtime.onnx_export.export_pass`), has TensorRT's
ONNX parser read it and builds one engine ("plan") per pass whose optimisation profile spans
every batch size of the run; the plan is the cache entry. ``torch-tensorrt`` takes the other
route: ``torch.export`` then Torch-TensorRT's dynamo compiler, saved as an ExportedProgram.

Neither library is imported when this module is: the helpers that decide shapes, precisions and
cache keys are plain Python (and tested without a GPU); the code that needs TensorRT imports it
when it runs.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import json
import os
import uuid
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vedit.plugins.hookspecs import hookimpl

ONNX_FILE = "pass.onnx"
PLAN_FILE = "pass.plan"
PROGRAM_FILE = "pass.ep"
ALIGNMENT = 256  # bytes; TensorRT wants its I/O addresses aligned to this
GIB = 1 << 30

# Inputs whose first dimension follows the batch: the frame count times this many rows.
# (latents and text carry every branch of every frame; the blend weights one row per frame.)
_BATCHED_ROWS = {"latents": "batch", "text": "batch", "weights": "frames", "partners": "frames"}

_PRECISIONS = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}

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


def rows_per_frame(pass_name: str) -> int:
    """Batch rows per frame: the plain pass runs one branch, the others three."""
    return 1 if pass_name == "plain" else 3


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

    Batched inputs span the smallest to the largest batch, optimised for the largest (the full
    chunk most calls have); every other input (t, flags, the keyframes' records) is fixed at its
    example shape.
    """
    if len(input_names) != len(example):
        raise ValueError(f"the {pass_name} pass names {len(input_names)} inputs but the example has {len(example)}")
    low, high = batch_range(pass_name, example, batches)
    per = rows_per_frame(pass_name)
    profile = {}
    for name, tensor in zip(input_names, example):
        shape = tuple(int(d) for d in tensor.shape)
        kind = _BATCHED_ROWS.get(name)
        if kind is None:
            profile[name] = (shape, shape, shape)
            continue
        step = 1 if kind == "batch" else per
        rows = (low // step, high // step, high // step)
        profile[name] = tuple((r, *shape[1:]) for r in rows)  # type: ignore[assignment]
    return profile


def precision_for(dtype: torch.dtype) -> str:
    """The TensorRT precision a model of ``dtype`` is built in."""
    if dtype not in _PRECISIONS:
        raise ValueError(f"TensorRT builds fp16, bf16 or fp32 models, not {str(dtype).removeprefix('torch.')}")
    return _PRECISIONS[dtype]


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


def workspace_bytes(free_bytes: int) -> int:
    """The builder's workspace pool: half the free GPU memory, between 1 and 16 GiB."""
    return int(min(16 * GIB, max(GIB, free_bytes // 2)))


def remove_onnx(folder: Path) -> None:
    """Delete the exported ONNX model and its external weights from ``folder``."""
    for file in folder.glob(f"{ONNX_FILE}*"):
        with contextlib.suppress(OSError):
            file.unlink()


def dynamic_shapes(
    module: torch.nn.Module, input_names: Sequence[str], profile: dict[str, tuple[tuple[int, ...], ...]]
) -> dict[str, Any] | None:
    """``torch.export`` dynamic shapes for the profile: one ``frames`` dimension that the batched
    inputs share (latents and text have rows-per-frame times as many rows as the weights), keyed
    by the names of ``module.forward``'s parameters (a ``*records`` parameter takes a tuple).
    None when the profile is one shape."""
    from torch.export import Dim

    batched = [n for n in input_names if n in _BATCHED_ROWS and profile[n][0] != profile[n][2]]
    if not batched:
        return None
    per = rows_per_frame(getattr(module, "name", ""))

    def frames_of(name: str, rows: int) -> int:
        return rows // per if _BATCHED_ROWS[name] == "batch" else rows

    first = batched[0]
    frames = Dim("frames", min=frames_of(first, profile[first][0][0]), max=frames_of(first, profile[first][2][0]))
    batch = frames if per == 1 else per * frames
    specs = [
        None if name not in _BATCHED_ROWS else {0: batch if _BATCHED_ROWS[name] == "batch" else frames}
        for name in input_names
    ]
    shapes: dict[str, Any] = {}
    position = 0
    for parameter in inspect.signature(module.forward).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            shapes[parameter.name] = tuple(specs[position:])
            position = len(specs)
        elif position < len(specs):
            shapes[parameter.name] = specs[position]
            position += 1
    return shapes


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# --------------------------------------------------------------------------------------------
# Availability


def _library_version(name: str) -> str:
    return str(importlib.import_module(name).__version__)


_import_failures: dict[str, str | None] = {}


def _import_failure(name: str) -> str | None:
    """Why ``import name`` fails (first line), None when it works; asked once per process."""
    if name not in _import_failures:
        try:
            importlib.import_module(name)
            _import_failures[name] = None
        except (ImportError, OSError, RuntimeError, AttributeError) as error:  # a broken install
            _import_failures[name] = f"{type(error).__name__}: {_first_line(error)}"
    return _import_failures[name]


def _unavailable(module_name: str, pip_name: str) -> str | None:
    if importlib.util.find_spec(module_name) is None:
        return f"{module_name} is not installed (pip install {pip_name}; needs an NVIDIA GPU)"
    if not torch.cuda.is_available():
        return "needs an NVIDIA GPU with CUDA, and torch.cuda.is_available() is False"
    failure = _import_failure(module_name)
    if failure:
        return f"{module_name} is installed but does not import ({failure})"
    return None


def _require_cuda(target: Any, engine: str) -> None:
    if target.device.type != "cuda":
        raise RuntimeError(f"the {engine} engine runs on NVIDIA GPUs only; this run is on {target.device}")


# Entries loaded in this process. The runner asks a dynamic-batch engine for a build per batch
# shape; each of those finds the same entry, which is deserialized (weights onto the GPU) once.
_loaded: weakref.WeakValueDictionary[tuple[str, str, str], Any] = weakref.WeakValueDictionary()


def _load_once(folder: Path, parts: dict[str, str], device: torch.device, load: Callable[[], Any]) -> Any:
    key = (str(folder), json.dumps(parts, sort_keys=True), str(device))
    found = _loaded.get(key)
    if found is None:
        found = load()
        _loaded[key] = found
    return found


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
                raise RuntimeError(f"the ONNX graph's input {tensor.name} has a dynamic shape the profile does not cover")
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


def load_plan(plan_path: Path, input_names: Sequence[str], output_names: Sequence[str], device: torch.device) -> PlanRunner:
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
        return _unavailable("tensorrt", "tensorrt")

    def build(self, module: Any, example: tuple[torch.Tensor, ...], target: Any) -> Callable:
        _require_cuda(target, self.name)
        precision = precision_for(target.dtype)
        names = tuple(module.input_names)
        outputs = list(module.output_names())
        profile = profile_shapes(module.name, names, example, target.batches)
        parts = key_parts(
            target, self.name, names, profile,
            tensorrt=_library_version("tensorrt"), precision=precision, onnx_opset=str(_onnx_opset()),
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
            return _load_once(folder, parts, target.device, lambda: load_plan(plan, names, outputs, target.device))

        label = f"{precision} TensorRT engine for the {target.pass_name} pass"
        return target.cache.load_or_build(parts, target.IDENTITY, build, load, label=label)


def _onnx_opset() -> int:
    from vedit.runtime.onnx_export import OPSET

    return OPSET


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
        super().__init__(_first_line(error))
        self.compiled = compiled


class TorchTensorRT:
    name = "torch-tensorrt"
    description = "Torch-TensorRT: torch.export then TensorRT engines for what TensorRT supports (cached)"
    dynamic_batch = True

    def unavailable_reason(self) -> str | None:
        return _unavailable("torch_tensorrt", "torch-tensorrt")

    def build(self, module: Any, example: tuple[torch.Tensor, ...], target: Any) -> Callable:
        _require_cuda(target, self.name)
        precision = precision_for(target.dtype)
        names = tuple(module.input_names)
        profile = profile_shapes(module.name, names, example, target.batches)
        parts = key_parts(
            target, self.name, names, profile,
            torch_tensorrt=_library_version("torch_tensorrt"), tensorrt=_library_version("tensorrt"),
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
            return _load_once(folder, parts, target.device, lambda: load_program(program, target.device))

        label = f"{precision} Torch-TensorRT program for the {target.pass_name} pass"
        in_memory = ("memory", json.dumps(parts, sort_keys=True), str(target.device))
        kept = _loaded.get(in_memory)
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
            _loaded[in_memory] = kept
            return kept


@hookimpl
def register_engines(register):
    register(TensorRT())
    register(TorchTensorRT())
