"""Single-file checkpoints: the original layout read back weight for weight, the family recognised from the
keys, the shipped configs and CLIP vocabulary, the weights-only loader, and one line for every bad file."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

from conftest import make_clip
from helpers.checks import _refused, no_heavy_work  # noqa: F401  (a fixture, used by name)
from helpers.cli import FAST, one_error_line, vedit
from helpers.models import one_line
from helpers.single_file import module_weights, to_original, unet_to_original, write_checkpoint
from vedit.errors import ConfigError, ModelError
from vedit.model import single_file
from vedit.model.builders import PROMPT_LENGTH, build_tokenizer, shipped_config, unet_config, vae_config
from vedit.model.loading import load_model, peek_scheduler
from vedit.model.stable_diffusion import StableDiffusion


@pytest.fixture(scope="module")
def tiny() -> StableDiffusion:
    return load_model("tiny", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def tiny_folder(tiny, tmp_path_factory) -> Path:
    return tiny.save_pretrained(tmp_path_factory.mktemp("tiny-sd") / "model")


@pytest.fixture(scope="module")
def tiny_file(tiny, tmp_path_factory) -> Path:
    return write_checkpoint(tiny, tmp_path_factory.mktemp("tiny-file") / "tiny.safetensors")


def sd2_shaped_tiny() -> StableDiffusion:
    """The tiny model with SD 2.x's differences: linear attention projections, a GELU text encoder
    (stored as OpenCLIP stores it), heads per level."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from vedit.model.builders import text_encoder_config

    torch.manual_seed(2)
    unet = UNet2DConditionModel(
        **{**unet_config("tiny"), "use_linear_projection": True, "attention_head_dim": [1, 1, 2, 2]}
    )
    text = CLIPTextModel(CLIPTextConfig(**{**text_encoder_config("tiny"), "hidden_act": "gelu"}))
    return assembled(unet, text, "tiny-sd2")


def assembled(unet, text_encoder, name: str) -> StableDiffusion:
    """A model of these parts, with the tiny VAE and tokenizer and SD's schedule."""
    from diffusers import AutoencoderKL, DDIMScheduler

    from vedit.model.builders import SD_SCHEDULER_CONFIG

    vae = AutoencoderKL(**vae_config("tiny"))
    return StableDiffusion(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=build_tokenizer(),
        scheduler=DDIMScheduler(**SD_SCHEDULER_CONFIG),
        model_id=name,
        revision=None,
        fingerprint=name,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


def assert_same_weights(expected: StableDiffusion, loaded: StableDiffusion, parts=("unet", "vae", "text_encoder")):
    mine, theirs = module_weights(expected, parts), module_weights(loaded, parts)
    assert mine.keys() == theirs.keys()
    different = [key for key in mine if not torch.equal(mine[key], theirs[key])]
    assert not different, different[:5]


# ----------------------------------------------------------------------------- the original layout, read back


def test_a_checkpoint_in_the_original_layout_loads_every_weight_back_exactly(tiny, tiny_folder, tiny_file):
    loaded = load_model(str(tiny_file), model_config=str(tiny_folder), device="cpu", dtype="fp32")
    assert_same_weights(tiny, loaded)
    assert loaded.tokenizer("a photo of a cat").input_ids == tiny.tokenizer("a photo of a cat").input_ids
    assert loaded.scheduler.config.prediction_type == "epsilon"
    assert loaded.model_id == str(tiny_file) and loaded.fingerprint.startswith("sha256:")
    assert torch.equal(loaded.encode_prompt(["a cat"]), tiny.encode_prompt(["a cat"]))


def test_an_sd2_checkpoint_with_openclips_packed_attention_loads_back_exactly(tmp_path):
    model = sd2_shaped_tiny()
    folder = model.save_pretrained(tmp_path / "config")
    path = write_checkpoint(model, tmp_path / "tiny-sd2.safetensors", text_layout="open_clip")
    with torch.no_grad():
        assert any(key.endswith("attn.in_proj_weight") for key in to_original(model, "open_clip"))
    loaded = load_model(str(path), model_config=str(folder), device="cpu", dtype="fp32")
    assert_same_weights(model, loaded)
    assert loaded.unet.config.use_linear_projection is True


def test_a_ckpt_goes_through_torchs_weights_only_loader(tiny, tiny_folder, tmp_path, monkeypatch):
    path = write_checkpoint(tiny, tmp_path / "tiny.ckpt", global_step=1234)
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    loaded = load_model(str(path), model_config=str(tiny_folder), device="cpu", dtype="fp32")
    assert calls and all(call.get("weights_only") is True and call.get("mmap") is True for call in calls)
    assert_same_weights(tiny, loaded)


class _Payload:
    """A class a pickle names: unpickling it would run this module's code."""

    ran = False

    def __setstate__(self, state):
        _Payload.ran = True


def test_a_pickle_that_needs_a_class_is_refused_without_running_it(tiny, tmp_path):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": to_original(tiny), "callbacks": _Payload()}, path)
    with pytest.raises(ModelError) as error:
        load_model(str(path), device="cpu")
    assert f"'{path}' contains code (a pickled '{__name__}._Payload'), which vedit never runs" in one_line(error)
    assert "use a .safetensors file" in one_line(error)
    assert not _Payload.ran


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_a_truncated_checkpoint_is_one_line(tiny, tmp_path, suffix):
    whole = write_checkpoint(tiny, tmp_path / f"whole{suffix}")
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ModelError) as error:
        load_model(str(cut), device="cpu")
    assert f"checkpoint '{cut}' is corrupt or truncated (" in one_line(error)
    assert one_line(error).endswith("download it again")


def test_a_file_that_is_no_stable_diffusion_says_which_keys_were_expected(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "classifier.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, path)
    with pytest.raises(ModelError) as error:
        load_model(str(path), device="cpu")
    assert (
        "'classifier.safetensors' is not a Stable Diffusion checkpoint: it has no UNet weights "
        "('model.diffusion_model.*', expected with 'first_stage_model.*'"
    ) in one_line(error)
    assert one_line(error).endswith("its first keys are fc.bias, fc.weight")


def test_an_inpainting_checkpoint_is_refused_before_loading(tiny, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    weights = to_original(tiny)
    conv_in = weights[single_file.CONV_IN]
    weights[single_file.CONV_IN] = torch.cat([conv_in, torch.zeros(conv_in.shape[0], 5, 3, 3)], dim=1)  # 9 channels
    path = tmp_path / "inpainting.safetensors"
    save_file(weights, path)
    monkeypatch.setattr(single_file, "read_checkpoint", lambda *args: pytest.fail("the weights were read"))
    with pytest.raises(ModelError) as error:
        load_model(str(path), device="cpu")
    assert "'inpainting.safetensors' has a UNet with 9 input channels (an inpainting or depth model?)" in one_line(
        error
    )


def test_a_checkpoint_its_config_does_not_fit_is_refused_before_any_weight_is_read(tiny_file, monkeypatch):
    monkeypatch.setattr(single_file, "read_checkpoint", lambda *args: pytest.fail("the weights were read"))
    with pytest.raises(ModelError) as error:
        load_model(str(tiny_file), device="cpu")  # the shipped SD 1.5 configs: 768-dim cross-attention
    assert "'tiny.safetensors' has 32-dim cross-attention, its config (" in one_line(error)
    assert "sd15/unet/config.json) 768: pass model_config=FOLDER with the configs it was trained" in one_line(error)


def test_a_checkpoint_missing_weights_names_them(tiny, tiny_folder, tmp_path):
    from safetensors.torch import save_file

    weights = to_original(tiny)
    del weights["first_stage_model.decoder.conv_out.weight"]
    path = tmp_path / "pruned.safetensors"
    save_file(weights, path)
    with pytest.raises(ModelError) as error:
        load_model(str(path), model_config=str(tiny_folder), device="cpu")
    assert "'pruned.safetensors' lacks weights of its vae: it is not a complete checkpoint" in one_line(error)
    weights = to_original(tiny)
    del weights["cond_stage_model.transformer.text_model.final_layer_norm.bias"]
    save_file(weights, path)
    with pytest.raises(ModelError) as error:
        load_model(str(path), model_config=str(tiny_folder), device="cpu")
    assert "lacks weights of its text_encoder (1, the first final_layer_norm.bias)" in one_line(error)


def test_a_model_config_folder_must_configure_a_component(tiny_file, tmp_path):
    with pytest.raises(ConfigError) as error:
        load_model(str(tiny_file), model_config=str(tmp_path / "nowhere"), device="cpu")
    assert one_line(error) == f"model_config={str(tmp_path / 'nowhere')!r}: no such folder"
    (tmp_path / "index-only").mkdir()
    (tmp_path / "index-only" / "model_index.json").write_text("{}")
    with pytest.raises(ConfigError) as error:
        load_model(str(tiny_file), model_config=str(tmp_path / "index-only"), device="cpu")
    assert "configures no component: it needs one of unet/config.json" in one_line(error)


def test_a_model_config_beside_a_model_that_is_no_file_is_one_line(tiny_folder):
    with pytest.raises(ConfigError) as error:
        load_model("tiny", model_config=str(tiny_folder), device="cpu")
    assert "model_config configures a single-file checkpoint, not model 'tiny'" in one_line(error)


# ----------------------------------------------------------------------------- families and shipped configs


def original_keys(family: str, text_layout: str) -> dict[str, torch.Tensor]:
    """The keys and shapes (meta tensors, no data) of the real architecture of ``family`` in the original layout."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from helpers.single_file import clip_to_original, open_clip_to_original, vae_to_original

    with torch.device("meta"):
        weights = {
            **unet_to_original(UNet2DConditionModel(**shipped_config(family, "unet"))),
            **vae_to_original(AutoencoderKL(**shipped_config(family, "vae"))),
        }
        text = CLIPTextModel(CLIPTextConfig(**shipped_config(family, "text_encoder")))
        if text_layout == "clip":
            weights.update(clip_to_original(text))
        elif text_layout == "open_clip":
            weights.update(open_clip_to_original(text))
        else:
            second = CLIPTextModelWithProjection(CLIPTextConfig(**shipped_config(family, "text_encoder_2")))
            weights.update(clip_to_original(text, "conditioner.embedders.0.transformer."))
            weights.update(open_clip_to_original(second, "conditioner.embedders.1.model."))
    return weights


@pytest.mark.parametrize(
    "family, text_layout, step, expected, guessed",
    [
        ("sd15", "clip", None, "sd15", False),
        ("sd21-base", "open_clip", None, "sd21-v", True),  # diffusers' rule: an SD 2.x file is the 768-v model
        ("sd21-base", "open_clip", 875000, "sd21-base", False),  # ...unless saved at SD 2.x base's step
        ("sdxl-base", "sdxl", None, "sdxl-base", False),
    ],
)
def test_the_family_is_recognised_from_the_keys_and_the_shipped_configs_fit_it(
    family, text_layout, step, expected, guessed
):
    keys = original_keys(family, text_layout)
    recognised = single_file.recognise(keys, step, "model.safetensors")
    assert (recognised.family, recognised.prediction_guessed) == (expected, guessed)
    assert recognised.cross_attention_dim == {"sd15": 768, "sd21-base": 1024, "sdxl-base": 2048}[family]
    single_file.check_against_config(recognised, single_file.Configs(recognised.family, None), "model.safetensors")


def test_an_sd2_files_guessed_prediction_is_a_warning_that_names_the_other_config():
    recognised = single_file.recognise(original_keys("sd21-base", "open_clip"), None, "m.safetensors")
    note = single_file.prediction_note(recognised, "m.safetensors", None)
    assert note is not None and "taken for the 768-v model (v-prediction)" in note
    assert str(single_file.CONFIGS / "sd21-base") in note


def test_the_shipped_configs_build_the_published_architectures():
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def count(module) -> int:
        return sum(parameter.numel() for parameter in module.parameters())

    families = single_file.FAMILIES
    with torch.device("meta"):
        unets = {family: count(UNet2DConditionModel(**shipped_config(family, "unet"))) for family in families}
        texts = {
            family: count(CLIPTextModel(CLIPTextConfig(**shipped_config(family, "text_encoder"))))
            for family in families
        }
        vae = count(AutoencoderKL(**shipped_config("sdxl-base", "vae")))
        bigg = count(CLIPTextModelWithProjection(CLIPTextConfig(**shipped_config("sdxl-base", "text_encoder_2"))))
    assert unets == {"sd15": 859_520_964, "sd21-base": 865_910_724, "sd21-v": 865_910_724, "sdxl-base": 2_567_463_684}
    assert texts == {"sd15": 123_060_480, "sd21-base": 340_387_840, "sd21-v": 340_387_840, "sdxl-base": 123_060_480}
    assert (vae, bigg) == (83_653_863, 694_659_840)
    predictions = {
        f: DDIMScheduler.from_config(shipped_config(f, "scheduler")).config.prediction_type for f in families
    }
    assert predictions == {"sd15": "epsilon", "sd21-base": "epsilon", "sd21-v": "v_prediction", "sdxl-base": "epsilon"}
    assert shipped_config("sd21-v", "unet")["upcast_attention"] is True
    assert shipped_config("sdxl-base", "vae")["scaling_factor"] == 0.13025
    # the built random:sd15 / random:sd21 architectures are these configs
    assert unet_config("random:sd15") == shipped_config("sd15", "unet")
    assert unet_config("random:sd21") == shipped_config("sd21-base", "unet")


def test_the_sd2_scheduler_follows_the_recognised_family_or_the_config_folder(tmp_path, tiny_folder):
    model = sd2_shaped_tiny()
    v_file = write_checkpoint(model, tmp_path / "sd2.safetensors", text_layout="open_clip")
    base_file = write_checkpoint(model, tmp_path / "sd2-base.ckpt", text_layout="open_clip", global_step=875000)
    assert peek_scheduler(str(v_file)).config.prediction_type == "v_prediction"
    assert peek_scheduler(str(base_file)).config.prediction_type == "epsilon"
    scheduler_only = tmp_path / "scheduler-only"
    (scheduler_only / "scheduler").mkdir(parents=True)
    config = json.loads((tiny_folder / "scheduler" / "scheduler_config.json").read_text())
    (scheduler_only / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "beta_end": 0.02}))
    assert peek_scheduler(str(v_file), model_config=str(scheduler_only)).config.beta_end == 0.02


# ----------------------------------------------------------------------------- CLIP's vocabulary


def test_the_vocabulary_made_from_the_shipped_bpe_file_gives_clips_token_ids():
    sd15 = single_file.clip_tokenizer(single_file.CONFIGS / "sd15" / "tokenizer")
    sd21 = single_file.clip_tokenizer(single_file.CONFIGS / "sd21-base" / "tokenizer")
    assert len(sd15) == 49408 and sd15.model_max_length == PROMPT_LENGTH
    assert sd15("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert sd15("an astronaut riding a horse").input_ids == [49406, 550, 18376, 6765, 320, 4558, 49407]
    # SD 1.x pads with <|endoftext|>, OpenCLIP's tokenizer (SD 2.x, SDXL's second) with "!"
    assert sd15("a cat", padding="max_length", max_length=6).input_ids == [49406, 320, 2368, 49407, 49407, 49407]
    assert sd21("a cat", padding="max_length", max_length=6).input_ids == [49406, 320, 2368, 49407, 0, 0]
    assert json.loads((single_file.clip_vocabulary() / "vocab.json").read_text())["cat</w>"] == 2368


def test_the_vocabulary_is_made_once_into_the_cache_folder_or_afresh_where_it_cannot_be_written(tmp_path, monkeypatch):
    made = single_file.clip_vocabulary()
    assert made.parent == tmp_path / "cache" / "tokenizers"  # the test's VEDIT_CACHE_DIR
    written = (made / "vocab.json").stat().st_mtime_ns
    assert single_file.clip_vocabulary() == made and (made / "vocab.json").stat().st_mtime_ns == written
    assert not [path for path in made.iterdir() if path.name.endswith(".partial")]
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("VEDIT_CACHE_DIR", str(blocked))
    tokenizer = single_file.clip_tokenizer(single_file.CONFIGS / "sd15" / "tokenizer")
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


# ----------------------------------------------------------------------------- fingerprints and the network


def test_a_files_fingerprint_follows_its_size_mtime_and_configs(tiny_file, tiny_folder, tmp_path):
    import os

    copy = tmp_path / "tiny.safetensors"
    copy.write_bytes(tiny_file.read_bytes())
    os.utime(copy, ns=(1_000_000_000, 1_000_000_000))
    first = single_file.file_fingerprint(copy, single_file.Configs("sd15", tiny_folder))
    assert single_file.file_fingerprint(copy, single_file.Configs("sd15", tiny_folder)) == first
    assert single_file.file_fingerprint(copy, single_file.Configs("sd15", None)) != first  # other configs
    os.utime(copy, ns=(2_000_000_000, 2_000_000_000))
    assert single_file.file_fingerprint(copy, single_file.Configs("sd15", tiny_folder)) != first


def test_loading_a_file_never_touches_the_network(tiny, tiny_file, tmp_path, monkeypatch):
    # the tiny UNet, VAE and text encoder with the shipped tokenizer and scheduler: CLIP's vocabulary is made here
    partial = tmp_path / "partial"
    tiny.unet.save_config(partial / "unet")
    tiny.vae.save_config(partial / "vae")
    tiny.text_encoder.config.save_pretrained(partial / "text_encoder")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError(f"a connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    loaded = load_model(str(tiny_file), model_config=str(partial), device="cpu", dtype="fp32")
    assert_same_weights(tiny, loaded)
    assert loaded.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert loaded.scheduler.config.beta_schedule == "scaled_linear"


# ----------------------------------------------------------------------------- the command line


def test_vedit_run_with_the_file_gives_exactly_the_folder_models_output(tiny_folder, tiny_file, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=4)
    fast = [arg for arg in FAST if arg not in ("--model", "tiny")]
    outputs = {}
    for name, model in (("folder", [str(tiny_folder)]), ("file", [str(tiny_file), "--model-config", str(tiny_folder)])):
        out = tmp_path / f"{name}.mp4"
        result = vedit("run", clip, "-p", "a watercolor", "--size", "64x48", "-o", out, "--model", *model, *fast)
        assert result.exit_code == 0, result.output
        outputs[name] = out.read_bytes()
    assert outputs["file"] == outputs["folder"]


def test_a_bad_checkpoint_on_the_command_line_is_one_line_and_exit_6(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=4)
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x00" * 64)
    fast = [arg for arg in FAST if arg not in ("--model", "tiny")]
    result = vedit("run", clip, "-p", "x", "-o", tmp_path / "out.mp4", "--model", path, *fast)
    assert result.exit_code == 6
    assert f"checkpoint '{path}' is corrupt or truncated" in one_error_line(result)
    assert not (tmp_path / "out.mp4").exists()


def test_a_checkpoint_that_cannot_load_is_refused_before_any_heavy_work(tiny, tmp_path, no_heavy_work):
    from safetensors.torch import save_file

    weights = to_original(tiny)
    conv_in = weights[single_file.CONV_IN]
    weights[single_file.CONV_IN] = torch.cat([conv_in, torch.zeros(conv_in.shape[0], 5, 3, 3)], dim=1)
    save_file(weights, tmp_path / "inpainting.safetensors")
    clip = make_clip(tmp_path / "clip.mp4", frames=4)
    line = _refused(tmp_path, clip, "--model", tmp_path / "inpainting.safetensors", code=6)
    assert "'inpainting.safetensors' has a UNet with 9 input channels" in line


def test_an_sd2_files_guessed_prediction_is_a_warning_before_the_model_loads(tmp_path, monkeypatch):
    import shutil

    from vedit.model import loading

    model = sd2_shaped_tiny()
    folder = model.save_pretrained(tmp_path / "config")
    shutil.rmtree(folder / "scheduler")  # the schedule, and with it the prediction type, is the guessed family's
    path = write_checkpoint(model, tmp_path / "sd2.safetensors", text_layout="open_clip")

    def stop(*args, **kwargs):
        raise ModelError("stopped where the model loads")

    monkeypatch.setattr(loading, "load_model", stop)
    clip = make_clip(tmp_path / "clip.mp4", frames=4)
    fast = [arg for arg in FAST if arg not in ("--model", "tiny")]
    args = ["--model", path, "--model-config", folder, *fast]
    result = vedit("run", clip, "-p", "x", "--size", "64x48", "-o", tmp_path / "out.mp4", *args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("vedit: warning: 'sd2.safetensors' is an SD 2.x checkpoint, taken for the 768-v model")
    assert lines[0].endswith(f"pass --model-config {single_file.CONFIGS / 'sd21-base'}")
    assert lines[-1] == "vedit: error: stopped where the model loads"


# ----------------------------------------------------------------------------- SDXL


def test_an_sdxl_checkpoint_loads_both_text_encoders_back_exactly(tmp_path):

    model = load_model("tiny-sdxl@3", device="cpu", dtype="fp32")
    folder = model.save_pretrained(tmp_path / "config")
    path = write_checkpoint(model, tmp_path / "tiny-sdxl.safetensors", text_layout="sdxl")
    assert single_file.recognise(single_file.read_shapes(path)[0], None, path.name).family == "sdxl-base"
    loaded = single_file.load_single_file(path, folder, torch.device("cpu"), torch.float32)
    assert_same_weights(model, loaded, ("unet", "vae", "text_encoder", "text_encoder_2"))
    assert type(loaded.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert loaded.tokenizer_2("a cat").input_ids == model.tokenizer("a cat").input_ids
