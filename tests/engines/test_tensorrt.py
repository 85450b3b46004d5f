"""The TensorRT engines (vedit_engines.tensorrt and, sharing its ONNX export fixture,
vedit_engines.torch_tensorrt): the ONNX graph they build from, the plan runner (against a stand-in TensorRT
context on the CPU), builds and the cache with TensorRT stood in for and, where TensorRT and a GPU are
present, real builds compared with the eager passes."""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import math
import shutil
import types

import pytest
import torch

from helpers.tensorrt import (
    BATCHES,
    fake_gpu,  # noqa: F401  (fixtures, used by name)
    fake_inputs,
    make_target,
)
from vedit import plugins
from vedit.method.passes import KeyframePass, PlainPass, PropagationPass
from vedit.method.unet import ControlledUNet
from vedit.model.loading import load_model
from vedit.runtime.engine_cache import EngineCache
from vedit.runtime.runner import BuildTarget
from vedit_engines import _tensorrt_common as trt_common
from vedit_engines import tensorrt as trt_engine
from vedit_engines import torch_tensorrt as torch_trt_engine
from vedit_engines._tensorrt_common import precision_for, profile_shapes, timing_cache_path
from vedit_engines.tensorrt import (
    PlanRunner,
    TensorRT,
    parser_error_line,
    remove_onnx,
    torch_dtype_for,
    write_atomically,
)
from vedit_engines.torch_tensorrt import TorchTensorRT, dynamic_shapes
from vedit_plugins.editors.pnp import CONV_LAYERS, QK_LAYERS

PROMPTS = ["a photo of a cat", "", "a watercolor of a dog"]  # source, uncond, cond


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm())


def pass_inputs(sd, frames: int, seed: int, *, records=(), device="cpu", dtype=torch.float32):
    """Inputs of the frames/keyframe pass (no records) or the propagation pass (with records)."""
    gen = torch.Generator().manual_seed(seed)
    text = sd.encode_prompt(PROMPTS).to(device, dtype).repeat_interleave(frames, 0)  # branch-major
    latents = torch.randn(3 * frames, 4, 8, 8, generator=gen).to(device, dtype)
    t = torch.tensor(501, device=device)
    flags = torch.tensor([True, False], device=device)
    if not records:
        return (latents, t, text, flags)
    weights = torch.rand(frames, generator=gen).to(device, dtype)
    return (latents, t, text, flags, weights, *records)


def keyframe_records(sd, keyframe: KeyframePass, **kw) -> tuple[torch.Tensor, ...]:
    """Per block, features (2, seq, dim) and outputs (6, seq, dim) of two keyframes."""
    with torch.no_grad():
        out = keyframe(*pass_inputs(sd, 2, seed=1, **kw))
    return tuple(out[1:])


# --------------------------------------------------------------------------------------------
# The tiny model's propagation pass and its ONNX export (shared: exporting takes ~30 s)


@pytest.fixture(scope="module")
def sd():
    return load_model("tiny@3", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def controlled(sd):
    with ControlledUNet(sd.unet, conv_layers=CONV_LAYERS, qk_layers=QK_LAYERS) as controlled:
        yield controlled


@pytest.fixture(scope="module")
def propagation(controlled):
    return PropagationPass(controlled).eval()


@pytest.fixture(scope="module")
def records(sd, controlled):
    return keyframe_records(sd, KeyframePass(controlled).eval())


@pytest.fixture(scope="module")
def examples(sd, records):
    """Propagation inputs at batch 12 (4 frames) and batch 9 (3 frames)."""
    return {12: pass_inputs(sd, 4, seed=2, records=records), 9: pass_inputs(sd, 3, seed=5, records=records)}


@pytest.fixture(scope="module")
def eager(propagation, examples):
    with torch.no_grad():
        return {batch: propagation(*inputs) for batch, inputs in examples.items()}


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory, propagation, examples):
    """What the tensorrt engine's build step hands to TensorRT's ONNX parser."""
    folder = tmp_path_factory.mktemp("tensorrt-onnx")
    return trt_engine.export_onnx(propagation, examples[12], folder, BATCHES)


@pytest.mark.slow
def test_the_onnx_graph_is_valid_and_matches_the_eager_pass_at_two_batch_sizes(propagation, examples, eager, onnx_file):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    assert onnx_file.name == "pass.onnx" and onnx_file.with_name("pass.onnx.data").is_file()
    onnx.checker.check_model(str(onnx_file))  # by path: the external weights are checked too

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    assert [o.name for o in session.get_outputs()] == ["eps"]
    for batch, inputs in examples.items():
        feed = {n: x.numpy() for n, x in zip(propagation.input_names, inputs) if n in wanted}
        (eps,) = session.run(["eps"], feed)
        assert eps.shape == (batch, 4, 8, 8)
        assert relative_error(torch.from_numpy(eps), eager[batch]) < 1e-4, batch


@pytest.mark.slow
def test_the_onnx_inputs_are_what_the_profile_describes(propagation, examples, onnx_file):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(onnx_file), load_external_data=False)
    profile = profile_shapes("propagation", propagation.input_names, examples[12], BATCHES)
    graph_inputs = {i.name: i for i in model.graph.input}
    assert set(graph_inputs) <= set(propagation.input_names)
    assert {"latents", "t", "text", "flags", "weights"} <= set(graph_inputs)
    elem = onnx.TensorProto
    assert graph_inputs["t"].type.tensor_type.elem_type == elem.INT64
    assert graph_inputs["flags"].type.tensor_type.elem_type == elem.BOOL
    assert graph_inputs["latents"].type.tensor_type.elem_type == elem.FLOAT
    for name, value in graph_inputs.items():
        dims = value.type.tensor_type.shape.dim
        low, _, high = profile[name]
        assert len(dims) == len(low), name
        for axis, dim in enumerate(dims):
            if low[axis] == high[axis]:
                assert dim.dim_value == low[axis], (name, axis)
            else:  # the profile varies exactly the dimensions the graph leaves symbolic
                assert dim.dim_param and not dim.dim_value, (name, axis)


@pytest.mark.slow
def test_export_program_spans_the_profile_for_torch_tensorrt(propagation, examples, eager):
    profile = profile_shapes("propagation", propagation.input_names, examples[12], BATCHES)
    program = torch_trt_engine.export_program(propagation, examples[12], profile)
    ranges = sorted((int(r.lower), int(r.upper)) for r in program.range_constraints.values())
    assert ranges == [(3, 4), (9, 12)]  # frames, and the batch 3·frames
    module = program.module()
    with torch.no_grad():
        for batch in (9, 12):
            assert relative_error(module(*examples[batch]), eager[batch]) < 1e-5


def test_precision_and_dtypes():
    assert precision_for(torch.float16) == "fp16"
    assert precision_for(torch.bfloat16) == "bf16"
    assert precision_for(torch.float32) == "fp32"
    with pytest.raises(ValueError, match="not float64"):
        precision_for(torch.float64)
    assert torch_dtype_for("DataType.HALF") is torch.float16
    assert torch_dtype_for("FLOAT") is torch.float32
    assert torch_dtype_for("DataType.BF16") is torch.bfloat16
    assert torch_dtype_for(types.SimpleNamespace(name="INT64")) is torch.int64  # the enum itself
    assert torch_dtype_for("DataType.INT32") is torch.int32  # t, when TensorRT narrows it
    assert torch_dtype_for("DataType.BOOL") is torch.bool
    with pytest.raises(TypeError, match="FP8"):
        torch_dtype_for("DataType.FP8")


def test_dynamic_shapes_share_one_frame_dimension(propagation, examples):
    profile = profile_shapes("propagation", propagation.input_names, examples[12], BATCHES)
    shapes = dynamic_shapes(propagation, propagation.input_names, profile)
    assert list(shapes) == ["latents", "t", "text", "flags", "weights", "records"]
    frames = shapes["weights"][0]
    assert (frames.min, frames.max) == (3, 4)
    assert (shapes["latents"][0].min, shapes["latents"][0].max) == (9, 12)
    assert shapes["text"][0].root is frames and shapes["latents"][0].root is frames
    assert shapes["t"] is None and shapes["flags"] is None
    assert shapes["records"] == (None,) * (len(examples[12]) - 5)

    plain = PlainPass.__new__(PlainPass)  # only its name and forward's signature are read
    names, example = fake_inputs("plain", 4)
    plain_shapes = dynamic_shapes(plain, names, profile_shapes("plain", names, example, (2, 4)))
    assert (plain_shapes["latents"][0].min, plain_shapes["latents"][0].max) == (2, 4)
    assert plain_shapes["latents"][0] is plain_shapes["text"][0]
    assert dynamic_shapes(plain, names, profile_shapes("plain", names, example, (4,))) is None


# --------------------------------------------------------------------------------------------
# Files


def test_timing_cache_is_written_atomically(tmp_path, monkeypatch):
    path = timing_cache_path(tmp_path / "engines", "8.9")
    assert path == tmp_path / "engines" / "tensorrt-timing-8.9.cache"
    assert timing_cache_path(tmp_path, "9.0", "torch-tensorrt").name == "torch-tensorrt-timing-9.0.cache"
    write_atomically(path, b"first")
    write_atomically(path, memoryview(b"second"))
    assert path.read_bytes() == b"second"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary files left

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(trt_engine.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, b"third")
    assert path.read_bytes() == b"second"  # the old cache is intact
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_remove_onnx_keeps_only_the_plan(tmp_path):
    for name in ("pass.onnx", "pass.onnx.data", "pass.plan"):
        (tmp_path / name).write_bytes(b"x")
    remove_onnx(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pass.plan"]


def test_parser_errors_are_one_line():
    errors = ["In node 12 (importConv): INVALID_NODE:\n  Assertion failed: bias", "second", "third"]
    line = parser_error_line(errors, "pass.onnx")
    assert "\n" not in line
    assert line == (
        "TensorRT's ONNX parser rejected pass.onnx: "
        "In node 12 (importConv): INVALID_NODE: Assertion failed: bias (and 2 more)"
    )
    assert parser_error_line([], "pass.onnx") == "TensorRT's ONNX parser rejected pass.onnx without saying why"


# --------------------------------------------------------------------------------------------
# Registration and availability


def test_both_engines_register_and_say_why_they_cannot_run_here():
    from vedit.plugins.manager import DEFAULT_PLUGINS

    assert DEFAULT_PLUGINS["tensorrt"] == "vedit_engines.tensorrt"
    assert DEFAULT_PLUGINS["torch_tensorrt"] == "vedit_engines.torch_tensorrt"
    items = plugins.registered("engine")
    assert {"tensorrt", "torch-tensorrt"} <= set(items)
    for name, module in (("tensorrt", "tensorrt"), ("torch-tensorrt", "torch_tensorrt")):
        entry = items[name]
        assert entry.plugin == module  # one module per engine
        assert entry.item.name == name and entry.item.dynamic_batch is True
        assert entry.item.description and "\n" not in entry.item.description
        reason = entry.unavailable_reason()
        if importlib.util.find_spec(module) is None:
            assert reason == f"{module} is not installed (pip install {name}; needs an NVIDIA GPU)"
        elif not torch.cuda.is_available():
            assert "CUDA" in reason
        if reason is not None:
            assert isinstance(reason, str) and "\n" not in reason


# --------------------------------------------------------------------------------------------
# The plan runner, against a stand-in for TensorRT's engine and context working on CPU memory


def view(address: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The tensor at a raw address, as TensorRT reads and writes its bindings."""
    count = math.prod(shape)
    size = count * torch.empty((), dtype=dtype).element_size()
    return torch.frombuffer((ctypes.c_char * size).from_address(address), dtype=dtype, count=count).reshape(shape)


class FakeEngine:
    def __init__(self, inputs: dict[str, str], outputs: dict[str, str]):
        self.io = {n: ("TensorIOMode.INPUT", d) for n, d in inputs.items()}
        self.io.update({n: ("TensorIOMode.OUTPUT", d) for n, d in outputs.items()})
        self.num_io_tensors = len(self.io)

    def get_tensor_name(self, index):
        return list(self.io)[index]

    def get_tensor_mode(self, name):
        return self.io[name][0]

    def get_tensor_dtype(self, name):
        return self.io[name][1]


class FakeContext:
    """Computes ε like an engine would: from the memory at the addresses it was given."""

    def __init__(self, engine: FakeEngine, compute, max_rows: int):
        self.engine, self.compute, self.max_rows = engine, compute, max_rows
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.streams: list[int] = []
        self.seen: dict[str, torch.Tensor] = {}

    def set_input_shape(self, name, shape):
        assert self.engine.get_tensor_mode(name).endswith("INPUT"), name  # KeyError for unknown names
        if name == "latents" and shape[0] > self.max_rows:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shapes["latents"]  # ε has the latents' shape

    def set_tensor_address(self, name, address):
        assert name in self.engine.io, name
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream):
        self.streams.append(stream)
        dtypes = {n: torch_dtype_for(self.engine.get_tensor_dtype(n)) for n in self.engine.io}
        self.seen = {n: view(self.addresses[n], self.shapes[n], dtypes[n]).clone() for n in self.shapes}
        eps = self.compute(self.seen)
        view(self.addresses["eps"], tuple(eps.shape), dtypes["eps"]).copy_(eps)
        return True


@pytest.fixture
def fake_plan(propagation, examples):
    names = list(propagation.input_names)
    pruned = names[-1]  # as if the ONNX export had dropped an input the graph does not read
    # An engine that takes t as INT32 and the weights in HALF, and gives ε in HALF: what the
    # runner hands it and returns must follow the engine's dtypes, not the caller's.
    kinds = {"flags": "BOOL", "t": "DataType.INT32", "weights": "DataType.HALF"}
    inputs = {n: kinds.get(n, "DataType.FLOAT") for n in names if n != pruned}
    engine = FakeEngine(inputs, {"eps": "DataType.HALF"})

    def compute(seen):
        args = [seen[n].long() if n == "t" else seen[n].float() if n == "weights" else seen[n] for n in names[:-1]]
        with torch.no_grad():
            return propagation(*args, examples[9][-1]).half()

    context = FakeContext(engine, compute, max_rows=12)
    runner = PlanRunner(engine, context, names, ["eps"], torch.device("cpu"))
    return runner, context, pruned


def test_plan_runner_binds_inputs_by_name_and_returns_eps(fake_plan, examples, eager):
    runner, context, pruned = fake_plan
    inputs = examples[9]
    eps = runner(*inputs)
    assert eps.shape == (9, 4, 8, 8) and eps.dtype == torch.float16  # allocated as the engine gives it
    assert relative_error(eps, eager[9]) < 2e-3  # only fp16 rounding of the weights and of ε
    assert pruned not in context.shapes and pruned not in context.addresses  # skipped by name
    assert context.shapes["t"] == () and context.shapes["weights"] == (3,)
    assert context.seen["t"].dtype == torch.int32 and int(context.seen["t"]) == 501
    assert torch.equal(context.seen["weights"], inputs[4].half())  # converted before binding
    assert torch.equal(context.seen["latents"], inputs[0]) and torch.equal(context.seen["text"], inputs[2])
    assert torch.equal(context.seen["flags"], torch.tensor([True, False]))
    assert context.streams == [0]
    # Another batch in the same profile, through the same context.
    assert relative_error(runner(*examples[12]), eager[12]) < 2e-3
    assert context.shapes["latents"] == (12, 4, 8, 8) and context.shapes["weights"] == (4,)


def test_plan_runner_refuses_batches_outside_the_profile_and_foreign_engines(fake_plan, sd, records):
    runner, _, _ = fake_plan
    too_many = pass_inputs(sd, 5, seed=0, records=records)
    with pytest.raises(ValueError, match=r"not built for latents of shape \[15, 4, 8, 8\]"):
        runner(*too_many)
    with pytest.raises(TypeError, match="takes"):
        runner(*too_many[:4])
    engine = FakeEngine({"latents": "FLOAT", "mask": "FLOAT"}, {"eps": "FLOAT"})
    with pytest.raises(RuntimeError, match="wants inputs the pass does not have: mask"):
        PlanRunner(engine, None, ["latents", "t"], ["eps"], torch.device("cpu"))
    engine = FakeEngine({"latents": "FLOAT"}, {"eps": "FLOAT"})
    with pytest.raises(RuntimeError, match="lacks the pass's outputs features_0"):
        PlanRunner(engine, None, ["latents"], ["eps", "features_0"], torch.device("cpu"))


# --------------------------------------------------------------------------------------------
# The build and the cache, with TensorRT's two calls stood in for


class Loaded:
    """What a stand-in load returns (an object, as a runner is: the engine keeps it weakly)."""

    def __init__(self, *what):
        self.what = what


@pytest.fixture
def stub_tensorrt(monkeypatch, onnx_file, fake_gpu):
    calls = {"export": 0, "build": [], "load": 0}
    versions = {"tensorrt": "10.3.0", "torch_tensorrt": "2.5.0"}

    def export(module, example, folder, batches):
        calls["export"] += 1
        for file in (onnx_file, onnx_file.with_name("pass.onnx.data")):
            shutil.copy(file, folder / file.name)
        return folder / "pass.onnx"

    def build_plan(onnx_path, plan_path, profile, precision, *, timing_cache, device):
        onnx = pytest.importorskip("onnx")
        model = onnx.load(str(onnx_path))  # with its external weights: both files are there
        calls["build"].append(
            {
                "inputs": [i.name for i in model.graph.input],
                "profile": profile,
                "precision": precision,
                "timing_cache": timing_cache,
                "device": device,
            }
        )
        if calls.get("fail"):
            raise RuntimeError("TensorRT could not build the engine: out of memory")
        plan_path.write_bytes(f"plan {precision}".encode())

    def load_plan(plan_path, input_names, output_names, device):
        calls["load"] += 1
        return Loaded(plan_path.read_bytes(), tuple(input_names), tuple(output_names))

    monkeypatch.setattr(trt_engine, "export_onnx", export)
    monkeypatch.setattr(trt_engine, "build_plan", build_plan)
    monkeypatch.setattr(trt_engine, "load_plan", load_plan)
    for engine_module in (trt_engine, torch_trt_engine):
        monkeypatch.setattr(engine_module, "library_version", lambda name: versions[name])
    return calls, versions


@pytest.mark.slow
def test_tensorrt_builds_once_and_then_loads_the_plan(tmp_path, stub_tensorrt, propagation, examples):
    calls, versions = stub_tensorrt
    messages: list[str] = []
    target = make_target(tmp_path, messages=messages)
    names = tuple(propagation.input_names)

    first = TensorRT().build(propagation, examples[12], target)
    assert first.what == (b"plan fp16", names, ("eps",))
    assert calls["export"] == 1 and len(calls["build"]) == 1
    built = calls["build"][0]
    assert built["precision"] == "fp16" and built["device"] == torch.device("cuda")
    assert built["profile"]["latents"] == ((9, 4, 8, 8), (12, 4, 8, 8), (12, 4, 8, 8))
    assert built["timing_cache"] == tmp_path / "engines" / "tensorrt-timing-9.0.cache"
    assert built["inputs"][:5] == ["latents", "t", "text", "flags", "weights"]
    assert messages[0] == (
        "building the fp16 TensorRT engine for the propagation pass (batches 9, 12); "
        "the engine cache keeps it for later runs"
    )
    assert messages[1].startswith("built the fp16 TensorRT engine for the propagation pass in ")
    assert len(messages) == 2
    entries = [p for p in (tmp_path / "engines").iterdir() if p.is_dir()]
    assert len(entries) == 1 and sorted(p.name for p in entries[0].iterdir()) == ["entry.json", "pass.plan"]

    # Asked again for another batch: the same entry, deserialized once in this process.
    again = TensorRT().build(propagation, examples[9], target)
    assert again is first and len(calls["build"]) == 1 and calls["load"] == 1
    # Another process (nothing loaded yet) loads the plan from the cache: nothing rebuilt.
    del first, again
    gc.collect()
    later = TensorRT().build(propagation, examples[9], target)
    assert later.what == (b"plan fp16", names, ("eps",)) and len(calls["build"]) == 1 and calls["load"] == 2
    assert len(messages) == 2  # loading from the cache says nothing

    # A new TensorRT makes the plan stale: rebuilt in place, with a message saying why.
    versions["tensorrt"] = "10.4.0"
    rebuilt = TensorRT().build(propagation, examples[12], target)
    assert len(calls["build"]) == 2 and calls["load"] == 3 and rebuilt is not later
    assert any("is stale (tensorrt 10.3.0 → 10.4.0)" in m for m in messages)
    assert len([p for p in (tmp_path / "engines").iterdir() if p.is_dir()]) == 1


@pytest.mark.slow
def test_tensorrt_build_failures_are_one_line_and_leave_no_entry(tmp_path, stub_tensorrt, propagation, examples):
    calls, _ = stub_tensorrt
    calls["fail"] = True
    with pytest.raises(RuntimeError, match="^TensorRT could not build the engine: out of memory$"):
        TensorRT().build(propagation, examples[12], make_target(tmp_path, messages=[]))
    assert [p.name for p in (tmp_path / "engines").iterdir() if p.is_dir()] == []
    with pytest.raises(RuntimeError, match="runs on NVIDIA GPUs only; this run is on cpu"):
        TensorRT().build(propagation, examples[12], make_target(tmp_path, device="cpu"))
    with pytest.raises(RuntimeError, match="runs on NVIDIA GPUs only"):
        TorchTensorRT().build(propagation, examples[12], make_target(tmp_path, device="cpu"))


@pytest.mark.slow
def test_torch_tensorrt_caches_its_program_or_keeps_it_in_memory(
    tmp_path, monkeypatch, stub_tensorrt, propagation, examples
):
    calls = {"compile": 0, "saved": [], "loaded": 0}
    compiled = object()
    save_error: list[Exception] = []

    monkeypatch.setattr(torch_trt_engine, "export_program", lambda module, example, profile: ("program", profile))

    def compile_program(program, example, names, profile, dtype, *, device, timing_cache):
        calls["compile"] += 1
        assert program == ("program", profile) and dtype is torch.float16
        assert timing_cache.name == "torch-tensorrt-timing-9.0.cache"
        return compiled

    def save_compiled(module, example, path, shapes):
        if save_error:
            raise save_error[0]
        assert module is compiled and shapes["weights"][0].max == 4
        path.write_bytes(b"program")
        calls["saved"].append(path.name)

    def load_program(path, device):
        calls["loaded"] += 1
        return Loaded(path.read_bytes())

    monkeypatch.setattr(torch_trt_engine, "compile_program", compile_program)
    monkeypatch.setattr(torch_trt_engine, "save_compiled", save_compiled)
    monkeypatch.setattr(torch_trt_engine, "load_program", load_program)
    messages: list[str] = []
    target = make_target(tmp_path, messages=messages)

    first = TorchTensorRT().build(propagation, examples[12], target)
    assert first.what == (b"program",)
    assert TorchTensorRT().build(propagation, examples[9], target) is first  # loaded once
    del first
    gc.collect()
    assert TorchTensorRT().build(propagation, examples[9], target).what == (b"program",)  # from the cache
    assert calls == {"compile": 1, "saved": ["pass.ep"], "loaded": 2}
    assert messages[0].startswith("building the fp16 Torch-TensorRT program for the propagation pass (batches 9, 12)")

    save_error.append(RuntimeError("cannot serialize a graph with Python callbacks\nmore detail"))
    other = make_target(tmp_path, batches=(6, 12), messages=messages)
    fn = TorchTensorRT().build(propagation, examples[12], other)
    assert isinstance(fn, torch_trt_engine._OnDevice) and fn.module is compiled and fn.device == torch.device("cuda")
    assert messages[-1] == (
        "the Torch-TensorRT program for the propagation pass cannot be saved (cannot serialize a graph with "
        "Python callbacks); it runs from memory for this run only"
    )
    assert calls["compile"] == 2 and calls["loaded"] == 2
    assert len([p for p in (tmp_path / "engines").iterdir() if p.is_dir()]) == 1  # nothing half-saved
    # Asked again for another batch in this run: the program in memory, not compiled again.
    assert TorchTensorRT().build(propagation, examples[9], other) is fn
    assert calls["compile"] == 2


# --------------------------------------------------------------------------------------------
# Real builds: TensorRT and an NVIDIA GPU


@pytest.fixture(scope="module")
def gpu_model():
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU with CUDA")
    sd = load_model("tiny@3", device="cuda", dtype="fp16")
    with ControlledUNet(sd.unet, conv_layers=CONV_LAYERS, qk_layers=QK_LAYERS) as controlled:
        yield sd, controlled


def gpu_target(sd, cache, name, batches, messages):
    return BuildTarget(
        pass_name=name,
        batches=batches,
        device=sd.device,
        dtype=sd.dtype,
        fingerprint=sd.fingerprint,
        cache=cache,
        message=messages.append,
        layers="test",
    )


def counting(monkeypatch, module, name):
    count = {"calls": 0}
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        count["calls"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return count


@pytest.mark.tensorrt
def test_tensorrt_engines_match_the_eager_passes_in_fp16(gpu_model, tmp_path, monkeypatch):
    sd, controlled = gpu_model
    gpu = {"device": "cuda", "dtype": torch.float16}
    builds = counting(monkeypatch, trt_engine, "build_plan")
    messages: list[str] = []
    cache = EngineCache(tmp_path / "engines", message=messages.append)
    keyframe, propagate = KeyframePass(controlled).eval(), PropagationPass(controlled).eval()

    key_inputs = {k: pass_inputs(sd, k, seed=k, **gpu) for k in (2, 3)}
    key_target = gpu_target(sd, cache, "keyframe", (6, 9), messages)
    run_key = TensorRT().build(keyframe, key_inputs[3], key_target)
    for inputs in key_inputs.values():
        got = run_key(*inputs)
        with torch.no_grad():
            want = keyframe(*inputs)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape and relative_error(g, w) < 1e-2

    recs = keyframe_records(sd, keyframe, **gpu)
    prop_inputs = {n: pass_inputs(sd, n, seed=10 + n, records=recs, **gpu) for n in (2, 4)}
    prop_target = gpu_target(sd, cache, "propagation", (6, 12), messages)
    run_prop = TensorRT().build(propagate, prop_inputs[4], prop_target)
    with torch.no_grad():
        wanted = {n: propagate(*inputs) for n, inputs in prop_inputs.items()}
    for n, inputs in prop_inputs.items():
        assert relative_error(run_prop(*inputs), wanted[n]) < 1e-2, n
    assert builds["calls"] == 2

    # A second build of each (a later run: nothing loaded yet) deserializes the cached plans.
    trt_common.loaded.clear()
    again = TensorRT().build(propagate, prop_inputs[2], prop_target)
    TensorRT().build(keyframe, key_inputs[2], key_target)
    assert builds["calls"] == 2
    assert relative_error(again(*prop_inputs[2]), wanted[2]) < 1e-2
    major, minor = torch.cuda.get_device_capability()
    assert (tmp_path / "engines" / f"tensorrt-timing-{major}.{minor}.cache").is_file()


@pytest.mark.tensorrt
def test_torch_tensorrt_matches_the_eager_propagation_pass_in_fp16(gpu_model, tmp_path, monkeypatch):
    pytest.importorskip("torch_tensorrt")
    sd, controlled = gpu_model
    gpu = {"device": "cuda", "dtype": torch.float16}
    compiles = counting(monkeypatch, torch_trt_engine, "compile_program")
    keyframe, propagate = KeyframePass(controlled).eval(), PropagationPass(controlled).eval()
    recs = keyframe_records(sd, keyframe, **gpu)
    inputs = {n: pass_inputs(sd, n, seed=20 + n, records=recs, **gpu) for n in (2, 4)}
    target = gpu_target(sd, EngineCache(tmp_path / "engines"), "propagation", (6, 12), [])
    run = TorchTensorRT().build(propagate, inputs[4], target)
    for n, x in inputs.items():
        with torch.no_grad():
            assert relative_error(run(*x), propagate(*x)) < 1e-2, n
    trt_common.loaded.clear()
    again = TorchTensorRT().build(propagate, inputs[2], target)
    assert compiles["calls"] == 1
    with torch.no_grad():
        assert relative_error(again(*inputs[2]), propagate(*inputs[2])) < 1e-2
