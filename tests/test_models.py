"""vedit.model: the tiny and random Stable Diffusions built in code, loading a folder, and the one-line
errors a user sees when weights, devices or dtypes are not what they asked for."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in this file may reach the network

import pytest
import torch

from vedit.model import builders, loading
from vedit.errors import ConfigError, ModelError
from vedit.model.device import resolve_device, resolve_dtype
from vedit.model.loading import load_model
from vedit.model.stable_diffusion import StableDiffusion


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny() -> StableDiffusion:
    return load_model("tiny", device="cpu")


def unet_output(model: StableDiffusion, frames: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(frames, 4, 8, 8, generator=generator)  # 64×64 frames
    text = model.encode_prompt(["a photo of a cat"] * frames)
    with torch.no_grad():
        return model.unet(latents, 981, encoder_hidden_states=text).sample


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message.strip() == message and message
    return message


# ----------------------------------------------------------------------------- tiny


def same_weights(a: StableDiffusion, b: StableDiffusion) -> bool:
    for part in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        if mine.keys() != theirs.keys() or not all(torch.equal(mine[key], theirs[key]) for key in mine):
            return False
    return True


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


@pytest.mark.parametrize("spec, expected", [
    ("tiny@x", "model 'tiny@x': the weights' seed after '@' must be a whole number from 0 to"),
    ("random:sd15@-1", "model 'random:sd15@-1': the weights' seed after '@' must be a whole number"),
    ("tiny@", "model 'tiny@': the weights' seed"),
    ("tiny@1.5", "model 'tiny@1.5': the weights' seed"),
    (f"tiny@{2**63}", "from 0 to 9223372036854775807, as in 'tiny@3'"),
    ("random:nosuch", "unknown model 'random:nosuch': use tiny, random:sd15 or random:sd21 (with @N"),
    ("random:nosuch@2", "unknown model 'random:nosuch@2'"),
])
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


def test_the_tiny_model_describes_itself(tiny):
    assert tiny.model_id == "tiny" and tiny.revision is None
    assert tiny.device == torch.device("cpu") and tiny.dtype == torch.float32
    assert tiny.latent_scale == pytest.approx(0.18215)
    assert tiny.vae_scale_factor == 8
    assert repr(tiny) == ("StableDiffusion(model_id='tiny', revision=None, fingerprint='tiny:seed0', "
                          "device=device(type='cpu'), dtype=torch.float32)")


def test_every_part_is_frozen_in_eval_mode(tiny):
    for part in (tiny.unet, tiny.vae, tiny.text_encoder):
        assert not part.training
        assert not any(parameter.requires_grad for parameter in part.parameters())


def test_the_tiny_unet_keeps_stable_diffusions_block_structure(tiny):
    unet = tiny.unet
    assert [type(block).__name__ for block in unet.down_blocks] == [
        "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    assert type(unet.mid_block).__name__ == "UNetMidBlock2DCrossAttn"
    assert [type(block).__name__ for block in unet.up_blocks] == [
        "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    assert type(unet.up_blocks[1].resnets[1]).__name__ == "ResnetBlock2D"  # PnP's feature layer
    # PnP's query/key layers: decoder self-attention 4 to 11
    qk_layers = [unet.up_blocks[1].attentions[1], unet.up_blocks[1].attentions[2],
                 *unet.up_blocks[2].attentions, *unet.up_blocks[3].attentions]
    assert len(qk_layers) == 8
    assert all(type(layer.transformer_blocks[0].attn1).__name__ == "Attention" for layer in qk_layers)
    assert unet.up_blocks[3].attentions[2].transformer_blocks[0].attn1.is_cross_attention is False
    self_attention = [name for name, _ in unet.named_modules() if name.endswith(".attn1")]
    assert len(self_attention) == 16  # 6 down, 1 mid, 9 up: as in SD 1.5 and 2.1


def test_a_two_frame_tiny_unet_forward_keeps_the_latent_shape(tiny):
    assert unet_output(tiny, frames=2).shape == (2, 4, 8, 8)
    assert unet_output(tiny, frames=6).shape == (6, 4, 8, 8)


def test_images_encode_to_an_eighth_and_decode_back_into_0_1(tiny):
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    latents = tiny.encode_images(images)
    assert latents.shape == (3, 4, 8, 8) and latents.dtype == torch.float32
    decoded = tiny.decode_latents(latents)
    assert decoded.shape == (3, 3, 64, 64)
    assert decoded.dtype == torch.float32 and decoded.device == torch.device("cpu")
    assert decoded.min() >= 0 and decoded.max() <= 1


def test_latents_are_the_posterior_mean_times_the_scaling_factor(tiny):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mean = tiny.vae.encode(images * 2 - 1).latent_dist.mean
    latents = tiny.encode_images(images)
    torch.testing.assert_close(latents, mean * 0.18215)
    assert torch.equal(latents, tiny.encode_images(images))  # the mean, never a sample


def test_batching_does_not_change_latents_or_images(tiny):
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    latents = tiny.encode_images(images, batch_size=8)
    torch.testing.assert_close(tiny.encode_images(images, batch_size=2), latents)
    torch.testing.assert_close(tiny.decode_latents(latents, batch_size=2),
                               tiny.decode_latents(latents, batch_size=8))


def test_images_must_be_rgb_and_a_multiple_of_8(tiny):
    with pytest.raises(ValueError, match="multiple of 8"):
        tiny.encode_images(torch.rand(1, 3, 60, 64))
    with pytest.raises(ValueError, match=r"\(n, 3, H, W\)"):
        tiny.encode_images(torch.rand(3, 64, 64))


def test_prompts_pad_to_77_tokens_and_different_prompts_differ(tiny):
    embeddings = tiny.encode_prompt(["a photo of a cat", "a watercolour of a dog", ""])
    assert embeddings.shape == (3, 77, 32) and embeddings.dtype == torch.float32
    assert not torch.allclose(embeddings[0], embeddings[1])
    assert not torch.allclose(embeddings[0], embeddings[2])
    torch.testing.assert_close(tiny.encode_prompt(["a photo of a cat"])[0], embeddings[0])


def test_the_local_tokenizer_is_byte_level_clip():
    tokenizer = builders.build_tokenizer()
    assert len(tokenizer) == 514 and tokenizer.model_max_length == 77
    ids = tokenizer("a cat").input_ids
    # CLIP's own ids for single bytes: "a</w>" is 320 in the real vocabulary too
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<|startoftext|>", "a</w>", "c", "a", "t</w>", "<|endoftext|>"]
    assert ids[1] == 320
    assert tokenizer("A CAT").input_ids == ids  # CLIP lower-cases
    assert tokenizer("héllo 🙂").input_ids[-1] == tokenizer.eos_token_id  # any text encodes


def test_the_scheduler_is_ddim_with_stable_diffusions_training_schedule(tiny):
    config = tiny.scheduler.config
    assert type(tiny.scheduler).__name__ == "DDIMScheduler"
    assert (config.num_train_timesteps, config.beta_start, config.beta_end) == (1000, 0.00085, 0.012)
    assert config.beta_schedule == "scaled_linear" and config.prediction_type == "epsilon"
    assert (config.clip_sample, config.set_alpha_to_one, config.steps_offset) == (False, False, 1)
    assert float(tiny.scheduler.final_alpha_cumprod) == pytest.approx(0.99915)  # ᾱ_0, not 1


def test_new_scheduler_gives_an_independent_copy(tiny):
    first, second = tiny.new_scheduler(), tiny.new_scheduler()
    first.set_timesteps(50)
    second.set_timesteps(10)
    assert first.timesteps[:3].tolist() == [981, 961, 941]
    assert second.timesteps[:3].tolist() == [901, 801, 701]
    assert first is not tiny.scheduler and first.config == tiny.scheduler.config


def test_the_tiny_model_runs_in_bf16_on_the_cpu():
    model = load_model("tiny", device="cpu", dtype="bf16")
    assert model.dtype == model.unet.dtype == model.text_encoder.dtype == torch.bfloat16
    assert model.encode_prompt(["a cat"]).dtype == torch.bfloat16
    latents = model.encode_images(torch.rand(1, 3, 64, 64))
    assert latents.dtype == torch.bfloat16
    assert model.decode_latents(latents).dtype == torch.float32


# ----------------------------------------------------------------------------- real architectures


def count_on_meta(build) -> int:
    with torch.device("meta"):
        return sum(parameter.numel() for parameter in build().parameters())


@pytest.mark.parametrize("spec, unet, vae, text_encoder", [
    ("random:sd15", 859_520_964, 83_653_863, 123_060_480),
    ("random:sd21", 865_910_724, 83_653_863, 340_387_840),
])
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


# ----------------------------------------------------------------------------- device, dtype


def test_auto_device_is_the_cpu_without_accelerators(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_device_prefers_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == torch.device("cuda", 0)


@pytest.mark.parametrize("name, says", [
    ("gpu0", "unknown device 'gpu0'"),
    ("cuda", "no CUDA GPU"),
    ("mps", "not available"),
])
def test_devices_that_are_not_here_are_one_line_config_errors(monkeypatch, name, says):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError) as error:
        resolve_device(name)
    assert says in one_line(error)


def test_a_cuda_index_past_the_last_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError) as error:
        resolve_device("cuda:2")
    assert "cuda:0 to cuda:1" in one_line(error)


CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.mark.parametrize("name, device, dtype", [
    ("auto", CPU, torch.float32),
    (None, CPU, torch.float32),
    ("auto", CUDA, torch.float16),
    ("auto", torch.device("mps", 0), torch.float16),
    ("fp32", CUDA, torch.float32),
    ("float32", CPU, torch.float32),
    ("FP16", CUDA, torch.float16),
    ("half", CUDA, torch.float16),
    ("float16", CUDA, torch.float16),
    ("bf16", CPU, torch.bfloat16),
    ("bfloat16", CPU, torch.bfloat16),
    ("torch.float32", CPU, torch.float32),
    (torch.bfloat16, CPU, torch.bfloat16),
])
def test_dtypes_by_name(monkeypatch, name, device, dtype):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_dtype(name, device) == dtype


def test_fp16_on_the_cpu_suggests_fp32_or_bf16():
    with pytest.raises(ConfigError) as error:
        resolve_dtype("fp16", CPU)
    message = one_line(error)
    assert "fp32" in message and "bf16" in message


@pytest.mark.parametrize("name", ["int8", "fp8", torch.int64])
def test_an_unknown_dtype_is_a_config_error(name):
    with pytest.raises(ConfigError) as error:
        resolve_dtype(name, CPU)
    assert "unknown dtype" in one_line(error)


# ----------------------------------------------------------------------------- folders and the hub


@pytest.fixture(scope="module")
def tiny_folder(tiny, tmp_path_factory) -> Path:
    return tiny.save_pretrained(tmp_path_factory.mktemp("tiny-sd") / "model")


def copy_folder(source: Path, target: Path) -> Path:
    for path in source.rglob("*"):
        if path.is_file():
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (target / path.relative_to(source)).write_bytes(path.read_bytes())
    return target


def test_a_saved_folder_holds_the_diffusers_layout(tiny_folder):
    assert sorted(path.name for path in tiny_folder.iterdir()) == [
        "model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"]
    index = json.loads((tiny_folder / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]


def test_a_local_folder_loads_back_exactly(tiny, tiny_folder):
    loaded = load_model(str(tiny_folder), device="cpu", dtype="fp32")
    assert loaded.model_id == str(tiny_folder.resolve()) and loaded.revision is None
    assert torch.equal(unet_output(loaded), unet_output(tiny))
    prompts = ["a photo of a cat", "a dog"]
    assert torch.equal(loaded.encode_prompt(prompts), tiny.encode_prompt(prompts))
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    latents = tiny.encode_images(images)
    assert torch.equal(loaded.encode_images(images), latents)
    assert torch.equal(loaded.decode_latents(latents), tiny.decode_latents(latents))
    public = lambda config: {key: value for key, value in config.items() if not key.startswith("_")}
    assert public(loaded.scheduler.config) == public(tiny.scheduler.config)
    assert not loaded.unet.training and not loaded.text_encoder.training


def test_a_folders_fingerprint_follows_its_files(tiny_folder, tmp_path):
    copy = copy_folder(tiny_folder, tmp_path / "copy")
    first = load_model(str(copy), device="cpu").fingerprint
    assert first.startswith("sha256:") and len(first) == len("sha256:") + 64
    assert load_model(str(copy), device="cpu").fingerprint == first
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert load_model(str(copy), device="cpu").fingerprint != first


def test_a_hub_id_missing_from_the_cache_offline_says_how_to_get_it():
    with pytest.raises(ModelError) as error:
        load_model("vedit-tests/no-such-model", device="cpu")
    assert one_line(error) == (
        "model weights for 'vedit-tests/no-such-model' are not available (not in the Hugging Face "
        "cache and the hub cannot be reached): download them with 'hf download "
        "vedit-tests/no-such-model' or pass model=PATH to a local diffusers folder; "
        "model='tiny' runs offline")


def _online_with_hub_at(monkeypatch, endpoint: str) -> None:
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)


def test_an_unreachable_hub_is_one_line_without_the_hubs_retries(monkeypatch, capfd):
    import socket

    with socket.socket() as closed:  # a port nothing listens on: the connection is refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    _online_with_hub_at(monkeypatch, f"http://127.0.0.1:{port}")
    assert not loading._hub_reachable()
    with pytest.raises(ModelError) as error:
        load_model("vedit-tests/no-such-model", device="cpu")
    assert one_line(error).startswith("model weights for 'vedit-tests/no-such-model' are not available")
    assert "the hub cannot be reached" in one_line(error)
    printed = capfd.readouterr()
    # without the probe, huggingface_hub would log five "Retrying in Ns" lines (and wait 23 s) first
    assert "Retry" not in printed.err + printed.out


def test_a_hub_that_answers_even_with_an_error_status_counts_as_reachable(monkeypatch):
    import http.server
    import threading

    statuses = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 (the standard library's name)
            statuses.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _online_with_hub_at(monkeypatch, f"http://127.0.0.1:{server.server_address[1]}/")
        assert loading._hub_reachable()
    finally:
        server.shutdown()
        server.server_close()
    assert statuses == ["/api/models"]


def test_a_hub_model_in_the_cache_loads_offline_and_names_its_commit(tiny, monkeypatch, tmp_path):
    import huggingface_hub.constants

    commit = "0123456789abcdef" * 2 + "01234567"
    repo = tmp_path / "hub" / "models--vedit-tests--tiny-sd"
    tiny.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = load_model("vedit-tests/tiny-sd", device="cpu")
    assert (loaded.model_id, loaded.revision) == ("vedit-tests/tiny-sd", None)
    assert loaded.fingerprint == f"vedit-tests/tiny-sd@{commit}"
    assert torch.equal(unet_output(loaded), unet_output(tiny))


def test_a_spec_that_is_neither_a_folder_nor_a_hub_id_says_so():
    with pytest.raises(ModelError) as error:
        load_model("my model!", device="cpu")
    assert one_line(error).startswith("model 'my model!' is neither a folder nor a Hugging Face hub id")


def test_an_empty_folder_names_the_missing_subfolders(tmp_path):
    with pytest.raises(ModelError) as error:
        load_model(str(tmp_path), device="cpu")
    assert one_line(error) == (
        f"'{tmp_path}' is not a diffusers model folder: it lacks unet/, vae/, text_encoder/, "
        "tokenizer/ and scheduler/ (write one with save_pretrained, or pass a hub id)")


def test_a_folder_without_a_vae_says_so(tiny_folder, tmp_path):
    copy = copy_folder(tiny_folder, tmp_path / "copy")
    for path in (copy / "vae").iterdir():
        path.unlink()
    (copy / "vae").rmdir()
    with pytest.raises(ModelError) as error:
        load_model(str(copy), device="cpu")
    assert "it lacks vae/ (" in one_line(error)


def test_unreadable_weights_name_the_part(tiny_folder, tmp_path):
    copy = copy_folder(tiny_folder, tmp_path / "copy")
    (copy / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ModelError) as error:
        load_model(str(copy), device="cpu")
    assert one_line(error).startswith(f"could not read the unet of model folder '{copy}'")


@pytest.mark.parametrize("spec, says", [
    ("./no/such/folder", "model folder './no/such/folder' does not exist"),
    ("~/no-such-vedit-folder/", "does not exist"),
])
def test_a_path_that_does_not_exist_is_not_taken_for_a_hub_id(spec, says):
    with pytest.raises(ModelError) as error:
        load_model(spec, device="cpu")
    assert says in one_line(error)


def test_a_file_is_not_a_model_folder(tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")
    with pytest.raises(ModelError) as error:
        load_model(str(checkpoint), device="cpu")
    assert "is a file, not a diffusers model folder" in one_line(error)


def test_v_prediction_models_are_refused(tiny_folder, tmp_path):
    copy = copy_folder(tiny_folder, tmp_path / "copy")
    config_path = copy / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    with pytest.raises(ModelError) as error:
        load_model(str(copy), device="cpu")
    assert "predicts 'v_prediction'" in one_line(error)


def test_running_out_of_memory_is_a_one_line_model_error(monkeypatch):
    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB\nmore")

    monkeypatch.setattr(builders, "place_for_inference", no_memory)
    with pytest.raises(ModelError) as error:
        load_model("tiny", device="cpu")
    # The CPU refuses fp16, and the working size does not change the weights: bf16 halves them.
    assert one_line(error) == (
        "not enough memory on cpu for 'tiny' in fp32: try dtype='bf16' (half the memory) "
        "or close other programs using it")
    with pytest.raises(ModelError) as error:
        load_model("tiny", device="cpu", dtype="bf16")
    assert one_line(error) == "not enough memory on cpu for 'tiny' in bf16: close other programs using it"


@pytest.mark.parametrize("cached, revision, fingerprint", [
    ("/hub/models--org--sd/snapshots/" + "ab" * 20 + "/unet/config.json", None, "org/sd@" + "ab" * 20),
    (None, None, "org/sd@main"),
    (None, "fp16", "org/sd@fp16"),
    (None, "cd" * 20, "org/sd@" + "cd" * 20),
])
def test_a_hub_models_fingerprint_names_its_commit_when_the_cache_knows_it(
        monkeypatch, cached, revision, fingerprint):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: cached)
    assert loading._hub_fingerprint("org/sd", revision) == fingerprint


def test_a_fully_cached_hub_model_loads_without_asking_the_hub(tmp_path, monkeypatch):
    """A hub id whose files are all in the local cache is read from there (no request per file)."""
    import huggingface_hub.constants as hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-sd"
    load_model("tiny", device="cpu", dtype="fp32").save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert loading._fully_cached("someone/tiny-sd", None)
    assert loading._fully_cached("someone/tiny-sd", commit)
    assert not loading._fully_cached("someone/tiny-sd", "main")  # a branch may have moved
    assert not loading._fully_cached("someone/other", None)
    (repo / "snapshots" / commit / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    assert not loading._fully_cached("someone/tiny-sd", None)  # weights missing: ask the hub


def test_the_old_module_path_still_gives_every_public_name(monkeypatch):
    """``vedit.models`` was split in four; code that imports it keeps working, with a warning naming the parts."""
    import sys

    from vedit.model import device, stable_diffusion

    monkeypatch.delitem(sys.modules, "vedit.models", raising=False)
    with pytest.warns(DeprecationWarning, match=r"^vedit\.models has moved: import vedit\.model\.stable_diffusion or "):
        import vedit.models as old
    homes = {
        stable_diffusion: "COMPONENTS StableDiffusion",
        device: "resolve_device resolve_dtype dtype_name vae_dtype_for is_out_of_memory memory_hint",
        builders: "BUILT_IN_SPECS PROMPT_LENGTH SD_SCHEDULER_CONFIG BuiltSpec is_built_in built_spec build_tokenizer "
                  "unet_config vae_config text_encoder_config",
        loading: "DEFAULT_MODEL HUB_PROBE_TIMEOUT peek_scheduler load_model",
    }
    for module, names in homes.items():
        for name in names.split():
            assert getattr(old, name) is getattr(module, name), name
