"""The controlled UNet: the plain handler reproduces the unmodified UNet, and injection acts on the edit branches."""

from __future__ import annotations

import pytest
import torch

from vedit.method.attention import PlainAttention
from vedit.method.unet import COND, SOURCE, UNCOND, CallContext, ControlledUNet, Injection
from vedit.model.loading import load_model


@pytest.fixture(scope="module")
def sd():
    return load_model("tiny@3", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def embeds(sd):
    prompts = ["a photo of a cat", "", "a watercolor of a dog"]
    return dict(zip((SOURCE, UNCOND, COND), sd.encode_prompt(prompts).split(1)))


def test_plain_handler_reproduces_the_unmodified_unet(sd, embeds):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, 8, 8, generator=gen)
    text = torch.cat([embeds[b].expand(2, -1, -1) for b in (SOURCE, UNCOND, COND)])
    t = torch.tensor(301)
    expected = sd.unet(x, t, encoder_hidden_states=text).sample
    with ControlledUNet(sd.unet, conv_layers=("up_blocks.1.resnets.1",), qk_layers=("up_blocks.2",)) as controlled:
        got = controlled(x, t, text, CallContext((SOURCE, UNCOND, COND), 2, PlainAttention()))
        injected = controlled(
            x, t, text, CallContext((SOURCE, UNCOND, COND), 2, PlainAttention(), Injection(True, True))
        )
        as_tensor = controlled(
            x,
            t,
            text,
            CallContext((SOURCE, UNCOND, COND), 2, PlainAttention(), Injection(torch.tensor(True), torch.tensor(True))),
        )
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    # injection leaves the source branch alone and changes the others; flags as tensors act the same
    assert torch.allclose(injected[:2], expected[:2], atol=1e-5)
    assert not torch.allclose(injected[2:], expected[2:], atol=1e-3)
    assert torch.allclose(as_tensor, injected, atol=1e-6)
    # uninstalled: the UNet is as it was
    assert torch.equal(sd.unet(x, t, encoder_hidden_states=text).sample, expected)
