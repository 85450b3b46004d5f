"""LoRAs fused into the tiny model's weights and embeddings added to its tokenizer (vedit.model.adapters): what each
does to the weights, checked against the maths written here; the fingerprint and cache keys; one line per bad file."""

from __future__ import annotations

import os
import pickle
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers.adapters import a1111_embedding, diffusers_lora, embedding_vectors, kohya_delta, kohya_lora, tiny_sdxl
from helpers.models import one_line, unet_output
from vedit.cache.inversions import cache_key
from vedit.errors import ConfigError, ModelError
from vedit.model.adapters import apply_adapters, check_adapters, parse_embedding, parse_lora
from vedit.model.loading import load_model
from vedit.model.stable_diffusion import StableDiffusion, expand_prompt
from vedit.report import VeditWarning

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in this file may reach the network

Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
TEXT_Q = "encoder.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def base() -> StableDiffusion:
    return load_model("tiny", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def files(base, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("adapters")
    kohya = kohya_lora(base, folder / "kohya.safetensors", alpha=1.0, rank=2)
    other = kohya_lora(base, folder / "other.safetensors", seed=1, alpha=4.0, rank=2, text=False)
    peft = diffusers_lora(base, folder / "diffusers.safetensors")
    return {"folder": folder, "kohya": kohya, "other": other, "diffusers": peft}


def weight(model: StableDiffusion, layer: str, part: str = "unet") -> torch.Tensor:
    return getattr(model, part).get_submodule(layer).weight.detach()


def with_lora(*values: str, **options) -> StableDiffusion:
    return load_model("tiny", device="cpu", dtype="fp32", lora=list(values), **options)


def test_a_kohya_lora_adds_scale_times_alpha_over_rank_times_b_a_to_unet_and_text_encoder(base, files):
    adapted = with_lora(f"{files['folder'] / 'kohya.safetensors'}:0.7")
    expected = weight(base, Q) + 0.7 * kohya_delta(files["kohya"], Q)
    torch.testing.assert_close(weight(adapted, Q), expected, rtol=0, atol=1e-6)
    text_delta = kohya_delta(files["kohya"], TEXT_Q, prefix="lora_te_text_model_")
    torch.testing.assert_close(
        weight(adapted, TEXT_Q, "text_encoder"),
        weight(base, TEXT_Q, "text_encoder") + 0.7 * text_delta,
        rtol=0,
        atol=1e-6,
    )
    assert not torch.equal(unet_output(adapted), unet_output(base))
    # the model is a plain one again: no peft layer left for an engine to trace
    assert type(adapted.unet.get_submodule(Q)) is torch.nn.Linear
    assert not any("lora" in name for name in adapted.unet.state_dict())


def test_a_diffusers_lora_changes_the_output_by_its_own_b_a(base, files):
    adapted = with_lora(str(files["folder"] / "diffusers.safetensors"))
    down, up = files["diffusers"][f"unet.{Q}.lora_A.weight"], files["diffusers"][f"unet.{Q}.lora_B.weight"]
    torch.testing.assert_close(weight(adapted, Q), weight(base, Q) + up @ down, rtol=0, atol=1e-6)  # alpha = rank
    difference = (unet_output(adapted) - unet_output(base)).abs().max()
    assert difference > 1e-3


def test_a_diffusers_lora_saved_with_its_metadata_fuses_at_its_own_alpha(base, tmp_path):
    import copy

    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from peft import LoraConfig, get_peft_model_state_dict

    unet = copy.deepcopy(base.unet)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_v"], init_lora_weights=False)  # B A ≠ 0
    unet.add_adapter(config)
    tensors = get_peft_model_state_dict(unet)
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        tmp_path, unet_lora_layers=tensors, unet_lora_adapter_metadata=config.to_dict()
    )  # pytorch_lora_weights.safetensors, rank and alpha in its metadata
    adapted = with_lora(f"{tmp_path}:0.5")  # the folder save_lora_weights wrote
    delta = tensors[f"{Q}.lora_B.weight"] @ tensors[f"{Q}.lora_A.weight"]
    torch.testing.assert_close(weight(adapted, Q), weight(base, Q) + 0.5 * 8 / 4 * delta, rtol=0, atol=1e-6)


def test_scale_zero_gives_the_base_models_output_exactly(base, files):
    adapted = with_lora(f"{files['folder'] / 'kohya.safetensors'}:0")
    assert torch.equal(unet_output(adapted), unet_output(base))
    for name, value in base.unet.state_dict().items():
        assert torch.equal(adapted.unet.state_dict()[name], value), name


def test_two_loras_compose_each_at_its_own_scale(base, files):
    folder = files["folder"]
    adapted = with_lora(f"{folder / 'kohya.safetensors'}:0.5", f"{folder / 'other.safetensors'}:-1.5")
    expected = weight(base, Q) + 0.5 * kohya_delta(files["kohya"], Q) - 1.5 * kohya_delta(files["other"], Q)
    torch.testing.assert_close(weight(adapted, Q), expected, rtol=0, atol=1e-6)


def test_the_fingerprint_and_the_inversion_key_change_with_the_files_content_and_scale(base, files, tmp_path):
    folder = files["folder"]
    lora = folder / "kohya.safetensors"

    def key(model: StableDiffusion) -> str:
        return cache_key(
            frames_sha256="f", fingerprint=model.fingerprint, size=(64, 64), inversion_steps=2, steps=2,
            source_prompt="", dtype="float32",
        )  # fmt: skip

    half, full = with_lora(f"{lora}:0.5"), with_lora(str(lora))
    assert half.fingerprint.startswith(base.fingerprint + "+lora:") and half.fingerprint.endswith("*0.5")
    assert len({base.fingerprint, half.fingerprint, full.fingerprint}) == 3
    assert len({key(base), key(half), key(full)}) == 3
    assert with_lora(f"{lora}:0.5").fingerprint == half.fingerprint  # the same file at the same scale: the same key
    copy = tmp_path / "kohya.safetensors"
    copy.write_bytes(lora.read_bytes())
    assert with_lora(f"{copy}:0.5").fingerprint == half.fingerprint  # by content, not by path
    kohya_lora(base, copy, seed=7)  # other content under the same name
    assert key(with_lora(f"{copy}:0.5")) != key(half)
    both = with_lora(str(lora), str(folder / "other.safetensors"))
    swapped = with_lora(str(folder / "other.safetensors"), str(lora))
    assert both.fingerprint != swapped.fingerprint  # in order


@pytest.mark.slow
def test_a_compiled_engine_runs_the_fused_lora_as_eager_does(files):
    from helpers.engines import passes_with, relative_error
    from vedit import plugins
    from vedit.runtime.runner import Passes

    adapted = with_lora(f"{files['folder'] / 'diffusers.safetensors'}:0.8")
    generator = torch.Generator().manual_seed(3)
    inputs = (torch.randn(2, 4, 6, 8, generator=generator), torch.tensor(981), adapted.encode_prompt(["a", "b"]))
    with Passes(adapted, [plugins.get("engine", "eager")]) as passes:
        eager = passes.plain(*inputs)
    traced = passes_with(adapted, "torchscript", None, lambda p: p.plain(*inputs))
    assert relative_error(traced, eager) < 1e-4
    with torch.no_grad():
        assert torch.equal(eager, adapted.unet(inputs[0], 981, encoder_hidden_states=inputs[2]).sample)


# ----------------------------------------------------------------------------- bad LoRAs


def test_a_scale_that_is_not_a_number_is_one_line():
    with pytest.raises(ConfigError) as error:
        parse_lora("x.safetensors:abc")
    assert one_line(error) == "lora 'x.safetensors:abc': the scale after the colon must be a number, got 'abc'"
    assert parse_lora("style.safetensors").scale == 1.0
    assert parse_lora("C:\\loras\\style.safetensors").source == "C:\\loras\\style.safetensors"
    assert parse_lora("owner/style:0.25") == parse_lora("owner/style:.25")


def test_a_missing_file_and_a_hub_id_not_in_the_cache_are_one_line(tmp_path):
    with pytest.raises(ModelError) as error:
        check_adapters([str(tmp_path / "gone.safetensors")], [])
    assert "gone.safetensors' does not exist" in one_line(error)
    with pytest.raises(ModelError) as error:
        check_adapters(["someone/some-style:0.5"], [])
    assert "is neither a file nor a hub id in the local Hugging Face cache" in one_line(error)


def test_a_lora_for_another_architecture_is_one_line_not_a_silent_no_op(base, tmp_path):
    wider = {  # the layer names of this UNet, the shapes of a bigger one (SDXL's 640-wide blocks)
        f"lora_unet_{Q.replace('.', '_')}.lora_down.weight": torch.randn(4, 640),
        f"lora_unet_{Q.replace('.', '_')}.lora_up.weight": torch.randn(640, 4),
        f"lora_unet_{Q.replace('.', '_')}.alpha": torch.tensor(4.0),
        "lora_unet_input_blocks_9_1_proj_in.lora_down.weight": torch.randn(4, 1280),  # and names it lacks
        "lora_unet_input_blocks_9_1_proj_in.lora_up.weight": torch.randn(1280, 4),
    }
    save_file(wider, str(tmp_path / "sdxl.safetensors"))
    with pytest.raises(ModelError) as error:
        with_lora(str(tmp_path / "sdxl.safetensors"))
    assert "fits no layer of model 'tiny'" in one_line(error)


def test_a_lora_that_fits_in_part_applies_that_part_and_warns_how_many_did_not(base, files, tmp_path):
    tensors = dict(files["other"])
    stranger = f"lora_unet_{Q.replace('.', '_')}"
    tensors[f"{stranger}.lora_down.weight"] = torch.randn(2, 77)  # this one layer: the wrong width
    save_file(tensors, str(tmp_path / "partly.safetensors"))
    heard: list[str] = []
    adapted = with_lora(str(tmp_path / "partly.safetensors"), warn=heard.append)
    modules = sum(key.endswith(".lora_down.weight") for key in tensors)
    assert heard == [
        f"LoRA partly.safetensors: 1 of {modules} of its modules fit no layer of model 'tiny' and were not applied "
        f"(first: unet.{Q})"
    ]
    assert torch.equal(weight(adapted, Q), weight(base, Q))
    v = Q.replace("to_q", "to_v")
    torch.testing.assert_close(weight(adapted, v), weight(base, v) + kohya_delta(tensors, v), rtol=0, atol=1e-6)
    with warnings.catch_warnings(record=True) as caught:  # without a listener: the Python API's warning
        warnings.simplefilter("always")
        with_lora(str(tmp_path / "partly.safetensors"))
    assert [str(w.message) for w in caught if w.category is VeditWarning] == heard


def test_corrupt_and_pickled_files_are_one_line_and_nothing_pickled_runs(base, files, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes((files["folder"] / "kohya.safetensors").read_bytes()[:300])
    with pytest.raises(ModelError) as error:
        check_adapters([str(broken)], [])
    assert "is not a readable safetensors file" in one_line(error)

    # a pickle that would call code when loaded: refused, and the code never runs
    ran = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(_RunsCode(str(ran)), protocol=2))
    with pytest.raises(ModelError) as error:
        check_adapters([str(evil)], [])
    assert "is a pickle that needs code to load, which vedit never runs" in one_line(error)
    assert not ran.exists()

    # the same LoRA as a plain weights-only .pt loads as the safetensors file does
    torch.save(OrderedDict(files["kohya"]), tmp_path / "kohya.pt")
    assert torch.equal(
        weight(with_lora(str(tmp_path / "kohya.pt")), Q),
        weight(with_lora(str(files["folder"] / "kohya.safetensors")), Q),
    )
    dora = tmp_path / "dora.safetensors"
    save_file({**files["kohya"], f"lora_unet_{Q.replace('.', '_')}.dora_scale": torch.ones(1, 16)}, str(dora))
    with pytest.raises(ModelError) as error:
        check_adapters([str(dora)], [])
    assert one_line(error) == f"LoRA {dora} is a DoRA (it has dora_scale weights), which vedit does not read"
    plain = tmp_path / "checkpoint.safetensors"
    save_file({"conv.weight": torch.zeros(2, 2)}, str(plain))
    with pytest.raises(ModelError) as error:
        check_adapters([str(plain)], [])
    assert "holds no LoRA weights" in one_line(error)


class _RunsCode:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


# ----------------------------------------------------------------------------- embeddings


def with_embedding(*values: str) -> StableDiffusion:
    return load_model("tiny", device="cpu", dtype="fp32", embeddings=list(values))


def test_an_embedding_adds_its_token_with_the_files_vector_and_prompts_using_it_encode_differently(base, tmp_path):
    vectors = embedding_vectors(base)
    a1111_embedding(tmp_path / "toy.pt", vectors, name="<cat-toy>")
    torch.manual_seed(5)
    adapted = with_embedding(str(tmp_path / "toy.pt"))
    drawn = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(drawn, torch.rand(3))  # loading drew nothing from torch's global generator
    (token_id,) = adapted.tokenizer("<cat-toy>", add_special_tokens=False).input_ids
    assert token_id == len(base.tokenizer)  # one new token, after the vocabulary
    torch.testing.assert_close(adapted.text_encoder.get_input_embeddings().weight[token_id], vectors[0])
    with_token = adapted.encode_prompt(["a photo of <cat-toy>"])
    assert not torch.equal(with_token, adapted.encode_prompt(["a photo of cat"]))
    assert torch.equal(adapted.encode_prompt(["a photo of cat"]), base.encode_prompt(["a photo of cat"]))
    assert adapted.fingerprint.startswith(base.fingerprint + "+embedding:") and adapted.fingerprint.endswith(
        "=<cat-toy>"
    )


def test_every_embedding_format_names_its_token_as_the_file_says_or_as_given(base, tmp_path):
    vector = embedding_vectors(base, seed=2)
    save_file({"emb_params": vector}, str(tmp_path / "painterly.safetensors"))  # A1111 .safetensors: the stem
    torch.save({"<learned>": vector[0]}, tmp_path / "learned_embeds.bin")  # diffusers: its key
    a1111_embedding(tmp_path / "named.pt", vector, name="<named>")
    adapted = with_embedding(
        str(tmp_path / "painterly.safetensors"), str(tmp_path / "learned_embeds.bin"), f"{tmp_path / 'named.pt'}:<mine>"
    )
    table = adapted.text_encoder.get_input_embeddings().weight
    for token in ("painterly", "<learned>", "<mine>"):
        torch.testing.assert_close(table[adapted.tokenizer.convert_tokens_to_ids(token)], vector[0])
    assert "<named>" not in adapted.tokenizer.get_vocab()
    assert parse_embedding("named.pt:<mine>").token == "<mine>" and parse_embedding("named.pt").token is None


def test_a_multi_vector_embedding_expands_its_token_in_every_prompt(base, tmp_path):
    vectors = embedding_vectors(base, count=3, seed=5)
    a1111_embedding(tmp_path / "style.pt", vectors, name="<style>")
    adapted = with_embedding(str(tmp_path / "style.pt"))
    assert adapted.expand_prompt("a <style> cat") == "a <style> <style>_1 <style>_2 cat"
    assert expand_prompt("<style>_1", adapted.embedding_tokens) == "<style>_1"  # written out already
    ids = adapted.tokenizer(adapted.expand_prompt("<style>"), add_special_tokens=False).input_ids
    table = adapted.text_encoder.get_input_embeddings().weight
    torch.testing.assert_close(table[ids], vectors)
    # the overflow check counts the tokens the text encoder reads: 3 for the one word (75 fit, and the two markers)
    words = " ".join(["a"] * 74)
    assert adapted.prompt_overflow(f"{words} x") is None and adapted.prompt_overflow(f"{words} <style>") is not None


def test_an_embedding_whose_token_exists_or_whose_width_fits_no_encoder_is_one_line(base, tmp_path):
    a1111_embedding(tmp_path / "toy.pt", embedding_vectors(base), name="<cat-toy>")
    with pytest.raises(ConfigError) as error:
        with_embedding(f"{tmp_path / 'toy.pt'}:a")
    assert one_line(error) == (
        "embedding toy.pt: the token 'a' is already in the model's tokenizer: give the embedding another after a "
        "colon (toy.pt:<a-1>)"
    )
    with pytest.raises(ConfigError):  # twice the same token
        with_embedding(str(tmp_path / "toy.pt"), str(tmp_path / "toy.pt"))
    save_file({"emb_params": torch.randn(1, 768)}, str(tmp_path / "sd15.safetensors"))
    with pytest.raises(ModelError) as error:
        with_embedding(str(tmp_path / "sd15.safetensors"))
    assert "has 768-wide vectors; this model's text encoders take 32" in one_line(error)


# ----------------------------------------------------------------------------- SDXL: two text encoders


def test_an_sdxl_lora_in_kohyas_own_block_names_reaches_the_unet_and_both_text_encoders(base, tmp_path):
    model = tiny_sdxl(base)
    generator = torch.Generator().manual_seed(0)
    tensors: dict[str, torch.Tensor] = {}
    # kohya's key → the part and layer it adapts, by diffusers' names; kohya names SDXL's UNet blocks as SGM does
    targets = {
        "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q": (
            "unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
        ),
        "lora_unet_output_blocks_0_1_transformer_blocks_1_attn2_to_k": (
            "unet", "up_blocks.0.attentions.0.transformer_blocks.1.attn2.to_k"
        ),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": ("text_encoder", "encoder.layers.0.self_attn.q_proj"),
        "lora_te1_text_model_encoder_layers_0_self_attn_k_proj": ("text_encoder", "encoder.layers.0.self_attn.k_proj"),
        "lora_te2_text_model_encoder_layers_1_self_attn_v_proj": (
            "text_encoder_2", "text_model.encoder.layers.1.self_attn.v_proj"
        ),
        "lora_te2_text_model_encoder_layers_1_self_attn_out_proj": (
            "text_encoder_2", "text_model.encoder.layers.1.self_attn.out_proj"
        ),
    }  # fmt: skip
    layers = {key: getattr(model, part).get_submodule(path) for key, (part, path) in targets.items()}
    for key, layer in layers.items():
        tensors[f"{key}.lora_down.weight"] = torch.randn(2, layer.in_features, generator=generator)
        tensors[f"{key}.lora_up.weight"] = torch.randn(layer.out_features, 2, generator=generator)
        tensors[f"{key}.alpha"] = torch.tensor(1.0)
    save_file(tensors, str(tmp_path / "xl.safetensors"))
    before = {key: layer.weight.detach().clone() for key, layer in layers.items()}
    heard: list[str] = []
    apply_adapters(model, [f"{tmp_path / 'xl.safetensors'}:0.5"], [], heard.append)
    assert heard == []
    for key, layer in layers.items():
        expected = before[key] + 0.5 * kohya_delta(tensors, key, prefix="")
        torch.testing.assert_close(layer.weight.detach(), expected, rtol=0, atol=1e-6)


def test_an_sdxl_embedding_gives_each_text_encoder_its_own_vectors(base, tmp_path):
    model = tiny_sdxl(base)
    clip_l, clip_g = torch.randn(2, 32), torch.randn(2, 48)
    save_file({"clip_l": clip_l, "clip_g": clip_g}, str(tmp_path / "xl-style.safetensors"))
    apply_adapters(model, [], [f"{tmp_path / 'xl-style.safetensors'}:<xl>"])
    for tokenizer, encoder, vectors in (
        (model.tokenizer, model.text_encoder, clip_l),
        (model.tokenizer_2, model.text_encoder_2, clip_g),  # type: ignore[attr-defined]
    ):
        ids = tokenizer(model.expand_prompt("<xl>"), add_special_tokens=False).input_ids
        assert len(ids) == 2
        torch.testing.assert_close(encoder.get_input_embeddings().weight[ids], vectors)
    save_file({"emb_params": torch.randn(1, 32)}, str(tmp_path / "sd15-style.safetensors"))
    with pytest.raises(ModelError) as error:
        apply_adapters(tiny_sdxl(base), [], [str(tmp_path / "sd15-style.safetensors")])
    assert "has vectors for 1 of this model's 2 text encoders" in one_line(error)


# ----------------------------------------------------------------------------- hub ids and the Python API


def test_a_hub_id_is_read_from_the_local_cache_only_and_a_folder_by_the_same_rule(base, files, monkeypatch, tmp_path):
    import huggingface_hub.constants

    commit = "0123456789abcdef" * 2 + "01234567"
    repo = tmp_path / "hub" / "models--someone--styles"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    kohya = (files["folder"] / "kohya.safetensors").read_bytes()
    (repo / "snapshots" / commit / "pytorch_lora_weights.safetensors").write_bytes(kohya)
    from_hub = with_lora("someone/styles:0.7")
    assert torch.equal(weight(from_hub, Q), weight(with_lora(f"{files['folder'] / 'kohya.safetensors'}:0.7"), Q))
    (repo / "snapshots" / commit / "pytorch_lora_weights.safetensors").unlink()
    (repo / "snapshots" / commit / "ink.safetensors").write_bytes(kohya)
    (repo / "snapshots" / commit / "chalk.safetensors").write_bytes(
        (files["folder"] / "other.safetensors").read_bytes()
    )
    with pytest.raises(ModelError) as error:
        check_adapters(["someone/styles"], [])
    assert one_line(error) == (
        "LoRA 'someone/styles' in the Hugging Face cache holds 2 .safetensors files (chalk.safetensors, "
        "ink.safetensors): name one as someone/styles/FILE.safetensors"
    )
    assert torch.equal(weight(with_lora("someone/styles/ink.safetensors:0.7"), Q), weight(from_hub, Q))
    # a local folder by the same rule
    (repo / "snapshots" / commit / "chalk.safetensors").unlink()
    assert torch.equal(weight(with_lora(f"{repo / 'snapshots' / commit}:0.7"), Q), weight(from_hub, Q))


def test_a_model_passed_in_must_have_been_loaded_with_the_loras_beside_it(base, files, clip, tmp_path):
    import vedit
    from vedit.config import load_config
    from vedit.pipeline.preflight import preflight
    from vedit.report import SilentReporter

    lora = [f"{files['folder'] / 'kohya.safetensors'}:0.5"]
    with pytest.raises(ConfigError) as error:
        vedit.edit(clip, tmp_path / "out.mp4", prompt="x", model="tiny", sd=base, lora=lora)
    assert one_line(error).startswith("lora and embedding apply when vedit loads the model, and the model passed in")
    assert not (tmp_path / "out.mp4").exists()
    config = load_config(cwd=tmp_path, prompt="x", model="tiny", lora=lora)
    preflight(clip, config, SilentReporter(), sd=with_lora(*lora))  # as batch's workers pass the model they hold
    with pytest.raises(ConfigError):
        preflight(clip, config, SilentReporter(), sd=with_lora(lora[0].replace(":0.5", ":0.6")))
