"""The method's UNet passes as modules with explicit tensor inputs and outputs.

These modules are the one implementation of what PnP and TokenFlow do inside the UNet. Every
engine runs them: eagerly, under ``torch.compile``, traced by TorchScript, exported to ONNX (for
ONNX Runtime and TensorRT). Nothing that changes from step to step or chunk to chunk is a Python
value inside them: the timestep, the injection flags, the blend weights and the keyframes'
records are inputs, and the keyframe pass returns its records instead of storing them.

Batches are branch-major ``[source × n, uncond × n, cond × n]``.

========== ============================================================== ==========================
pass       inputs                                                         outputs
========== ============================================================== ==========================
plain      latents (b,4,h,w), t (), text (b,L,D)                          ε
frames     latents (3n,…), t, text (3n,…), flags (2,) bool [conv, qk]     ε
keyframe   latents (3K,…), t, text (3K,…), flags                          ε, per block: features
                                                                          (K,seq,dim), outputs
                                                                          (3K,seq,dim)
keyframe_  as keyframe, and partners (K,M) int64: the keyframes each one    as keyframe
bounded    attends to (``--max-joint-keyframes``)
propagation latents (3n,…), t, text (3n,…), flags, weights (n,), per       ε
           block: features (2,seq,dim) and outputs (6,seq,dim) of the
           keyframes [i, i−1]
========== ============================================================== ==========================

Engines find them in the pass registry (:mod:`vedit.plugins.passes`): vedit registers ``plain`` and
``frames`` here, the ``tokenflow`` propagator the other three, each module class being its spec's
``build``. The modules and their attention handlers are public building blocks for a plugin's own pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..plugins.hookspecs import hookimpl
from ..plugins.passes import ExampleRequest, PassSpec
from ..runtime import profiling
from .attention import (
    PlainAttention,
    bounded_joint_attention,
    cosine_nearest,
    in_graph,
    joint_attention,
    per_frame_attention,
    project_out,
    project_qkv,
)
from .unet import COND, SOURCE, UNCOND, CallContext, ControlledUNet, Injection, LayerInfo

# Part of every engine cache key: raise it whenever a pass computes something different.
PASS_VERSION = 1

BRANCHES = (SOURCE, UNCOND, COND)


def select_keyframes(records: list[torch.Tensor], slots: torch.Tensor) -> list[torch.Tensor]:
    """The propagation pass's record inputs: from the keyframe pass's records ``[features (K, seq,
    dim), outputs (3K, seq, dim), …]``, those of the two keyframes ``slots`` = [i, i−1] (positions
    among the keyframes, a tensor on the records' device): features (2, seq, dim), outputs (6, seq, dim)."""
    chosen = []
    for features, outputs in zip(records[0::2], records[1::2]):
        keys, seq, dim = features.shape
        chosen.append(features.index_select(0, slots))
        chosen.append(outputs.view(3, keys, seq, dim).index_select(1, slots).reshape(6, seq, dim))
    return chosen


def joint_partners(keys: int, limit: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The keyframes each keyframe's extended attention covers, ``(keys, min(keys, limit))`` int64.

    With ``keys ≤ limit`` every row is ``0 … keys−1``: all keyframes, in order, exactly the
    published extended attention (and nothing is drawn). Otherwise each row holds the keyframe
    itself, its neighbours before and after, and one keyframe drawn with ``generator`` from each of
    ``limit − 3`` equal, consecutive strata of the others, so the rest of the clip is covered evenly;
    rows are sorted.
    """
    width = min(keys, limit)
    if width == keys:
        return torch.arange(keys).repeat(keys, 1)
    rows = []
    for k in range(keys):
        fixed = [k] + [n for n in (k - 1, k + 1) if 0 <= n < keys]
        fixed = fixed[:width]
        rest = [j for j in range(keys) if j not in fixed]
        need = width - len(fixed)
        offsets = torch.rand(need, generator=generator).tolist() if need else []
        picks = []
        for i, offset in enumerate(offsets):
            low, high = i * len(rest) // need, (i + 1) * len(rest) // need  # never empty: need ≤ len(rest)
            picks.append(rest[low + min(int(offset * (high - low)), high - low - 1)])
        rows.append(sorted(fixed + picks))
    return torch.tensor(rows, dtype=torch.int64)


class KeyframeAttention:
    """Keyframe pass: extended attention in the edited branches, per-frame in the source branch.

    Records, per transformer block, the source branch's self-attention input (K, seq, dim) and
    the self-attention output of every branch (3K, seq, dim) into ``records`` (keyed by block).
    With ``partners`` (K, M), keyframe i attends only to the keyframes ``partners[i]``.
    """

    def __init__(self, records: dict[int, tuple[torch.Tensor, torch.Tensor]], partners: torch.Tensor | None = None):
        self.records = records
        self.partners = partners

    def _joint(self, attn, query, key, value) -> torch.Tensor:
        if self.partners is None:
            return joint_attention(attn, query, key, value)
        return bounded_joint_attention(attn, query, key, value, self.partners)

    def self_attention(
        self, layer: LayerInfo, attn: nn.Module, hidden_states: torch.Tensor, ctx: CallContext
    ) -> torch.Tensor:
        query, key, value = project_qkv(attn, hidden_states, ctx, layer)
        parts = []
        for branch in ctx.branches:
            s = ctx.branch(branch)
            attend = per_frame_attention if branch == SOURCE else self._joint
            parts.append(attend(attn, query[s], key[s], value[s]))
        out = project_out(attn, torch.cat(parts))  # (3K, seq, dim)
        # A copy: a slice would keep the whole three-branch input of the layer alive.
        self.records[layer.index] = (hidden_states[ctx.branch(SOURCE)].clone(), out)
        return out


class PropagatedAttention:
    """Propagation pass: self-attention is not computed; the keyframes' outputs flow along the
    nearest-neighbour field of the source features, blended by ``weights``.

    ``records[block]`` holds the features (2, seq, dim) and outputs (branches·2, seq, dim) of the
    keyframes [i, i−1]; ``weights`` (n,) is the weight of keyframe i (1 for chunk 0, whose two
    keyframes are the same one).
    """

    def __init__(
        self,
        records: list[tuple[torch.Tensor, torch.Tensor]],
        weights: torch.Tensor,
        nearest: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ):
        self.records = records
        self.weights = weights
        self.nearest = nearest

    def _search(self, source: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Nearest keyframe token (in ``features`` (seq, dim)) of each token of ``source`` (n, seq, dim)."""
        if self.nearest is None:
            return cosine_nearest(source, features)
        return self.nearest(source.reshape(-1, source.shape[-1]), features)

    def self_attention(
        self, layer: LayerInfo, attn: nn.Module, hidden_states: torch.Tensor, ctx: CallContext
    ) -> torch.Tensor:
        branches = len(ctx.branches)
        _, seq, dim = hidden_states.shape
        n = hidden_states.shape[0] // branches
        source = hidden_states[ctx.branch(SOURCE)]  # (n, seq, dim)
        features, outputs = self.records[layer.index]
        outputs = outputs.reshape(branches, 2, seq, dim)
        gathered = []
        for slot in range(2):
            if in_graph():
                nearest = self._search(source, features[slot])
            else:
                with profiling.stage("nn"):  # the search's own time, when it runs eagerly
                    nearest = self._search(source, features[slot])
            gathered.append(outputs[:, slot].index_select(1, nearest).reshape(branches, n, seq, dim))
        w = self.weights.to(gathered[0].dtype).reshape(1, n, 1, 1)
        out = w * gathered[0] + (1 - w) * gathered[1]
        return out.reshape(branches * n, seq, dim)


class PassModule(nn.Module):
    """A UNet pass with tensor inputs and outputs; ``controlled`` must be installed while it runs
    eagerly or is traced. A subclass is itself a :attr:`~vedit.PassSpec.build`: ``nearest`` is the
    nearest-neighbour search handed to a pass that searches (None: its own, in the graph)."""

    name = ""
    input_names: tuple[str, ...] = ()

    def __init__(
        self, controlled: ControlledUNet, nearest: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    ):
        super().__init__()
        self.unet = controlled.unet
        self.nearest = nearest
        self._controlled = [controlled]  # a list, so nn.Module does not register it

    @property
    def layers(self) -> list[LayerInfo]:
        return self._controlled[0].layers

    def run_unet(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, ctx: CallContext) -> torch.Tensor:
        """The controlled UNet on ``latents`` with ``ctx`` acting inside."""
        return self._controlled[0].run(latents, t, text, ctx)

    def output_names(self) -> list[str]:
        return ["eps"]


class PlainPass(PassModule):
    """``(latents, t, text) → ε``: the unmodified UNet (inversion, reconstruction, per-frame edits)."""

    name = "plain"
    input_names = ("latents", "t", "text")

    def forward(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        ctx = CallContext(branches=(SOURCE,), frames=latents.shape[0], attention=PlainAttention())
        return self.run_unet(latents, t, text, ctx)


class FramesPass(PassModule):
    """``(latents[3n], t, text[3n], flags) → ε``: per-frame attention with PnP injection."""

    name = "frames"
    input_names = ("latents", "t", "text", "flags")

    def forward(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
        ctx = CallContext(
            branches=BRANCHES, frames=latents.shape[0] // 3, attention=PlainAttention(),
            injection=Injection(conv=flags[0], qk=flags[1]),
        )  # fmt: skip
        return self.run_unet(latents, t, text, ctx)


class KeyframePass(PassModule):
    """``(latents[3K], t, text[3K], flags) → (ε, features₀, outputs₀, features₁, …)``."""

    name = "keyframe"
    input_names = ("latents", "t", "text", "flags")

    def output_names(self) -> list[str]:
        names = ["eps"]
        for layer in self.layers:
            names += [f"features_{layer.index}", f"outputs_{layer.index}"]
        return names

    def forward(
        self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, flags: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        return self._keyframes(latents, t, text, flags, None)

    def _keyframes(self, latents, t, text, flags, partners):
        records: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        ctx = CallContext(
            branches=BRANCHES, frames=latents.shape[0] // 3, attention=KeyframeAttention(records, partners),
            injection=Injection(conv=flags[0], qk=flags[1]),
        )  # fmt: skip
        eps = self.run_unet(latents, t, text, ctx)
        flat = [eps]
        for index in sorted(records):
            flat += list(records[index])
        return tuple(flat)


class BoundedKeyframePass(KeyframePass):
    """``(latents[3K], t, text[3K], flags, partners (K, M)) → as KeyframePass``: each keyframe's
    extended attention covers only the keyframes its row of ``partners`` names."""

    name = "keyframe_bounded"
    input_names = ("latents", "t", "text", "flags", "partners")

    def forward(
        self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, flags: torch.Tensor, partners: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        return self._keyframes(latents, t, text, flags, partners)


class PropagationPass(PassModule):
    """``(latents[3n], t, text[3n], flags, weights, features₀, outputs₀, …) → ε``.

    ``nearest`` replaces the in-graph cosine search with a nearest-neighbour backend's own
    (which may not be traceable: then only the eager engine can run this pass).
    """

    name = "propagation"

    @property
    def input_names(self) -> tuple[str, ...]:  # type: ignore[override]
        names = ["latents", "t", "text", "flags", "weights"]
        for layer in self.layers:
            names += [f"features_{layer.index}", f"outputs_{layer.index}"]
        return tuple(names)

    def forward(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        flags: torch.Tensor,
        weights: torch.Tensor,
        *records: torch.Tensor,
    ) -> torch.Tensor:
        pairs = [(records[2 * i], records[2 * i + 1]) for i in range(len(records) // 2)]
        ctx = CallContext(
            branches=BRANCHES, frames=latents.shape[0] // 3,
            attention=PropagatedAttention(pairs, weights, self.nearest),
            injection=Injection(conv=flags[0], qk=flags[1]),
        )  # fmt: skip
        return self.run_unet(latents, t, text, ctx)


def branched_example(request: ExampleRequest) -> tuple[torch.Tensor, ...]:
    """``(latents[3n], t, text[3n], flags)``: the inputs every three-branch pass starts with."""
    return (request.latents(3 * request.frames), request.timestep(), request.text(3), request.flags())


def _plain_example(request: ExampleRequest) -> tuple[torch.Tensor, ...]:
    return (request.latents(request.frames), request.timestep(), request.text(1))


PLAIN = PassSpec(
    name="plain", build=PlainPass, example=_plain_example, rows_per_frame=1,
    description="the unmodified UNet: inversion, reconstruction, per-frame edits without a source branch",
)  # fmt: skip
FRAMES = PassSpec(
    name="frames", build=FramesPass, example=branched_example,
    description="per-frame attention in the three branches, with PnP injection",
)  # fmt: skip


@hookimpl
def register_passes(register: Callable[[PassSpec], None]) -> None:
    """The host's own passes; the tokenflow propagator registers its keyframe and propagation passes."""
    register(PLAIN)
    register(FRAMES)
