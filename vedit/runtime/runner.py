"""The pass runner: every UNet call of a run through the engines the user chose, and what an
engine is asked to build. The on-disk cache of what engines build is :mod:`vedit.runtime.engine_cache`.

An engine plugin implements::

    name: str
    description: str
    dynamic_batch: bool            # optional: one build serves every batch size in target.batches
    unavailable_reason() -> str | None            # optional: why it cannot run here (missing library)
    build(module, example, target) -> callable    # callable(*inputs) returns what module(*inputs) does

``module`` is the module of a registered pass (:mod:`vedit.plugins.passes`; the built-in ones are
:mod:`vedit.method.passes`'), ``example`` a tuple of input tensors of the shape it will be called with,
and ``target`` a :class:`BuildTarget` with the pass's name and spec, the batch sizes it must serve, the
device, precision, the engine cache and the key of the weights. The runner (:class:`Passes`) builds
whatever pass it is asked to run by name, one build per pass and shape (per pass, for engines with
``dynamic_batch``), and falls back along the user's engine list when a build or its first call fails.
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
from ..method.passes import PASS_VERSION
from ..method.unet import CallContext, ControlledUNet, LayerInfo
from ..plugins.passes import ExampleRequest, PassSpec, pass_spec
from .engine_cache import EngineCache, torch_key_parts

# Kinds of UNet forward counted under another name before each took the name of its pass: reading the
# old name answers the count of the new one, where the old name is not a kind counted in its own right.
EARLIER_KINDS = {"keyframes": "keyframe", "frames": "plain"}


class Forwards(dict[str, int]):
    """A run's UNet image-forwards by kind, as its result reports them: the kind of the pass that made
    them (:attr:`~vedit.PassSpec.kind`) or what the plain pass served (``inversion``,
    ``reconstruction``). The names of :data:`EARLIER_KINDS` still read what they used to:
    ``forwards["keyframes"]`` is the keyframe pass's count, and ``forwards["frames"]`` of a run whose
    per-frame calls had no source branch (and so ran the plain pass) is their count. A result to read:
    the runner counts in a plain :class:`~collections.Counter`."""

    def __missing__(self, key: str) -> int:
        if key in EARLIER_KINDS and dict.__contains__(self, EARLIER_KINDS[key]):
            return self[EARLIER_KINDS[key]]
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or (
            isinstance(key, str) and key in EARLIER_KINDS and dict.__contains__(self, EARLIER_KINDS[key])
        )

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def by_name(self) -> dict[str, int]:
        """The counts under every name they can be read by, earlier names included: for JSON documents,
        whose readers cannot ask a mapping."""
        named = dict(self)
        named.update({old: self[new] for old, new in EARLIER_KINDS.items() if old not in named and new in named})
        return named


class EngineError(PluginError):
    """An engine the user asked for alone cannot build or run a pass (exit 5)."""


@dataclass
class BuildTarget:
    """What an engine is asked to build: one pass, for the given batch sizes, on one device. ``spec`` is
    the pass's :class:`~vedit.PassSpec` (its images per frame, its batched inputs, whether it returns
    records)."""

    pass_name: str
    batches: tuple[int, ...]  # every batch size the callable must serve (one, for static engines)
    device: torch.device
    dtype: torch.dtype
    fingerprint: str  # of the model weights
    cache: EngineCache
    message: Callable[[str], None]
    layers: str = ""  # the injection layers the pass was built with (part of the key)
    control: str = ""  # the ControlNets inside the pass, by their weights' fingerprints (part of the key when set)
    controlled: PassSpec | None = None  # the spec of the pass's controlled form (vedit.method.control)

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
            **({"control": self.control} if self.control else {}),
            **extra,
        }

    IDENTITY = ("engine", "pass", "model", "layers", "shapes", "batches", "dtype", "device", "control")

    @property
    def spec(self) -> PassSpec:
        """The pass's spec: its controlled form's when the run's ControlNets are inside it."""
        return self.controlled if self.controlled is not None else pass_spec(self.pass_name)


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

    :meth:`run` runs any registered pass by name (:mod:`vedit.plugins.passes`), building it on first
    use; ``plain``, ``frames``, ``keyframe`` and ``propagate`` are the built-in passes' calls;
    ``custom`` runs a propagator plugin's own attention handler eagerly. UNet image-forwards are
    counted by kind, the kind of the pass unless the caller names another.
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
        controlnets: Sequence[Any] = (),
    ):
        """``controlnets``: the run's :class:`~vedit.control.controlnets.LoadedControlNet`; a call given control
        inputs runs the pass's controlled form, the ControlNets inside (:mod:`vedit.method.control`)."""
        self.model = model
        self.engines = list(engines)
        self.strict = strict
        self.message = message or (lambda text: None)
        self.warn = warn or self.message
        self.cache = cache or EngineCache.for_options(message=self.message)
        self.controlled = ControlledUNet(
            model.unet, conv_layers=conv_layers, qk_layers=qk_layers,
            attention_layers=model.family.attention_layers, unet_inputs=model.unet_inputs,
            controlnets=tuple(c.module for c in controlnets),
        )  # fmt: skip
        self.control_key = json.dumps([c.fingerprint for c in controlnets]) if controlnets else ""
        self.layers_key = json.dumps([list(conv_layers), list(qk_layers)])
        # A nearest-neighbour backend that is not traceable runs inside the searching passes in Python.
        self.nearest = None if nearest is None or getattr(nearest, "traceable", False) else nearest.nearest
        self.nearest_name = getattr(nearest, "name", "torch")
        self.batches = {k: tuple(sorted(set(v))) for k, v in (batches or {}).items()}
        self.forwards: Counter[str] = Counter()
        self.used: dict[str, str] = {}  # pass -> engine that runs it
        self._specs: dict[str, PassSpec] = {}
        self._modules: dict[str, Any] = {}
        self._controlled_modules: dict[str, Any] = {}
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
    def spec(self, name: str) -> PassSpec:
        """The registered pass ``name``, looked up once per run."""
        if name not in self._specs:
            self._specs[name] = pass_spec(name)
        return self._specs[name]

    def module(self, name: str) -> Any:
        """The module of pass ``name``, built by its spec on first use."""
        if name not in self._modules:
            spec = self.spec(name)
            module = spec.build(self.controlled, self.nearest if spec.searches_nearest else None)
            if getattr(module, "name", None) != name:
                found = getattr(module, "name", None)
                raise PluginError(f"pass {name!r} builds a module named {found!r}; its name must be the pass's")
            self._modules[name] = module.eval()
        return self._modules[name]

    def controlled_module(self, name: str) -> Any:
        """Pass ``name``'s controlled form: its module with the run's ControlNets inside."""
        if name not in self._controlled_modules:
            from ..method.control import ControlledPass

            self._controlled_modules[name] = ControlledPass(self.module(name), self.controlled.controlnets).eval()
        return self._controlled_modules[name]

    def controlled_spec(self, name: str) -> PassSpec:
        from ..method.control import controlled_spec

        return controlled_spec(self.spec(name), len(self.controlled.controlnets), self.model.vae_scale_factor)

    def example(
        self,
        name: str,
        frames: int,
        size: tuple[int, int],
        *,
        options: Any = None,
        embeds: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Example inputs of pass ``name`` for a call of ``frames`` frames at latent ``size`` (h, w), on the
        model's device and dtype, made by the pass's own :attr:`~vedit.PassSpec.example`: what engines
        are built from and the benchmarks time. ``options`` are the run's, ``embeds`` (branches, L, D)
        the prompts' embeddings (random text without), ``generator`` draws the rest (seed 0 without)."""
        text_length, text_dim = self.model.text_shape
        request = ExampleRequest(
            frames=frames, height=size[0], width=size[1], channels=self.model.unet.config.in_channels,
            text_length=text_length, text_dim=text_dim, device=self.model.device,
            dtype=self.model.dtype, generator=generator or torch.Generator().manual_seed(0), embeds=embeds,
            options=options, run=self._run_eagerly,
        )  # fmt: skip
        return tuple(self.spec(name).example(request))

    def _run_eagerly(self, name: str, inputs: tuple[torch.Tensor, ...]) -> Any:
        """Pass ``name``'s module itself on ``inputs``: what an example needs of another pass (its
        records) without building that pass for another shape; not counted."""
        with torch.no_grad():
            return self.module(name)(*inputs)

    def _target(self, name: str, batches: tuple[int, ...], controlled: bool = False) -> BuildTarget:
        return BuildTarget(
            pass_name=name, batches=batches, device=self.model.device, dtype=self.model.dtype,
            fingerprint=self.model.fingerprint, cache=self.cache, message=self.message, layers=self.layers_key,
            control=self.control_key if controlled else "",
            controlled=self.controlled_spec(name) if controlled else None,
        )  # fmt: skip

    def _callable(self, name: str, inputs: tuple[torch.Tensor, ...], controlled: bool = False) -> Callable:
        batch = inputs[0].shape[0]
        shapes = tuple(tuple(x.shape) for x in inputs)
        key = (name, shapes, controlled)
        if key in self._callables:
            return self._callables[key]
        module = self.controlled_module(name) if controlled else self.module(name)
        failed = self._failed.setdefault(name, set())
        for engine in self.engines:
            if engine.name in failed:
                continue
            if engine.name != "eager" and self.spec(name).searches_nearest and self.nearest is not None:
                self._say_once(
                    f"nn backend {self.nearest_name!r} runs in Python, so the {name} pass runs eagerly "
                    f"(the torch backend compiles with it)"
                )
                continue
            dynamic = getattr(engine, "dynamic_batch", False)
            batches = tuple(sorted(set(self.batches.get(name, ())) | {batch})) if dynamic else (batch,)
            try:
                fn = engine.build(module, inputs, self._target(name, batches, controlled))
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

    # the passes ---------------------------------------------------------------------------
    def run(self, name: str, inputs: Sequence[torch.Tensor], *, kind: str | None = None, control: Any = None) -> Any:
        """Pass ``name`` on ``inputs`` (its module's inputs, in order) through the engines: ε, or
        ``(ε, records…)`` for a pass that returns records. Its image-forwards count as ``kind``
        (default: the pass's own kind). With ``control`` (:class:`vedit.method.control.ControlInputs`), the
        pass's controlled form runs, the run's ControlNets inside."""
        inputs = tuple(inputs)
        self.forwards[kind or self.spec(name).kind] += inputs[0].shape[0]
        if control is not None:
            inputs = (*inputs, *(image.to(self.model.dtype) for image in control.images), control.scales)
            return self._callable(name, inputs, True)(*inputs)
        return self._callable(name, inputs)(*inputs)

    def plain(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        *,
        kind: str | None = None,
        control: Any = None,
    ) -> torch.Tensor:
        return self.run("plain", (latents, t, text), kind=kind, control=control)

    def frames(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        flags: torch.Tensor,
        *,
        kind: str | None = None,
        control: Any = None,
    ) -> torch.Tensor:
        return self.run("frames", (latents, t, text, flags), kind=kind, control=control)

    def keyframe(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        flags: torch.Tensor,
        partners: torch.Tensor | None = None,
        *,
        kind: str | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The keyframe pass; with ``partners`` (K, M), its bounded form (``--max-joint-keyframes``)."""
        if partners is None:
            out = self.run("keyframe", (latents, t, text, flags), kind=kind)
        else:
            out = self.run("keyframe_bounded", (latents, t, text, flags, partners), kind=kind)
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
        kind: str | None = None,
    ) -> torch.Tensor:
        return self.run("propagation", (latents, t, text, flags, weights, *records), kind=kind)

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
