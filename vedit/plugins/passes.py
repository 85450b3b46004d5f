"""The pass registry: every UNet pass an engine can build, registered by the plugin that needs it.

A pass is a module with tensor inputs and outputs (:mod:`vedit.method.passes` holds the built-in ones
and the blocks they are made of). A plugin registers it with ``register_passes(register)`` and
``register(PassSpec(...))``: its name, how to build its module, how to make example inputs of a given
size, and the few facts the engines and the runner need (images per frame, which inputs grow with
the batch, whether it returns records, whether it searches nearest neighbours). vedit registers
``plain`` and ``frames`` itself; the ``tokenflow`` propagator registers ``keyframe``,
``keyframe_bounded`` and ``propagation``. The registry is rebuilt on demand, like every other, so a
pass registered late (in a test) simply appears.

Nothing here imports torch: ``import vedit`` stays light, and the example helpers import it when
they run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# How an input's first dimension grows with the frames of a call: "rows" holds rows_per_frame rows
# per frame (the latents and the text: every branch of every frame), "frames" one row per frame.
BATCHED = ("rows", "frames")
EXAMPLE_TIMESTEP = 501  # mid-schedule; a pass's graph does not depend on the value


def _seeded_generator() -> Any:
    import torch

    return torch.Generator().manual_seed(0)


@dataclass(frozen=True)
class ExampleRequest:
    """What a pass's example inputs are made from (:attr:`PassSpec.example`).

    The helpers draw from ``generator`` on the CPU and move the result to ``device``, so the same
    request gives the same inputs on every device.
    """

    frames: int  # frames of the call: the batch holds frames × rows_per_frame rows
    height: int  # latent height and width
    width: int
    text_length: int  # tokens of one prompt embedding (77 for CLIP)
    text_dim: int  # the text encoder's hidden size
    device: Any  # torch.device
    dtype: Any  # torch.dtype of the latents and the text
    channels: int = 4  # latent channels
    generator: Any = field(default_factory=_seeded_generator)  # draws every random input
    embeds: Any = None  # (branches, L, D) prompt embeddings, branch-major; random text when None
    options: Any = None  # the propagator's options (the bounded keyframe pass reads max_joint_keyframes)
    run: Callable[[str, tuple[Any, ...]], Any] | None = None  # runs another registered pass eagerly (records)

    def latents(self, rows: int) -> Any:
        """Random latents (rows, channels, height, width)."""
        import torch

        shape = (rows, self.channels, self.height, self.width)
        return torch.randn(shape, generator=self.generator).to(self.device, self.dtype)

    def text(self, branches: int) -> Any:
        """Text embeddings of every frame in ``branches`` branches, branch-major (branches·frames, L, D): the
        first ``branches`` rows of ``embeds``, or random ones."""
        import torch

        if self.embeds is None:
            shape = (branches * self.frames, self.text_length, self.text_dim)
            return torch.randn(shape, generator=self.generator).to(self.device, self.dtype)
        rows = [self.embeds[b : b + 1].expand(self.frames, -1, -1) for b in range(branches)]
        return torch.cat(rows).to(self.device, self.dtype).contiguous()

    def timestep(self) -> Any:
        """A 0-d int64 timestep, as the denoising loop passes it."""
        import torch

        return torch.tensor(EXAMPLE_TIMESTEP, device=self.device)

    def flags(self) -> Any:
        """The injection flags ``[conv, qk]`` (2,) bool, both on."""
        import torch

        return torch.tensor([True, True], device=self.device)


@dataclass(frozen=True)
class PassSpec:
    """A UNet pass as a plugin registers it (``register_passes``).

    - ``build(controlled, nearest)`` returns the pass module: an ``nn.Module`` whose ``forward`` takes
      tensors and returns ε (or, with ``returns_records``, ``(ε, records…)``), with ``name`` (this
      spec's), ``input_names`` and ``output_names()``. ``controlled`` is the run's
      :class:`~vedit.method.unet.ControlledUNet`; ``nearest`` is a nearest-neighbour backend's
      ``nearest(queries, keys)`` for a pass that ``searches_nearest`` when that backend runs in Python,
      else None (the pass then searches in its own graph).
    - ``example(request)`` returns inputs for a call of ``request.frames`` frames
      (:class:`ExampleRequest`), of the shapes and dtypes the run's own calls have: engines build
      from them and the benchmarks time them.
    - ``rows_per_frame``: batch rows per frame (3, the branches ``[source, uncond, cond]``; 1 for
      ``plain``, whose every row is an image of its own).
    - ``batched_inputs``: the inputs whose first dimension grows with the frames of a call, as
      ``"rows"`` (rows_per_frame per frame) or ``"frames"`` (one per frame); every other input has a
      fixed shape. Engines that build one graph for several batch sizes make exactly these dynamic.
    - ``returns_records``: the module returns ``(ε, records…)`` rather than ε alone.
    - ``searches_nearest``: the pass matches tokens by nearest neighbours, which a Python
      nearest-neighbour backend then does instead (and only the ``eager`` engine can run it).
    - ``kind``: what its UNet forwards are counted and profiled as: its own name, unless it is a
      variant of another pass (``keyframe_bounded`` is the keyframe pass with fewer keyframes to
      attend to, so it counts as ``keyframe``).
    """

    name: str
    build: Callable[[Any, Any], Any]
    example: Callable[[ExampleRequest], tuple[Any, ...]]
    rows_per_frame: int = 3
    batched_inputs: Mapping[str, str] = field(default_factory=lambda: {"latents": "rows", "text": "rows"})
    returns_records: bool = False
    searches_nearest: bool = False
    kind: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("a pass needs a name")
        if not callable(self.build) or not callable(self.example):
            raise TypeError(f"pass {self.name!r}: build and example must be callables")
        if not isinstance(self.rows_per_frame, int) or self.rows_per_frame < 1:
            raise ValueError(f"pass {self.name!r}: rows_per_frame must be 1 or more, not {self.rows_per_frame!r}")
        odd = {k: v for k, v in self.batched_inputs.items() if v not in BATCHED}
        if odd:
            raise ValueError(f"pass {self.name!r}: batched_inputs {odd} must be 'rows' or 'frames'")
        if not self.kind:
            object.__setattr__(self, "kind", self.name)

    def dynamic_shapes(self, module: Any, low: int, high: int) -> dict[str, Any]:
        """``torch.export`` dynamic shapes for calls of ``low`` to ``high`` frames: the batched inputs share
        one ``frames`` dimension, every other input is fixed; keyed by the names of ``module.forward``'s
        parameters (a ``*records`` parameter takes a tuple)."""
        from torch.export import Dim

        frames = Dim("frames", min=low, max=high)
        rows = frames if self.rows_per_frame == 1 else self.rows_per_frame * frames
        specs = [
            None if name not in self.batched_inputs else {0: rows if self.batched_inputs[name] == "rows" else frames}
            for name in module.input_names
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


def registered_passes() -> dict[str, PassSpec]:
    """Every registered pass by name: the one list of passes."""
    from .manager import registered

    return {name: entry.item for name, entry in registered("pass").items()}


def pass_spec(name: str) -> PassSpec:
    """The registered pass ``name``; an unknown name is a one-line :class:`~vedit.errors.PluginError`."""
    from .manager import get

    spec: PassSpec = get("pass", name)
    return spec


def pass_kinds() -> tuple[str, ...]:
    """The kinds the registered passes' forwards are counted as, in registration order, each once."""
    return tuple(dict.fromkeys(spec.kind for spec in registered_passes().values()))
