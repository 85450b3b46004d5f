"""Loading models: local folders and their fingerprints, the hub online and offline, and one clear line for
every kind of bad model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from helpers.models import one_line, unet_output
from vedit.errors import ModelError
from vedit.model import builders, loading
from vedit.model.loading import load_model
from vedit.model.stable_diffusion import StableDiffusion

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in this file may reach the network


@pytest.fixture(scope="module")
def tiny() -> StableDiffusion:
    return load_model("tiny", device="cpu")


@pytest.fixture(scope="module")
def tiny_folder(tiny, tmp_path_factory) -> Path:
    return tiny.save_pretrained(tmp_path_factory.mktemp("tiny-sd") / "model")


def copy_folder(source: Path, target: Path) -> Path:
    for path in source.rglob("*"):
        if path.is_file():
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (target / path.relative_to(source)).write_bytes(path.read_bytes())
    return target


def _online_with_hub_at(monkeypatch, endpoint: str) -> None:
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)


def test_a_saved_folder_holds_the_diffusers_layout(tiny_folder):
    assert sorted(path.name for path in tiny_folder.iterdir()) == [
        "model_index.json",
        "scheduler",
        "text_encoder",
        "tokenizer",
        "unet",
        "vae",
    ]
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
        "model='tiny' runs offline"
    )


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
        "tokenizer/ and scheduler/ (write one with save_pretrained, or pass a hub id)"
    )


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


@pytest.mark.parametrize(
    "spec, says",
    [
        ("./no/such/folder", "model folder './no/such/folder' does not exist"),
        ("~/no-such-vedit-folder/", "does not exist"),
    ],
)
def test_a_path_that_does_not_exist_is_not_taken_for_a_hub_id(spec, says):
    with pytest.raises(ModelError) as error:
        load_model(spec, device="cpu")
    assert says in one_line(error)


def test_a_file_of_another_kind_is_neither_a_model_folder_nor_a_checkpoint(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(ModelError) as error:
        load_model(str(path), device="cpu")
    assert "is neither a diffusers model folder" in one_line(error)
    assert "nor a single-file checkpoint (.safetensors, .ckpt, .pt, .pth, .bin)" in one_line(error)


def with_scheduler_settings(folder: Path, target: Path, **settings) -> Path:
    copy = copy_folder(folder, target)
    config_path = copy / "scheduler" / "scheduler_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **settings}))
    return copy


def test_a_v_prediction_model_loads_with_its_own_schedule(tiny_folder, tmp_path):
    settings = {"prediction_type": "v_prediction", "timestep_spacing": "trailing", "rescale_betas_zero_snr": True}
    folder = with_scheduler_settings(tiny_folder, tmp_path / "copy", **settings)
    model = load_model(str(folder), device="cpu")
    for scheduler in (model.scheduler, model.new_scheduler(), loading.peek_scheduler(str(folder))):
        assert {name: scheduler.config[name] for name in settings} == settings
        assert float(scheduler.alphas_cumprod[-1]) == 0  # zero terminal SNR


def test_a_scheduler_of_another_class_gives_ddim_its_settings(tiny_folder, tmp_path):
    settings = {"prediction_type": "v_prediction", "timestep_spacing": "trailing", "steps_offset": 0}
    folder = with_scheduler_settings(tiny_folder, tmp_path / "copy", _class_name="EulerDiscreteScheduler", **settings)
    for scheduler in (load_model(str(folder), device="cpu").new_scheduler(), loading.peek_scheduler(str(folder))):
        assert type(scheduler).__name__ == "DDIMScheduler"
        assert {name: scheduler.config[name] for name in settings} == settings


def test_a_model_with_an_unknown_prediction_type_is_refused(tiny_folder, tmp_path):
    folder = with_scheduler_settings(tiny_folder, tmp_path / "copy", prediction_type="flow_prediction")
    with pytest.raises(ModelError) as error:
        load_model(str(folder), device="cpu")
    assert one_line(error) == (
        f"model '{folder}' predicts 'flow_prediction', which vedit cannot edit with: it takes models that predict "
        "the noise ('epsilon'), the velocity ('v_prediction') or the clean latent ('sample')"
    )


def test_running_out_of_memory_is_a_one_line_model_error(monkeypatch):
    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB\nmore")

    monkeypatch.setattr(builders, "place_for_inference", no_memory)
    with pytest.raises(ModelError) as error:
        load_model("tiny", device="cpu")
    # The CPU refuses fp16, and the working size does not change the weights: bf16 halves them.
    assert one_line(error) == (
        "not enough memory on cpu for 'tiny' in fp32: try dtype='bf16' (half the memory) "
        "or close other programs using it"
    )
    with pytest.raises(ModelError) as error:
        load_model("tiny", device="cpu", dtype="bf16")
    assert one_line(error) == "not enough memory on cpu for 'tiny' in bf16: close other programs using it"


@pytest.mark.parametrize(
    "cached, revision, fingerprint",
    [
        ("/hub/models--org--sd/snapshots/" + "ab" * 20 + "/unet/config.json", None, "org/sd@" + "ab" * 20),
        (None, None, "org/sd@main"),
        (None, "fp16", "org/sd@fp16"),
        (None, "cd" * 20, "org/sd@" + "cd" * 20),
    ],
)
def test_a_hub_models_fingerprint_names_its_commit_when_the_cache_knows_it(monkeypatch, cached, revision, fingerprint):
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
