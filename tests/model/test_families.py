"""Model families: recognition from the UNet's config, each family's conditioning (SDXL's two encoders, pooled
embedding and size ids), the layers the method acts in, and every family through a compiled engine."""

from __future__ import annotations

import pytest
import torch

from helpers.engines import relative_error
from helpers.plugins import registered_family
from vedit import plugins
from vedit.errors import ModelError
from vedit.method.unet import transformer_block_names
from vedit.model.families import ModelFamily, family_of
from vedit.model.loading import load_model
from vedit.runtime.runner import Passes
from vedit_plugins.editors.pnp import PnP

FAMILIES = {"tiny": "sd1", "tiny-sd2": "sd2", "tiny-sd2-v": "sd2", "tiny-sdxl": "sdxl"}


@pytest.fixture(scope="module")
def models():
    return {spec: load_model(spec, device="cpu", dtype="fp32") for spec in FAMILIES}


@pytest.mark.parametrize("spec", FAMILIES)
def test_each_built_model_is_recognised_as_its_family(models, spec):
    assert models[spec].family.name == FAMILIES[spec]


def test_the_real_architectures_are_recognised_from_their_configs():
    from vedit.model.builders import unet_config

    names = {spec: family_of(unet_config(spec)).name for spec in ("random:sd15", "random:sd21", "random:sd21-v")}
    assert names == {"random:sd15": "sd1", "random:sd21": "sd2", "random:sd21-v": "sd2"}
    assert family_of(unet_config("random:sdxl")).name == "sdxl"


def test_an_unknown_architecture_is_one_line_naming_the_registered_families():
    config = {"down_block_types": ["DownBlock2D"], "up_block_types": ["UpBlock2D"]}
    with pytest.raises(ModelError, match=r"model 'odd' is of no known model family \(registered: sd1, sd2, sdxl\)"):
        family_of(config, "odd")


def test_a_plugin_family_claims_a_model_before_the_built_in_ones(models):
    class Wide(ModelFamily):
        name = "wide"
        conv_layers = ("up_blocks.2.resnets.0",)

        def matches(self, unet_config):
            return unet_config.get("cross_attention_dim") == 32

    with registered_family(Wide()):
        assert family_of(models["tiny"].unet.config).name == "wide"
        assert "wide" in plugins.registered("model_family")
        assert PnP().injection_layers(family_of(models["tiny"].unet.config))[0] == ("up_blocks.2.resnets.0",)
    assert family_of(models["tiny"].unet.config).name == "sd1"


@pytest.mark.parametrize("spec", FAMILIES)
def test_every_injection_layer_of_each_family_is_in_its_unet(models, spec):
    model = models[spec]
    modules = dict(model.unet.named_modules())
    family = model.family
    for path in family.conv_layers:
        assert hasattr(modules[path], "conv2"), path  # a resnet: its residual branch is injected
    for path in family.qk_layers:
        assert type(modules[path]).__name__ == "Transformer2DModel", path
        assert path.startswith("up_blocks."), path  # the decoder carries the structure
    assert transformer_block_names(model.unet, family.attention_layers) == transformer_block_names(model.unet)


def test_sdxl_injects_at_its_coarsest_decoder_level_with_attention(models):
    family = models["tiny-sdxl"].family
    assert family.conv_layers == ("up_blocks.0.resnets.1",)
    assert family.qk_layers[:2] == ("up_blocks.0.attentions.1", "up_blocks.0.attentions.2")
    assert {path.rsplit(".", 2)[0] for path in family.qk_layers} == {"up_blocks.0", "up_blocks.1"}


def test_sdxl_conditioning_is_the_two_encoders_penultimate_states_then_pooled_and_size_ids(models):
    model = models["tiny-sdxl"]
    text = model.encode_prompt(["a cat"], (48, 64))
    assert text.shape == (1, 78, 80)
    ids = [tok(["a cat"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
           for tok in (model.tokenizer, model.tokenizer_2)]  # fmt: skip
    first = model.text_encoder(ids[0], output_hidden_states=True).hidden_states[-2]
    second = model.text_encoder_2(ids[1], output_hidden_states=True)
    torch.testing.assert_close(text[:, :77], torch.cat([first, second.hidden_states[-2]], dim=-1))
    pooled = second.text_embeds  # (1, 48)
    torch.testing.assert_close(text[0, 77, :48], pooled[0])
    assert text[0, 77, 48:54].tolist() == [48, 64, 0, 0, 48, 64]
    assert not text[0, 77, 54:].any()

    inputs = model.unet_inputs(text)
    latents = torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(0))
    added = {"text_embeds": pooled, "time_ids": torch.tensor([[48.0, 64, 0, 0, 48, 64]])}
    expected = model.unet(latents, 500, encoder_hidden_states=text[:, :77], added_cond_kwargs=added).sample
    torch.testing.assert_close(model.unet(latents, 500, **inputs).sample, expected)


def test_sdxl_conditions_the_empty_prompt_on_zeros_unless_the_model_says_otherwise(models):
    model = models["tiny-sdxl"]
    empty = model.encode_prompt([""], (64, 64))
    assert not empty[:, :77].any() and not empty[0, 77, :48].any()
    assert empty[0, 77, 48:54].tolist() == [64, 64, 0, 0, 64, 64]  # the size ids are kept
    model.force_zeros_for_empty_prompt = False
    try:
        assert model.encode_prompt([""], (64, 64))[:, :77].abs().sum() > 0
    finally:
        model.force_zeros_for_empty_prompt = True


def test_the_size_changes_only_the_sdxl_conditioning(models):
    xl, sd = models["tiny-sdxl"], models["tiny"]
    assert not torch.equal(xl.encode_prompt(["a"], (64, 64)), xl.encode_prompt(["a"], (64, 96)))
    assert torch.equal(sd.encode_prompt(["a"], (64, 64)), sd.encode_prompt(["a"], (64, 96)))


@pytest.mark.parametrize(
    ("spec", "engine"),
    [
        pytest.param("tiny-sdxl", "torchscript", marks=pytest.mark.slow),
        pytest.param("tiny-sd2-v", "torchscript", marks=pytest.mark.slow),
        pytest.param("tiny-sdxl", "onnxruntime", marks=pytest.mark.slow),  # SDXL's conditioning row through ONNX
    ],
)
def test_every_pass_of_a_family_runs_under_a_compiled_engine_as_eagerly(models, spec, engine, tmp_path):
    from vedit.runtime.engine_cache import EngineCache

    model = models[spec]
    family = model.family
    layers = {"conv_layers": family.conv_layers, "qk_layers": family.qk_layers}
    embeds = model.encode_prompt(["a cat", "", "a dog"], (48, 64))
    frames = {"plain": 2, "frames": 2, "keyframe": 2, "propagation": 2}

    def run(engine: str) -> dict[str, list[torch.Tensor]]:
        out = {}
        cache = EngineCache(tmp_path / engine)
        with Passes(model, [plugins.get("engine", engine)], strict=True, cache=cache, **layers) as passes:
            gen = torch.Generator().manual_seed(1)
            for name, n in frames.items():
                inputs = passes.example(name, n, (6, 8), embeds=embeds, generator=gen)
                result = passes.run(name, inputs)
                out[name] = list(result) if isinstance(result, tuple) else [result]
        return out

    eager, traced = run("eager"), run(engine)
    for name in frames:
        assert len(traced[name]) == len(eager[name])
        for a, b in zip(traced[name], eager[name]):
            assert relative_error(a, b) < 1e-4, name
