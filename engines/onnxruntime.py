"""Engine ``onnxruntime``: each pass exported with ``torch.onnx`` and run by ONNX Runtime.

On the CPU the inputs go in as NumPy views of the tensors. With the CUDA execution provider the
inputs and outputs stay on the GPU: they are bound by pointer (I/O binding), so nothing is
copied through the host. One export per pass and shape, kept in the engine cache.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch

from vedit.config import option_value
from vedit.plugins.hookspecs import hookimpl
from vedit.runtime.onnx_export import OPSET, export_pass

_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(bool)": np.bool_,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bfloat16)": None}  # fmt: skip
_TORCH = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(bool)": torch.bool,
          "tensor(int64)": torch.int64, "tensor(int32)": torch.int32, "tensor(bfloat16)": torch.bfloat16}  # fmt: skip


def providers_for(device: torch.device) -> list:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError("onnxruntime has no CUDA execution provider here: pip install onnxruntime-gpu")
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntime:
    name = "onnxruntime"
    description = "ONNX Runtime: each pass exported to ONNX (CPU, or CUDA with I/O binding)"

    def unavailable_reason(self) -> str | None:
        for module in ("onnxruntime", "onnx", "onnxscript"):
            if importlib.util.find_spec(module) is None:
                return "needs onnxruntime, onnx and onnxscript: pip install 'vedit[onnx]'"
        return None

    def build(self, module, example, target):
        import onnxruntime as ort

        providers = providers_for(target.device)
        parts = target.parts(self.name, [x.shape for x in example], onnxruntime=ort.__version__, opset=str(OPSET))

        def make(folder):
            export_pass(module, example, folder / "pass.onnx")

        def load(folder):
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            return ort.InferenceSession(str(folder / "pass.onnx"), options, providers=providers)

        session = target.cache.load_or_build(
            parts, target.IDENTITY, make, load, label=f"{self.name} {target.pass_name} pass"
        )
        names = list(module.input_names)
        wanted = {i.name for i in session.get_inputs()}  # the exporter drops inputs a pass does not use
        outputs = session.get_outputs()
        many = target.spec.returns_records
        if target.device.type == "cuda":
            if any(i.type == "tensor(bfloat16)" for i in session.get_inputs()):
                raise RuntimeError(
                    f"onnxruntime's I/O binding takes fp16 or fp32 here, not bf16: pass {option_value('dtype', 'fp16')}"
                )
            return _bound(session, names, wanted, outputs, target.device, many)

        def run(*inputs):
            feed = {n: x.detach().contiguous().numpy() for n, x in zip(names, inputs) if n in wanted}
            result = [torch.from_numpy(r) for r in session.run(None, feed)]
            return tuple(result) if many else result[0]

        return run


def _bound(session, names, wanted, outputs, device: torch.device, many: bool):
    """A callable that runs ``session`` on CUDA tensors in place (I/O binding, no host copies)."""
    types = {i.name: i.type for i in session.get_inputs()}
    index = device.index or 0

    def run(*inputs):
        binding = session.io_binding()
        kept = []
        for name, x in zip(names, inputs):
            if name not in wanted:
                continue
            x = x.to(device=device, dtype=_TORCH[types[name]]).contiguous()
            kept.append(x)
            binding.bind_input(name, "cuda", index, _NUMPY[types[name]] or np.float16, tuple(x.shape), x.data_ptr())
        result = []
        for out in outputs:
            y = torch.empty(tuple(out.shape), dtype=_TORCH[out.type], device=device)
            result.append(y)
            binding.bind_output(out.name, "cuda", index, _NUMPY[out.type] or np.float16, tuple(y.shape), y.data_ptr())
        session.run_with_iobinding(binding)
        del kept
        return tuple(result) if many else result[0]

    return run


@hookimpl
def register_engines(register):
    register(OnnxRuntime())
