"""Engine ``eager``: runs the UNet in plain PyTorch (every device, every plugin)."""

from __future__ import annotations

from vedit.hookspecs import hookimpl


class Eager:
    name = "eager"
    description = "plain PyTorch; the method's hooks run as Python attention processors"

    def prepare(self, model, config) -> None:
        """Nothing to build: the UNet runs as loaded."""


@hookimpl
def register_engines(register):
    register(Eager())


@hookimpl(trylast=True)
def choose_engine(device):
    return "eager"
