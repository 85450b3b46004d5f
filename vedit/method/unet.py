"""The UNet with the method's hooks in it: self-attention handlers and PnP feature injection.

Every ``attn1`` of every transformer block gets a processor that hands its input to the
*attention handler* of the current call (plain per-frame attention, TokenFlow's extended
attention, TokenFlow's propagation, or a plugin's own). The editor's conv-injection layers
get their ``conv2`` wrapped so the residual branch of the uncond and cond branches can be
replaced by the source branch's. What acts in a call is described by a :class:`CallContext`
given with it; no state survives between calls except what a handler keeps itself. A call given control inputs
also runs the run's ControlNets and adds their residuals (:func:`residuals`, :mod:`vedit.method.control`).

Batches are laid out branch-major: ``[source × n, uncond × n, cond × n]`` (or without the
source branch when no one needs it).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn

SOURCE, UNCOND, COND = "source", "uncond", "cond"


class Injection(NamedTuple):
    """Which PnP injections act in one UNet call: bools, or 0-d bool tensors (one graph for every step)."""

    conv: bool | torch.Tensor = False
    qk: bool | torch.Tensor = False


@dataclass(frozen=True)
class LayerInfo:
    """One transformer block's self-attention, as handlers see it."""

    name: str  # module path of the transformer block
    index: int  # position among all transformer blocks, in forward order
    inject_qk: bool  # whether the editor's Q/K injection acts here


class AttentionHandler(Protocol):
    """Computes one self-attention layer's output (after ``to_out``, before the residual)."""

    def self_attention(
        self, layer: LayerInfo, attn: nn.Module, hidden_states: torch.Tensor, ctx: CallContext
    ) -> torch.Tensor: ...


@dataclass
class CallContext:
    """What acts inside one UNet call."""

    branches: tuple[str, ...]
    frames: int  # frames per branch
    attention: AttentionHandler
    injection: Injection = field(default_factory=Injection)
    control: Any = None  # vedit.method.control.ControlInputs: the ControlNets' inputs, when the run has controls

    def branch(self, name: str) -> slice:
        i = self.branches.index(name)
        return slice(i * self.frames, (i + 1) * self.frames)

    @property
    def can_inject(self) -> bool:
        return self.branches[:1] == (SOURCE,) and len(self.branches) > 1


def select(flag: bool | torch.Tensor, chosen: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``chosen`` where ``flag`` holds, else ``other``: a Python branch eagerly, ``where`` in a graph."""
    if isinstance(flag, torch.Tensor):
        return torch.where(flag, chosen, other)
    return chosen if flag else other


def inject_from_source(x: torch.Tensor, ctx: CallContext, flag: bool | torch.Tensor) -> torch.Tensor:
    """Replace every non-source branch of ``x`` by the source branch where ``flag`` holds."""
    if not ctx.can_inject or flag is False:
        return x
    n = ctx.frames
    source = x[:n]
    parts = [source] + [select(flag, source, x[i * n : (i + 1) * n]) for i in range(1, len(ctx.branches))]
    return torch.cat(parts)


class _SelfAttentionProcessor:
    """Routes one ``attn1`` to the current call's attention handler."""

    def __init__(self, controlled: ControlledUNet, layer: LayerInfo):
        self.controlled = controlled
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        ctx = self.controlled.context
        return ctx.attention.self_attention(self.layer, attn, hidden_states, ctx)


class _InjectedConv(nn.Module):
    """A resnet's ``conv2`` whose output (the residual branch) can take the source branch's."""

    def __init__(self, conv: nn.Module, controlled: ControlledUNet):
        super().__init__()
        self.conv = conv
        self._controlled = [controlled]  # a list so nn.Module does not register a cycle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        ctx = self._controlled[0].context
        return inject_from_source(out, ctx, ctx.injection.conv)


def transformer_block_names(unet: nn.Module, within: tuple[str, ...] | None = None) -> list[str]:
    """Module paths of every transformer block that has a self-attention ``attn1``, in forward order; with
    ``within``, only those under one of these module paths."""
    names = [name for name, module in unet.named_modules() if type(module).__name__ == "BasicTransformerBlock"]
    if within is None:
        return names
    return [name for name in names if any(name == p or name.startswith(p + ".") for p in within)]


def _text_only(text: torch.Tensor) -> dict:
    return {"encoder_hidden_states": text}


class ControlledUNet:
    """A diffusers UNet whose self-attention and injection layers obey a per-call context.

    Use as a context manager: the original processors and convolutions come back on exit.
    """

    def __init__(
        self,
        unet: nn.Module,
        *,
        conv_layers: tuple[str, ...] = (),
        qk_layers: tuple[str, ...] = (),
        attention_layers: tuple[str, ...] | None = None,
        unet_inputs: Callable[[torch.Tensor], dict] = _text_only,
        controlnets: tuple[nn.Module, ...] = (),
    ):
        """``attention_layers``: the module paths whose transformer blocks' self-attention the handlers
        compute (all without; the others keep the UNet's own); ``unet_inputs``: the model family's split of
        the conditioning into the UNet's keyword arguments; ``controlnets``: the ControlNets that act in a call
        given control inputs (:mod:`vedit.method.control`)."""
        self.unet = unet
        self.conv_layers = tuple(conv_layers)
        self.qk_layers = tuple(qk_layers)
        self.attention_layers = None if attention_layers is None else tuple(attention_layers)
        self.unet_inputs = unet_inputs
        self.controlnets = tuple(controlnets)
        self.forwards: Counter[str] = Counter()
        self._context: CallContext | None = None
        self._control: Any = None
        self._saved_processors = None
        self._saved_convs: dict[str, nn.Module] = {}
        self.layers: list[LayerInfo] = []

    # installation -------------------------------------------------------------------------
    def install(self) -> ControlledUNet:
        modules = dict(self.unet.named_modules())
        for path in self.conv_layers + self.qk_layers:
            if path not in modules:
                raise ValueError(f"the UNet has no layer {path!r} to inject into")
        if any(isinstance(p, _SelfAttentionProcessor) for p in self.unet.attn_processors.values()):
            raise RuntimeError(
                "this UNet already carries the method's hooks of another ControlledUNet (or Passes); "
                "leave that one's context before entering a new one"
            )
        self._saved_processors = self.unet.attn_processors
        processors = dict(self._saved_processors)
        self.layers = []
        for index, name in enumerate(transformer_block_names(self.unet, self.attention_layers)):
            inject = any(name == p or name.startswith(p + ".") for p in self.qk_layers)
            layer = LayerInfo(name=name, index=index, inject_qk=inject)
            self.layers.append(layer)
            processors[f"{name}.attn1.processor"] = _SelfAttentionProcessor(self, layer)
        self.unet.set_attn_processor(processors)
        for path in self.conv_layers:
            resnet = modules[path]
            self._saved_convs[path] = resnet.conv2
            resnet.conv2 = _InjectedConv(resnet.conv2, self)
        return self

    def uninstall(self) -> None:
        modules = dict(self.unet.named_modules())
        for path, conv in self._saved_convs.items():
            modules[path].conv2 = conv
        self._saved_convs.clear()
        if self._saved_processors is not None:
            self.unet.set_attn_processor(self._saved_processors)
            self._saved_processors = None

    def __enter__(self) -> ControlledUNet:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    # calls --------------------------------------------------------------------------------
    @property
    def context(self) -> CallContext:
        if self._context is None:
            raise RuntimeError("the controlled UNet was called outside ControlledUNet.__call__")
        return self._context

    @contextlib.contextmanager
    def _using(self, ctx: CallContext) -> Iterator[None]:
        self._context = ctx
        try:
            yield
        finally:
            self._context = None

    @contextlib.contextmanager
    def controlling(self, control: Any) -> Iterator[None]:
        """Within it, calls whose context carries no control inputs take ``control``
        (:class:`vedit.method.control.ControlInputs`): how a controlled pass hands them to the pass it wraps."""
        self._control = control
        try:
            yield
        finally:
            self._control = None

    def __call__(
        self, latents: torch.Tensor, t: torch.Tensor | int, text: torch.Tensor, ctx: CallContext, *, kind: str = "unet"
    ) -> torch.Tensor:
        """Noise prediction for a branch-major batch ``latents`` (len(branches)·n, 4, h, w)."""
        if latents.shape[0] != len(ctx.branches) * ctx.frames:
            raise ValueError(f"batch of {latents.shape[0]} does not hold {len(ctx.branches)} branches of {ctx.frames}")
        self.forwards[kind] += latents.shape[0]
        return self.run(latents, t, text, ctx)

    def run(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, ctx: CallContext) -> torch.Tensor:
        """The UNet on ``latents`` with ``ctx`` acting inside (nothing counted: traced and compiled passes
        call this)."""
        kwargs = self.unet_inputs(text)
        control = ctx.control if ctx.control is not None else self._control
        if control is not None:
            if not self.controlnets:
                raise RuntimeError("a UNet call with control inputs, but the controlled UNet has no ControlNets")
            kwargs.update(residuals(self.controlnets, latents, t, text, ctx, control, self.unet_inputs))
        with self._using(ctx):
            return self.unet(latents, t, **kwargs, return_dict=False)[0]


@dataclass(frozen=True)
class ControlInputs:
    """What the ControlNets of one UNet call take: per ControlNet, images (frames of the call, 3, H, W) in
    [0, 1], and their scales (m,) at this step."""

    images: tuple[torch.Tensor, ...]
    scales: torch.Tensor


def residuals(
    controlnets: Sequence[nn.Module],
    latents: torch.Tensor,
    t: torch.Tensor,
    text: torch.Tensor,
    ctx: CallContext,
    control: ControlInputs,
    unet_inputs: Any,
) -> dict[str, Any]:
    """The UNet's keyword arguments that add the ControlNets' residuals: zeros on the source branch's rows (a
    call with a source branch first), each ControlNet's scaled output on every other row, summed."""
    skip = ctx.frames if ctx.branches[:1] == (SOURCE,) and len(ctx.branches) > 1 else 0
    edit_latents, edit_text = latents[skip:], text[skip:]
    kwargs = unet_inputs(edit_text)
    down: list[torch.Tensor] | None = None
    mid: torch.Tensor | None = None
    for j, controlnet in enumerate(controlnets):
        images = control.images[j].to(edit_latents.dtype)
        repeats = edit_latents.shape[0] // images.shape[0]  # the edit branches of each frame share its image
        if repeats > 1:
            images = images.repeat(repeats, 1, 1, 1)
        scale = control.scales[j].to(edit_latents.dtype)
        blocks, middle = controlnet(
            edit_latents, t, encoder_hidden_states=kwargs["encoder_hidden_states"], controlnet_cond=images,
            conditioning_scale=1.0, added_cond_kwargs=kwargs.get("added_cond_kwargs"), return_dict=False,
        )  # fmt: skip
        blocks = [block * scale for block in blocks]
        middle = middle * scale
        down = blocks if down is None else [a + b for a, b in zip(down, blocks)]
        mid = middle if mid is None else mid + middle
    assert down is not None and mid is not None  # at least one ControlNet
    if skip:
        down = [_zeros_before(block, skip) for block in down]
        mid = _zeros_before(mid, skip)
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def _zeros_before(x: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([x.new_zeros((rows, *x.shape[1:])), x])
