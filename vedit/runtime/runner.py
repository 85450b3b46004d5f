"""The pass runner: every UNet call of a run through the engines the user chose, and what an
engine is asked to build. The on-disk cache of what engines build is :mod:`vedit.runtime.engine_cache`.

An engine plugin implements::

    name: str
    description: str
    dynamic_batch: bool            # optional: one build serves every batch size in target.batches
    unavailable_reason() -> str | None            # optional: why it cannot run here (missing library)
    build(module, example, target) -> callable    # callable(*inputs) returns what module(*inputs) does

``module`` is one of :mod:`vedit.method.passes`' modules, ``example`` a tuple of input tensors of the
shape it will be called with, and ``target`` a :class:`BuildTarget` with the pass's name, the
batch sizes it must serve, the device, precision, the engine cache and the key of the weights.
The runner (:class:`Passes`) asks for one build per pass and shape (per pass, for engines with
``dynamic_batch``) and falls back along the user's engine list when a build or its first call
fails.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..config import option_value
from ..errors import PluginError
from ..method.passes import (
    PASS_VERSION,
    BoundedKeyframePass,
    FramesPass,
    KeyframePass,
    PassModule,
    PlainPass,
    PropagationPass,
)
from ..method.unet import CallContext, ControlledUNet, LayerInfo
from .engine_cache import EngineCache, torch_key_parts


class EngineError(PluginError):
    """An engine the user asked for alone cannot build or run a pass (exit 5)."""


@dataclass
class BuildTarget:
    """What an engine is asked to build: one pass, for the given batch sizes, on one device."""

    pass_name: str
    batches: tuple[int, ...]  # every batch size the callable must serve (one, for static engines)
    device: torch.device
    dtype: torch.dtype
    fingerprint: str  # of the model weights
    cache: EngineCache
    message: Callable[[str], None]
    layers: str = ""  # the injection layers the pass was built with (part of the key)

    def parts(self, engine: str, shapes: Iterable[Sequence[int]], **extra: str) -> dict[str, str]:
        """Every key part of an entry for this target built by ``engine``."""
        return {
            "engine": engine,
            "pass": self.pass_name,
            "pass_version": str(PASS_VERSION),
            "model": self.fingerprint,
            "layers": self.layers,
            "shapes": json.dumps([list(s) for s in shapes]),
            "batches": ",".join(str(b) for b in self.batches),
            "dtype": str(self.dtype).removeprefix("torch."),
            **torch_key_parts(self.device),
            **extra,
        }

    IDENTITY = ("engine", "pass", "model", "layers", "shapes", "batches", "dtype", "device")


def engine_chain(requested: str, device: torch.device) -> tuple[list[Any], bool, list[str]]:
    """The engines to try in order for ``--engine`` (a name, ``auto`` or a comma-separated list),
    whether a failure is an error (one engine named alone) rather than a fallback, and one note
    per engine of the list skipped because it cannot run here. The chain always ends at eager."""
    from .. import plugins

    names = [n.strip() for n in requested.split(",") if n.strip()] or ["auto"]
    strict = len(names) == 1 and names[0] != "auto"
    if strict:
        return [plugins.get("engine", names[0])], True, []  # unknown or unusable: one line, exit 5
    items = plugins.registered("engine")
    expanded: list[str] = []
    for name in names:
        if name == "auto":
            rule = plugins.get_plugin_manager().hook.choose_engine(device=device) or "eager"
            expanded += [n.strip() for n in rule.split(",") if n.strip()]
        else:
            expanded.append(name)
    chain: list[Any] = []
    notes: list[str] = []
    for name in expanded:
        if name not in items:
            known = ", ".join(sorted(items))
            raise PluginError(f"unknown engine {name!r} in {option_value('engine', requested)}; available: {known}")
        reason = items[name].unavailable_reason()
        if reason:
            if "auto" not in names or name in names:
                notes.append(f"engine {name!r} cannot run here ({reason}); skipping it")
            continue
        if name not in [e.name for e in chain]:
            chain.append(items[name].item)
    if "eager" not in [e.name for e in chain]:
        chain.append(plugins.get("engine", "eager"))
    return chain, False, notes


def first_line(error: BaseException) -> str:
    """An error as one line of a message: its type and the first line of its text."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


class Passes:
    """Every UNet call of a run, through the chosen engines.

    ``plain``, ``frames``, ``keyframe`` and ``propagate`` run the pass modules of
    :mod:`vedit.method.passes`; ``custom`` runs a propagator plugin's own attention handler eagerly.
    UNet image-forwards are counted by kind.
    """

    def __init__(
        self,
        model: Any,
        engines: Sequence[Any],
        *,
        strict: bool = False,
        conv_layers: tuple[str, ...] = (),
        qk_layers: tuple[str, ...] = (),
        nearest: Any = None,
        cache: EngineCache | None = None,
        message: Callable[[str], None] | None = None,
        warn: Callable[[str], None] | None = None,
        batches: dict[str, Sequence[int]] | None = None,
    ):
        self.model = model
        self.engines = list(engines)
        self.strict = strict
        self.message = message or (lambda text: None)
        self.warn = warn or self.message
        self.cache = cache or EngineCache.for_options(message=self.message)
        self.controlled = ControlledUNet(model.unet, conv_layers=conv_layers, qk_layers=qk_layers)
        self.layers_key = json.dumps([list(conv_layers), list(qk_layers)])
        # A nearest-neighbour backend that is not traceable runs inside the propagation pass in Python.
        self.nearest = None if nearest is None or getattr(nearest, "traceable", False) else nearest.nearest
        self.nearest_name = getattr(nearest, "name", "torch")
        self.batches = {k: tuple(sorted(set(v))) for k, v in (batches or {}).items()}
        self.forwards: Counter[str] = Counter()
        self.used: dict[str, str] = {}  # pass -> engine that runs it
        self._modules: dict[str, PassModule] = {}
        self._callables: dict[tuple, Callable] = {}
        self._failed: dict[str, set[str]] = {}
        self._said: set[str] = set()

    # lifetime ------------------------------------------------------------------------------
    def __enter__(self) -> Passes:
        self.controlled.install()
        return self

    def __exit__(self, *exc) -> None:
        self.controlled.uninstall()

    @property
    def layers(self) -> list[LayerInfo]:
        return self.controlled.layers

    def _say_once(self, text: str) -> None:
        if text not in self._said:
            self._said.add(text)
            self.warn(text)

    # building ------------------------------------------------------------------------------
    def module(self, name: str) -> PassModule:
        if name not in self._modules:
            make = {
                "plain": PlainPass, "frames": FramesPass, "keyframe": KeyframePass,
                "keyframe_bounded": BoundedKeyframePass,
            }.get(name)  # fmt: skip
            module = make(self.controlled) if make else PropagationPass(self.controlled, self.nearest)
            self._modules[name] = module.eval()
        return self._modules[name]

    def _target(self, name: str, batches: tuple[int, ...]) -> BuildTarget:
        return BuildTarget(
            pass_name=name, batches=batches, device=self.model.device, dtype=self.model.dtype,
            fingerprint=self.model.fingerprint, cache=self.cache, message=self.message, layers=self.layers_key,
        )  # fmt: skip

    def _callable(self, name: str, inputs: tuple[torch.Tensor, ...]) -> Callable:
        batch = inputs[0].shape[0]
        shapes = tuple(tuple(x.shape) for x in inputs)
        key = (name, shapes)
        if key in self._callables:
            return self._callables[key]
        module = self.module(name)
        failed = self._failed.setdefault(name, set())
        for engine in self.engines:
            if engine.name in failed:
                continue
            if engine.name != "eager" and name == "propagation" and self.nearest is not None:
                self._say_once(
                    f"nn backend {self.nearest_name!r} runs in Python, so the propagation pass runs eagerly "
                    f"(the torch backend compiles with it)"
                )
                continue
            dynamic = getattr(engine, "dynamic_batch", False)
            batches = tuple(sorted(set(self.batches.get(name, ())) | {batch})) if dynamic else (batch,)
            try:
                fn = engine.build(module, inputs, self._target(name, batches))
                outputs = fn(*inputs)  # the first call is part of the build: it may fail too
            except Exception as error:
                if self.strict:
                    raise EngineError(
                        f"engine {engine.name!r} cannot run the {name} pass: {first_line(error)}"
                    ) from None
                failed.add(engine.name)
                self.warn(f"engine {engine.name!r} cannot run the {name} pass ({first_line(error)}); trying the next")
                continue
            self.used[name] = engine.name
            self._callables[key] = _Primed(fn, inputs, outputs)
            return self._callables[key]
        # Not reached for a chain that ends at eager, unless eager itself fails (a real bug).
        raise EngineError(f"no engine could run the {name} pass; tried {', '.join(e.name for e in self.engines)}")

    def _run(self, name: str, kind: str, inputs: tuple[torch.Tensor, ...]):
        self.forwards[kind] += inputs[0].shape[0]
        return self._callable(name, inputs)(*inputs)

    # the passes ---------------------------------------------------------------------------
    def plain(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, *, kind: str = "plain") -> torch.Tensor:
        return self._run("plain", kind, (latents, t, text))

    def frames(
        self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, flags: torch.Tensor, *, kind: str = "frames"
    ) -> torch.Tensor:
        return self._run("frames", kind, (latents, t, text, flags))

    def keyframe(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        flags: torch.Tensor,
        partners: torch.Tensor | None = None,
        *,
        kind: str = "keyframes",
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The keyframe pass; with ``partners`` (K, M), its bounded form (``--max-joint-keyframes``)."""
        if partners is None:
            out = self._run("keyframe", kind, (latents, t, text, flags))
        else:
            out = self._run("keyframe_bounded", kind, (latents, t, text, flags, partners))
        return out[0], list(out[1:])

    def propagate(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        flags: torch.Tensor,
        weights: torch.Tensor,
        records: Sequence[torch.Tensor],
        *,
        kind: str = "propagation",
    ) -> torch.Tensor:
        return self._run("propagation", kind, (latents, t, text, flags, weights, *records))

    def custom(
        self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, ctx: CallContext, *, kind: str
    ) -> torch.Tensor:
        """A plugin's own attention handler: Python inside the UNet, so always eager."""
        if any(e.name != "eager" for e in self.engines[:1]):
            self._say_once(
                f"attention handler {type(ctx.attention).__name__} is Python code, so its UNet calls run eagerly"
            )
        self.forwards[kind] += latents.shape[0]
        return self.controlled.run(latents, t, text, ctx)

    def prepare(self, name: str, inputs: tuple[torch.Tensor, ...]) -> Callable:
        """The callable that runs pass ``name`` on inputs shaped like ``inputs``, built (or loaded
        from the engine cache) now; the first call with these very tensors returns the build's
        own result."""
        return self._callable(name, inputs)


class _Primed:
    """The built callable; the outputs of its first call (made while building) answer that call."""

    def __init__(self, fn: Callable, inputs: tuple[torch.Tensor, ...], outputs: Any):
        self.fn = fn
        self._first: tuple | None = (inputs, outputs)

    def __call__(self, *inputs: torch.Tensor):
        first, self._first = self._first, None
        if first is not None and len(first[0]) == len(inputs) and all(a is b for a, b in zip(first[0], inputs)):
            return first[1]
        return self.fn(*inputs)
