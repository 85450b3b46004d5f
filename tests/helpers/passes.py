"""A test plugin's own UNet pass, registered the way a third-party package registers one (``register_passes``
and ``vedit.PassSpec``): per-frame attention whose output each frame scales by a gain of its own, an input
with one row per frame."""

from __future__ import annotations

import torch

from vedit import PassSpec, plugins
from vedit.method.attention import per_frame_attention, project_out, project_qkv
from vedit.method.passes import BRANCHES, PassModule, branched_example
from vedit.method.unet import CallContext, Injection
from vedit.plugins.hookspecs import hookimpl


class GainAttention:
    """Each frame's own self-attention, times its gain."""

    def __init__(self, gains: torch.Tensor):
        self.gains = gains

    def self_attention(self, layer, attn, hidden_states, ctx):
        query, key, value = project_qkv(attn, hidden_states, ctx, layer)
        out = project_out(attn, per_frame_attention(attn, query, key, value))  # (branches·n, seq, dim)
        gains = self.gains.to(out.dtype).repeat(len(ctx.branches))  # branch-major, as the batch
        return out * gains.reshape(-1, 1, 1)


class GainPass(PassModule):
    """``(latents[3n], t, text[3n], flags, gains (n,)) → ε``."""

    name = "gain"
    input_names = ("latents", "t", "text", "flags", "gains")

    def forward(self, latents, t, text, flags, gains):
        ctx = CallContext(
            branches=BRANCHES, frames=latents.shape[0] // 3, attention=GainAttention(gains),
            injection=Injection(conv=flags[0], qk=flags[1]),
        )  # fmt: skip
        return self.run_unet(latents, t, text, ctx)


def gain_example(request):
    return (*branched_example(request), torch.linspace(0.5, 1.5, request.frames, device=request.device))


GAIN = PassSpec(
    name="gain", build=GainPass, example=gain_example,
    batched_inputs={"latents": "rows", "text": "rows", "gains": "frames"},
)  # fmt: skip


class GainPlugin:
    @hookimpl
    def register_passes(self, register):
        register(GAIN)


def register_gain_pass() -> None:
    """Register the plugin in this process (conftest's fresh registry forgets it after the test)."""
    plugins.get_plugin_manager().register(GainPlugin(), name="test-gain-pass")
