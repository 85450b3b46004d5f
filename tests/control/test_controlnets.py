"""ControlNets loaded (vedit.control.controlnets): random ones act, a saved folder reads back weight for weight,
one of another family or width is refused in one line, and the step scales follow diffusers' window."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vedit.control.controlnets import load_controlnet, random_controlnet
from vedit.control.sources import step_scales
from vedit.errors import ModelError
from vedit.method.control import ControlFeed
from vedit.model.loading import load_model


@pytest.fixture(scope="module")
def sd():
    return load_model("tiny", device="cpu", dtype="fp32")


def test_a_random_controlnet_fits_its_model_and_its_residual_convolutions_are_not_zero(sd):
    loaded = load_controlnet("random@3", sd)
    assert list(loaded.module.config.block_out_channels) == list(sd.unet.config.block_out_channels)
    assert float(loaded.module.controlnet_mid_block.weight.abs().sum()) > 0
    # the encoder is the UNet's, copied (as ControlNet training starts)
    assert torch.equal(loaded.module.conv_in.weight, sd.unet.conv_in.weight)
    assert load_controlnet("random@3", sd).fingerprint == loaded.fingerprint
    assert load_controlnet("random@4", sd).fingerprint != loaded.fingerprint


def test_a_saved_controlnet_folder_reads_back_with_the_same_weights(sd, tmp_path):
    made = random_controlnet(sd.unet, seed=5)
    made.save_pretrained(tmp_path / "cn")
    loaded = load_controlnet(str(tmp_path / "cn"), sd)
    assert loaded.fingerprint == load_controlnet("random@5", sd).fingerprint
    for (name, a), (_, b) in zip(made.state_dict().items(), loaded.module.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_controlnet_of_another_family_is_refused_in_one_line(sd):
    sdxl = load_model("tiny-sdxl", device="cpu", dtype="fp32")
    other = random_controlnet(sdxl.unet)
    from vedit.control.controlnets import check_fits

    with pytest.raises(ModelError) as caught:
        check_fits(other.config, sd, "xl-canny")
    text = str(caught.value)
    assert "\n" not in text
    assert "ControlNet 'xl-canny' does not fit model 'tiny': it is made for sdxl models, the model is sd1" in text
    sd2 = load_model("tiny-sd2", device="cpu", dtype="fp32")
    with pytest.raises(ModelError, match="made for sd2 models, the model is sd1"):
        check_fits(random_controlnet(sd2.unet).config, sd, "sd2-cn")


def test_a_controlnet_of_the_family_but_other_widths_is_refused(sd):
    from vedit.control.controlnets import check_fits

    config = dict(random_controlnet(sd.unet).config)
    config["block_out_channels"] = [32, 32, 64, 64]
    wanted = r"its block_out_channels is \[32, 32, 64, 64\], the UNet's \[16, 16, 32, 32\]"
    with pytest.raises(ModelError, match=wanted):
        check_fits(config, sd, "wide")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("{tmp}/missing-cn", "neither an existing diffusers folder nor a hub id"),
        ("{tmp}/file.safetensors", "is a single file"),
        ("{tmp}/empty", "has no config.json"),
        ("someone/not-cached-controlnet", "cannot be loaded from the local Hugging Face cache or the hub"),
    ],
)
def test_what_is_not_a_controlnet_is_one_line(sd, tmp_path, monkeypatch, spec, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "file.safetensors").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError) as caught:
        load_controlnet(spec.format(tmp=tmp_path), sd)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_step_scales_follow_the_window_of_the_steps_run():
    # 10 steps, start 0.2, end 0.7: steps 2..6 act (i/10 >= 0.2 and (i+1)/10 <= 0.7)
    rows = step_scales(10, [0.5, 2.0], 0.2, 0.7)
    assert [row[0] for row in rows] == [0, 0, 0.5, 0.5, 0.5, 0.5, 0.5, 0, 0, 0]
    assert [row[1] for row in rows] == [0, 0, 2.0, 2.0, 2.0, 2.0, 2.0, 0, 0, 0]
    assert step_scales(3, [1.0], 0.0, 1.0) == [[1.0], [1.0], [1.0]]


def test_the_feed_picks_each_calls_frames_and_steps_scales():
    frames = np.arange(5 * 8 * 8 * 3, dtype=np.uint8).reshape(5, 8, 8, 3)
    feed = ControlFeed([frames], [[0.0], [0.7]], torch.device("cpu"))
    got = feed.inputs(torch.tensor([3, 1]), 1)
    expected = torch.from_numpy(frames[[3, 1]]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(got.images[0], expected)
    assert got.scales.tolist() == pytest.approx([0.7])
    doubled = feed.inputs(torch.tensor([3, 1]), 0, repeats=2)
    assert torch.equal(doubled.images[0], torch.cat([expected, expected]))
    assert doubled.scales.tolist() == [0.0]


def test_steps_outside_the_window_run_the_uncontrolled_passes():
    from vedit.method.denoise import Denoiser, EditPlan, Step

    calls = []

    class Recording:
        def plain(self, batch, t, text, *, kind=None, **control):
            calls.append(control.get("control"))
            return torch.zeros_like(batch)

    frames = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    feed = ControlFeed([frames], step_scales(4, [0.7], 0.25, 0.75), torch.device("cpu"))
    assert [feed.acts(i) for i in range(4)] == [False, True, True, False]
    latents = torch.zeros(2, 4, 1, 1)
    plan = EditPlan(timesteps=torch.tensor([900, 600, 300, 100]), start_latents=latents)
    embeds = {"uncond": torch.zeros(1, 3, 2), "cond": torch.zeros(1, 3, 2)}
    denoiser = Denoiser(Recording(), plan, embeds, 7.5, with_source=False, control=feed)
    for index, t in enumerate(plan.timesteps):
        denoiser(torch.arange(2), latents, Step(index=index, t=t, count=4))
    assert [call is not None for call in calls] == [False, True, True, False]
    assert calls[1].images[0].shape == (4, 3, 8, 8)  # the plain pass: one image per row, both branches
    assert calls[1].scales.tolist() == pytest.approx([0.7])


def test_a_model_used_run_after_run_keeps_the_last_runs_controlnets_while_they_are_unchanged(sd, tmp_path):
    import os
    from types import SimpleNamespace

    from vedit.config import RunConfig
    from vedit.control.sources import ControlSource
    from vedit.pipeline.stages import load_controlnets

    random_controlnet(sd.unet, seed=7).save_pretrained(tmp_path / "cn")
    folder = ControlSource("a.mp4", 1.0, None, "a.mp4", str(tmp_path / "cn"))
    seeded = ControlSource("b.mp4", 1.0, None, "b.mp4", "random@1")
    config = RunConfig(prompt="x")
    first = load_controlnets(sd, config, SimpleNamespace(controls=[folder, seeded]))
    again = load_controlnets(sd, config, SimpleNamespace(controls=[folder, seeded]))
    assert again[0] is first[0] and again[1] is first[1]  # neither loaded nor hashed again
    weights = next((tmp_path / "cn").glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    (changed,) = load_controlnets(sd, config, SimpleNamespace(controls=[folder]))
    assert changed is not first[0] and changed.fingerprint == first[0].fingerprint  # read again: same bytes
    assert list(sd.last_controlnets.values()) == [changed]  # the ControlNets no longer used are let go


def test_the_controls_digest_follows_the_frames_scales_weights_and_window():
    from types import SimpleNamespace

    from vedit.pipeline.stages import Controls

    frames = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    source, net = SimpleNamespace(scale=0.5), SimpleNamespace(fingerprint="sha256:a")
    digest = Controls([source], [net], [frames], (0.0, 1.0)).digest
    assert Controls([source], [net], [frames.copy()], (0.0, 1.0)).digest == digest
    changed = frames.copy()
    changed[2, 7, 7, 1] = 1
    assert Controls([source], [net], [changed], (0.0, 1.0)).digest != digest
    assert Controls([SimpleNamespace(scale=0.6)], [net], [frames], (0.0, 1.0)).digest != digest
    assert Controls([source], [SimpleNamespace(fingerprint="sha256:b")], [frames], (0.0, 1.0)).digest != digest
    assert Controls([source], [net], [frames], (0.0, 0.8)).digest != digest
