"""``vedit.edit(..., pipeline=pipe)``: an already loaded diffusers pipeline is edited with, keyed by its weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vedit
from conftest import make_clip
from vedit.errors import ConfigError
from vedit.model.loading import load_model
from vedit.model.pipelines import from_pipeline

RUN = dict(prompt="a watercolor", steps=2, inversion_steps=2, size="64x48", output_size="working", device="cpu",
           dtype="fp32", seed=0)  # fmt: skip


def _pipeline(spec: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    model = load_model(spec, device="cpu", dtype="fp32")
    parts = dict(unet=model.unet, vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                 scheduler=model.scheduler)  # fmt: skip
    if model.text_encoder_2 is not None:
        return StableDiffusionXLPipeline(**parts, text_encoder_2=model.text_encoder_2, tokenizer_2=model.tokenizer_2)
    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _frames(folder) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=3)


def test_a_pipeline_edits_exactly_as_the_same_weights_loaded_by_name(clip, tmp_path):
    by_name = vedit.edit(clip, tmp_path / "a", model="tiny", **RUN)
    given = vedit.edit(clip, tmp_path / "b", pipeline=_pipeline("tiny"), **RUN)
    np.testing.assert_array_equal(_frames(tmp_path / "b"), _frames(tmp_path / "a"))
    assert by_name.inversion == "computed" and given.inversion == "computed"  # another fingerprint, another key
    again = vedit.edit(clip, tmp_path / "c", pipeline=_pipeline("tiny"), **RUN)
    assert again.inversion == "cached"  # the same weights, loaded again: the same key


def test_the_fingerprint_is_the_weights_and_changes_with_any_of_them():
    first, second = from_pipeline(_pipeline("tiny")), from_pipeline(_pipeline("tiny"))
    assert first.fingerprint == second.fingerprint and first.fingerprint.startswith("weights:sha256:")
    assert from_pipeline(_pipeline("tiny@1")).fingerprint != first.fingerprint
    pipe = _pipeline("tiny")
    with torch.no_grad():
        pipe.unet.up_blocks[1].resnets[1].conv2.weight[0, 0, 0, 0] += 1e-3  # as a fused LoRA would
    assert from_pipeline(pipe).fingerprint != first.fingerprint


def test_the_pipelines_scheduler_settings_carry_over_to_ddim():
    from diffusers import EulerDiscreteScheduler

    pipe = _pipeline("tiny-sd2-v")
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    model = from_pipeline(pipe)
    assert type(model.scheduler).__name__ == "DDIMScheduler"
    assert model.scheduler.config.prediction_type == "v_prediction"
    assert model.scheduler.config.timestep_spacing == "trailing"


def test_an_sdxl_pipeline_is_an_sdxl_model(clip, tmp_path):
    pipe = _pipeline("tiny-sdxl")
    pipe.register_to_config(force_zeros_for_empty_prompt=False)
    model = from_pipeline(pipe)
    assert model.family.name == "sdxl" and model.text_encoder_2 is pipe.text_encoder_2
    assert not model.force_zeros_for_empty_prompt
    result = vedit.edit(clip, tmp_path / "out", pipeline=pipe, **RUN)
    assert result.frames == 3 and np.isfinite(_frames(tmp_path / "out")).all()


def test_sd_and_pipeline_together_are_refused(clip, tmp_path):
    with pytest.raises(ConfigError, match="either sd= or pipeline="):
        vedit.edit(clip, tmp_path / "out", sd=load_model("tiny"), pipeline=_pipeline("tiny"), **RUN)


def test_something_that_is_no_pipeline_is_one_line(clip, tmp_path):
    with pytest.raises(ConfigError, match="this object has no unet, vae, text_encoder, tokenizer, scheduler"):
        vedit.edit(clip, tmp_path / "out", pipeline=object(), **RUN)
