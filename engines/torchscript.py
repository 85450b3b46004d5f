"""Engine ``torchscript``: each pass traced with ``torch.jit.trace`` and frozen, one module per
pass and shape, kept in the engine cache."""

from __future__ import annotations

import warnings

import torch

from vedit.plugins.hookspecs import hookimpl


class TorchScript:
    name = "torchscript"
    description = "TorchScript: each pass traced and frozen (weights folded in), cached in the engine cache"

    def build(self, module, example, target):
        parts = target.parts(self.name, [x.shape for x in example])

        def make(folder):
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # diffusers' shape checks warn once per trace
                traced = torch.jit.trace(module, example, check_trace=False)
                frozen = torch.jit.freeze(traced.eval())
                torch.jit.save(frozen, str(folder / "pass.pt"))

        def load(folder):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, still works
                return torch.jit.load(str(folder / "pass.pt"), map_location=target.device)

        scripted = target.cache.load_or_build(
            parts, target.IDENTITY, make, load, label=f"{self.name} {target.pass_name} pass"
        )

        def run(*inputs):
            with torch.inference_mode():
                return scripted(*inputs)

        return run


@hookimpl
def register_engines(register):
    register(TorchScript())
