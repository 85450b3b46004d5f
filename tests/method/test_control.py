"""ControlNets inside the passes (vedit.method.control): scale 0 is the uncontrolled pass bit for bit, a scale
acts, the residuals are diffusers' own added by hand, two ControlNets compose, every pass takes them, the source
branch never sees them, and every engine equals eager with them."""

from __future__ import annotations

import pytest
import torch

from helpers.engines import ENGINES, H, W, relative_error
from vedit import plugins
from vedit.control.controlnets import LoadedControlNet, random_controlnet
from vedit.method.control import ControlInputs
from vedit.model.loading import load_model
from vedit.runtime.engine_cache import EngineCache
from vedit.runtime.runner import Passes
from vedit_plugins.editors.pnp import CONV_LAYERS, QK_LAYERS

FRAMES = {"plain": 4, "frames": 2, "keyframe": 2, "keyframe_bounded": 3, "propagation": 2}
OPTIONS = type("Options", (), {"max_joint_keyframes": 2})()


@pytest.fixture(scope="module")
def sd():
    return load_model("tiny", device="cpu", dtype="fp32")


def controlnet(sd, seed: int) -> LoadedControlNet:
    return LoadedControlNet(random_controlnet(sd.unet, seed=seed, vae_scale=sd.vae_scale_factor), f"random@{seed}",
                            f"random@{seed}")  # fmt: skip


@pytest.fixture(scope="module")
def nets(sd):
    return [controlnet(sd, 1), controlnet(sd, 2)]


def images(frames: int, seed: int) -> torch.Tensor:
    return torch.rand((frames, 3, 8 * H, 8 * W), generator=torch.Generator().manual_seed(seed))


def control(frames: int, *scales: float) -> ControlInputs:
    return ControlInputs(tuple(images(frames, 10 + j) for j in range(len(scales))), torch.tensor(scales))


def inputs_of(sd, passes, name):
    embeds = sd.encode_prompt(["a cat", "", "a dog"])
    gen = torch.Generator().manual_seed(4)
    args = passes.example(name, FRAMES[name], (H, W), options=OPTIONS, embeds=embeds, generator=gen)
    if name != "plain":
        args = (*args[:3], torch.tensor([False, False]), *args[4:])  # no injection: the reference is the plain UNet
    return args


def run(sd, nets, name, ctrl, engine="eager", cache=None):
    with Passes(
        sd, [plugins.get("engine", engine)], strict=True, conv_layers=CONV_LAYERS, qk_layers=QK_LAYERS,
        controlnets=nets, cache=cache,
    ) as passes:  # fmt: skip
        args = inputs_of(sd, passes, name)
        out = passes.run(name, args, control=ctrl)
        return args, (out[0] if isinstance(out, tuple) else out)


@pytest.mark.parametrize("name", list(FRAMES))
def test_scale_zero_is_the_uncontrolled_pass_exactly_and_a_scale_acts(sd, nets, name):
    n = FRAMES[name]
    _, plain = run(sd, nets[:1], name, None)
    _, zero = run(sd, nets[:1], name, control(n, 0.0))
    _, one = run(sd, nets[:1], name, control(n, 1.0))
    assert torch.equal(zero, plain)
    assert relative_error(one, plain) > 1e-3
    if name != "plain":  # the source branch (the first third) never sees the control
        rows = one.shape[0] // 3
        assert torch.equal(one[:rows], plain[:rows])
        assert relative_error(one[rows:], plain[rows:]) > 1e-3


@torch.no_grad()
def test_the_frames_pass_adds_diffusers_residuals_to_the_edit_branches(sd, nets):
    n = FRAMES["frames"]
    ctrl = control(n, 0.7)
    args, got = run(sd, nets[:1], "frames", ctrl)
    latents, t, text = args[:3]
    # By hand: the ControlNet on the uncond and cond rows, each frame's image for both, scaled; zeros on the source.
    down, mid = nets[0].module(
        latents[n:], t, encoder_hidden_states=text[n:], controlnet_cond=ctrl.images[0].repeat(2, 1, 1, 1),
        conditioning_scale=0.7, return_dict=False,
    )  # fmt: skip
    pad = lambda x: torch.cat([torch.zeros_like(x[:n]), x])
    expected = sd.unet(
        latents, t, encoder_hidden_states=text, down_block_additional_residuals=[pad(d) for d in down],
        mid_block_additional_residual=pad(mid), return_dict=False,
    )[0]  # fmt: skip
    assert relative_error(got, expected) < 1e-5


def test_two_controlnets_add_their_residuals(sd, nets):
    n = FRAMES["frames"]
    _, plain = run(sd, nets, "frames", control(n, 0.0, 0.0))
    _, first = run(sd, nets, "frames", control(n, 0.8, 0.0))
    _, second = run(sd, nets, "frames", control(n, 0.0, 0.5))
    _, both = run(sd, nets, "frames", control(n, 0.8, 0.5))
    assert relative_error(both, first) > 1e-3 and relative_error(both, second) > 1e-3
    # The same ControlNet twice at a and b is that ControlNet once at a + b: residuals are summed, scales linear.
    twice = [nets[0], nets[0]]
    same = ControlInputs((images(n, 10), images(n, 10)), torch.tensor([0.3, 0.5]))
    _, summed = run(sd, twice, "frames", same)
    _, once = run(sd, nets[:1], "frames", ControlInputs((images(n, 10),), torch.tensor([0.8])))
    assert relative_error(summed, once) < 1e-5
    assert relative_error(once, plain) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_controlled_passes_through_every_engine_equal_eager(sd, nets, engine, tmp_path):
    names = ("keyframe", "propagation")
    expected = {name: run(sd, nets, name, control(FRAMES[name], 0.6, 1.2))[1] for name in names}
    plain = {name: run(sd, nets, name, None)[1] for name in names}
    with Passes(
        sd, [plugins.get("engine", engine)], strict=True, conv_layers=CONV_LAYERS, qk_layers=QK_LAYERS,
        controlnets=nets, cache=EngineCache(tmp_path),
    ) as passes:  # fmt: skip
        for name in names:
            args = inputs_of(sd, passes, name)
            got = passes.run(name, args, control=control(FRAMES[name], 0.6, 1.2))
            # the scales are inputs of the graph, not constants baked in at the build
            zero = passes.run(name, args, control=control(FRAMES[name], 0.0, 0.0))
            first = lambda out: out[0] if isinstance(out, tuple) else out
            assert relative_error(first(got), expected[name]) < 1e-4, name
            assert relative_error(first(zero), plain[name]) < 1e-4, name
    assert set(passes.used.values()) == {engine}


@pytest.mark.parametrize("spec", ["tiny-sd2-v", "tiny-sdxl"])
def test_every_family_takes_its_controlnet_in_the_passes(spec):
    model = load_model(spec, device="cpu", dtype="fp32")
    nets = [LoadedControlNet(random_controlnet(model.unet, vae_scale=model.vae_scale_factor), "random", "random")]
    with Passes(model, [plugins.get("engine", "eager")], controlnets=nets) as passes:
        text = model.encode_prompt(["a cat", "", "a dog"], (8 * H, 8 * W))
        args = passes.example("frames", 2, (H, W), embeds=text, generator=torch.Generator().manual_seed(1))
        plain = passes.run("frames", args)
        zero = passes.run("frames", args, control=control(2, 0.0))
        one = passes.run("frames", args, control=control(2, 1.0))
    assert torch.equal(zero, plain)
    assert torch.equal(one[:2], plain[:2])  # the source branch
    assert relative_error(one[2:], plain[2:]) > 1e-3


def test_the_engine_cache_key_covers_the_controlnets_weights(sd, nets, tmp_path):
    def parts(controlnets, controlled):
        with Passes(sd, [plugins.get("engine", "eager")], controlnets=controlnets) as passes:
            target = passes._target("frames", (2,), controlled)
            return target.parts("torchscript", [(6, 4, H, W)]), target

    plain, target = parts([], False)
    assert "control" not in plain  # a run without controls keeps the keys it always had
    first, target = parts(nets[:1], True)
    other, _ = parts(nets[1:], True)
    assert first["control"] != other["control"]
    assert nets[0].fingerprint in first["control"]
    cache = EngineCache(tmp_path)
    folders = {cache.folder(p, target.IDENTITY) for p in (plain, first, other)}
    assert len(folders) == 3  # one entry each: swapping ControlNets does not overwrite another's engines
    assert target.spec.batched_inputs["control_0"] == "frames"
