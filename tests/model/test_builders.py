"""Built models: the seeded tiny model, its block structure and tokenizer, and the random
architectures' real parameter counts."""

from __future__ import annotations

import pytest
import torch

from helpers.models import one_line, unet_output
from vedit.errors import ConfigError
from vedit.model import builders, loading
from vedit.model.loading import load_model
from vedit.model.stable_diffusion import StableDiffusion


@pytest.fixture(scope="module")
def tiny() -> StableDiffusion:
    return load_model("tiny", device="cpu")


def same_weights(a: StableDiffusion, b: StableDiffusion) -> bool:
    for part in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        if mine.keys() != theirs.keys() or not all(torch.equal(mine[key], theirs[key]) for key in mine):
            return False
    return True


def count_on_meta(build) -> int:
    with torch.device("meta"):
        return sum(parameter.numel() for parameter in build().parameters())


def test_the_same_seed_builds_the_same_tiny_model_bit_for_bit(tiny):
    again = load_model("tiny@0", device="cpu")
    assert same_weights(tiny, again)
    assert torch.equal(unet_output(tiny), unet_output(again))
    # tiny is tiny@0, and keeps the fingerprint its cached inversions and built engines were made under
    assert again.fingerprint == tiny.fingerprint == "tiny:seed0"
    assert again.model_id == tiny.model_id == "tiny"


def test_another_seed_builds_another_tiny_model(tiny):
    other = load_model("tiny@1", device="cpu")
    assert other.fingerprint == "tiny:seed1" and other.model_id == "tiny@1"
    assert not torch.allclose(unet_output(tiny), unet_output(other))


def test_the_weights_seed_is_part_of_the_spec():
    assert builders.built_spec("tiny") == builders.BuiltSpec("tiny", 0) == builders.built_spec(" tiny@0 ")
    assert builders.built_spec("tiny@007") == builders.BuiltSpec("tiny", 7)
    assert builders.built_spec("random:sd15@7") == builders.BuiltSpec("random:sd15", 7)
    assert builders.built_spec("random:sd21").fingerprint == "random:sd21:seed0"
    assert builders.built_spec("random:sd15@7").name == "random:sd15@7"
    assert builders.built_spec("tiny@0").name == "tiny"
    for other in ("stabilityai/stable-diffusion-2-1-base", "./tiny", "tinyllama"):
        assert builders.built_spec(other) is None


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("tiny@x", "model 'tiny@x': the weights' seed after '@' must be a whole number from 0 to"),
        ("random:sd15@-1", "model 'random:sd15@-1': the weights' seed after '@' must be a whole number"),
        ("tiny@", "model 'tiny@': the weights' seed"),
        ("tiny@1.5", "model 'tiny@1.5': the weights' seed"),
        (f"tiny@{2**63}", "from 0 to 9223372036854775807, as in 'tiny@3'"),
        (
            "random:nosuch",
            "unknown model 'random:nosuch': use tiny, tiny-sd2, tiny-sd2-v, tiny-sdxl, random:sd15, random:sd21, "
            "random:sd21-v or random:sdxl (with @N",
        ),
        ("random:nosuch@2", "unknown model 'random:nosuch@2'"),
    ],
)
def test_a_malformed_built_spec_is_one_line_before_anything_is_built(spec, expected, monkeypatch):
    monkeypatch.setattr(loading, "build_model", lambda *args: pytest.fail("building started"))
    with pytest.raises(ConfigError) as error:
        load_model(spec, device="cpu")
    assert expected in one_line(error)


def test_the_deprecated_seed_keyword_still_names_the_weights(tiny):
    with pytest.warns(DeprecationWarning, match="tiny@N"):
        old = load_model("tiny", device="cpu", seed=1)
    assert old.fingerprint == "tiny:seed1" and same_weights(old, load_model("tiny@1", device="cpu"))
    with pytest.warns(DeprecationWarning):
        spelled = load_model("tiny@0", device="cpu", seed=1)  # the spec says it; the keyword only fills in
    assert spelled.fingerprint == "tiny:seed0"


def test_the_tiny_unet_keeps_stable_diffusions_block_structure(tiny):
    unet = tiny.unet
    assert [type(block).__name__ for block in unet.down_blocks] == [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ]
    assert type(unet.mid_block).__name__ == "UNetMidBlock2DCrossAttn"
    assert [type(block).__name__ for block in unet.up_blocks] == [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ]
    assert type(unet.up_blocks[1].resnets[1]).__name__ == "ResnetBlock2D"  # PnP's feature layer
    # PnP's query/key layers: decoder self-attention 4 to 11
    qk_layers = [
        unet.up_blocks[1].attentions[1],
        unet.up_blocks[1].attentions[2],
        *unet.up_blocks[2].attentions,
        *unet.up_blocks[3].attentions,
    ]
    assert len(qk_layers) == 8
    assert all(type(layer.transformer_blocks[0].attn1).__name__ == "Attention" for layer in qk_layers)
    assert unet.up_blocks[3].attentions[2].transformer_blocks[0].attn1.is_cross_attention is False
    self_attention = [name for name, _ in unet.named_modules() if name.endswith(".attn1")]
    assert len(self_attention) == 16  # 6 down, 1 mid, 9 up: as in SD 1.5 and 2.1


def test_the_local_tokenizer_is_byte_level_clip():
    tokenizer = builders.build_tokenizer()
    assert len(tokenizer) == 514 and tokenizer.model_max_length == 77
    ids = tokenizer("a cat").input_ids
    # CLIP's own ids for single bytes: "a</w>" is 320 in the real vocabulary too
    assert tokenizer.convert_ids_to_tokens(ids) == ["<|startoftext|>", "a</w>", "c", "a", "t</w>", "<|endoftext|>"]
    assert ids[1] == 320
    assert tokenizer("A CAT").input_ids == ids  # CLIP lower-cases
    assert tokenizer("héllo 🙂").input_ids[-1] == tokenizer.eos_token_id  # any text encodes


def test_the_tiny_model_runs_in_bf16_on_the_cpu():
    model = load_model("tiny", device="cpu", dtype="bf16")
    assert model.dtype == model.unet.dtype == model.text_encoder.dtype == torch.bfloat16
    assert model.encode_prompt(["a cat"]).dtype == torch.bfloat16
    latents = model.encode_images(torch.rand(1, 3, 64, 64))
    assert latents.dtype == torch.bfloat16
    assert model.decode_latents(latents).dtype == torch.float32


@pytest.mark.parametrize(
    "spec, unet, vae, text_encoder",
    [
        ("random:sd15", 859_520_964, 83_653_863, 123_060_480),
        ("random:sd21", 865_910_724, 83_653_863, 340_387_840),
    ],
)
def test_random_architectures_have_the_real_parameter_counts(spec, unet, vae, text_encoder):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    assert count_on_meta(lambda: UNet2DConditionModel(**builders.unet_config(spec))) == unet
    assert count_on_meta(lambda: AutoencoderKL(**builders.vae_config(spec))) == vae
    config = CLIPTextConfig(**builders.text_encoder_config(spec))
    assert count_on_meta(lambda: CLIPTextModel(config)) == text_encoder


def test_sd21_uses_64_channel_heads_and_linear_projections():
    config = builders.unet_config("random:sd21")
    heads = config["attention_head_dim"]  # diffusers' name; it holds head counts
    assert [width // count for width, count in zip(config["block_out_channels"], heads)] == [64] * 4
    assert config["use_linear_projection"] and config["cross_attention_dim"] == 1024


def test_an_unknown_random_architecture_lists_the_valid_specs():
    with pytest.raises(ConfigError) as error:
        load_model("random:bogus", device="cpu")
    message = one_line(error)
    assert "random:bogus" in message
    assert all(spec in message for spec in ("tiny", "random:sd15", "random:sd21"))
