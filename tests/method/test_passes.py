"""The passes (vedit.method.passes): keyframe partners drawn for bounded joint attention."""

from __future__ import annotations

import pytest
import torch

from vedit import plugins
from vedit.method.passes import PropagatedAttention, joint_partners
from vedit.method.unet import COND, SOURCE, UNCOND, CallContext
from vedit.model.loading import load_model
from vedit.runtime.runner import Passes


def test_with_k_at_most_m_every_keyframe_attends_to_all_and_nothing_is_drawn():
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    for keys, limit in ((1, 1), (5, 5), (5, 32), (25, 32)):
        partners = joint_partners(keys, limit, generator)
        assert torch.equal(partners, torch.arange(keys).repeat(keys, 1))
    assert torch.equal(generator.get_state(), state)  # the keyframe draws of the run are untouched


def test_bounded_partners_are_self_neighbours_and_one_per_stratum():
    generator = torch.Generator().manual_seed(1)
    keys, limit = 40, 8
    partners = joint_partners(keys, limit, generator)
    assert partners.shape == (keys, limit) and partners.dtype == torch.int64
    for k, row in enumerate(partners.tolist()):
        assert row == sorted(set(row)) and len(row) == limit  # distinct, sorted
        fixed = {k, *(n for n in (k - 1, k + 1) if 0 <= n < keys)}
        assert fixed <= set(row)
        rest = [j for j in range(keys) if j not in fixed]
        drawn = sorted(set(row) - fixed)
        need = limit - len(fixed)
        # one from each of `need` consecutive strata of the other keyframes: spread over the clip
        for i, pick in enumerate(drawn):
            assert rest[i * len(rest) // need] <= pick < (rest + [keys])[(i + 1) * len(rest) // need]
    again = joint_partners(keys, limit, torch.Generator().manual_seed(1))
    assert torch.equal(partners, again)  # seeded
    assert not torch.equal(partners, joint_partners(keys, limit, generator))  # redrawn at the next step
    assert torch.equal(joint_partners(6, 2, generator)[:, :2].sort().values[0], torch.tensor([0, 1]))


@pytest.fixture(scope="module")
def sd():
    return load_model("tiny@3", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def embeds(sd):
    prompts = ["a photo of a cat", "", "a watercolor of a dog"]
    return dict(zip((SOURCE, UNCOND, COND), sd.encode_prompt(prompts).split(1)))


class Capture:
    """Wraps a handler and keeps each layer's self-attention output."""

    def __init__(self, inner):
        self.inner, self.outputs = inner, {}

    def self_attention(self, layer, attn, hidden_states, ctx):
        out = self.inner.self_attention(layer, attn, hidden_states, ctx)
        self.outputs[layer.index] = out
        return out


def test_an_exact_copy_of_the_keyframe_gets_exactly_its_attention_output(sd, embeds):
    gen = torch.Generator().manual_seed(5)
    frames = torch.randn(4, 4, 8, 8, generator=gen)
    frames[2] = frames[0]  # frame 2 is a copy of keyframe 0
    source = torch.randn(4, 4, 8, 8, generator=gen)
    source[2] = source[0]
    t = torch.tensor(501)
    flags = torch.tensor([False, False])
    text = lambda n: torch.cat([embeds[b].expand(n, -1, -1) for b in (SOURCE, UNCOND, COND)])  # noqa: E731
    with Passes(sd, [plugins.get("engine", "eager")]) as passes:
        key = torch.cat([source[:1], frames[:1], frames[:1]])
        _, records = passes.keyframe(key, t, text(1), flags)
        # Chunk 0: its one keyframe in both slots with weight 1, exactly as every chunk runs.
        slots = torch.tensor([0, 0])
        chosen = []
        for f, o in zip(records[0::2], records[1::2]):
            chosen += [
                f.index_select(0, slots),
                o.view(3, 1, *o.shape[1:]).index_select(1, slots).reshape(6, *o.shape[1:]),
            ]
        capture = Capture(PropagatedAttention(list(zip(chosen[0::2], chosen[1::2])), torch.ones(4)))
        batch = torch.cat([source, frames, frames])
        by_hand = passes.custom(batch, t, text(4), CallContext((SOURCE, UNCOND, COND), 4, capture), kind="propagation")
        assert len(capture.outputs) == len(passes.layers) == 16
        # ...and the propagation pass module gives the same ε as its handler run by hand.
        via_pass = passes.propagate(batch, t, text(4), flags, torch.ones(4), chosen)
    assert torch.equal(via_pass, by_hand)
    for index, out in capture.outputs.items():
        out = out.view(3, 4, *out.shape[1:])
        recorded = records[2 * index + 1].view(3, 1, *out.shape[2:])
        assert torch.equal(out[:, 2], recorded[:, 0]), f"block {index}"
        assert torch.equal(out[:, 0], recorded[:, 0])
