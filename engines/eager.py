"""Engine ``eager``: runs the pass modules in plain PyTorch (every device, every plugin)."""

from __future__ import annotations

import torch

from vedit.plugins.hookspecs import hookimpl


class Eager:
    name = "eager"
    description = "plain PyTorch: the pass modules run as written, nothing is built"

    def build(self, module, example, target):
        def run(*inputs):
            with torch.inference_mode():
                return module(*inputs)

        return run


@hookimpl
def register_engines(register):
    register(Eager())


@hookimpl(trylast=True)
def choose_engine(device):
    """``--engine auto``: see the README's engine table for the measurements behind this rule."""
    if getattr(device, "type", str(device)) == "cuda":
        return "tensorrt,compile"
    return "eager"
