"""``--lora`` and ``--embedding`` on the command line: repeatable, one line and the right exit code for each bad
file before any work, and a run that uses both."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from helpers.adapters import a1111_embedding, embedding_vectors, kohya_lora
from helpers.checks import no_heavy_work  # noqa: F401  (a fixture, used by name)
from helpers.cli import FAST, one_error_line, vedit
from vedit.model.loading import load_model

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapters")
    model = load_model("tiny", device="cpu", dtype="fp32")
    kohya_lora(model, folder / "style.safetensors")
    save_file(  # SDXL's cross-attention width: its keys name this UNet's layers, its shapes fit none
        {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.randn(4, 2048),
         "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.randn(16, 4)},
        str(folder / "sdxl.safetensors"),
    )  # fmt: skip
    a1111_embedding(folder / "toy.pt", embedding_vectors(model, count=2), name="<toy>")
    (folder / "code.pt").write_bytes(pickle.dumps(print, protocol=2))  # loading it would need a global
    return folder


def test_bad_loras_and_embeddings_end_in_one_line_before_any_output(adapters, clip, tmp_path):
    out = tmp_path / "out.mp4"
    cases = [
        (["--lora", f"{adapters / 'style.safetensors'}:abc"], 4, "the scale after the colon must be a number"),
        (["--lora", str(adapters / "sdxl.safetensors")], 6, "fits no layer of model 'tiny'"),
        (["--lora", str(adapters / "code.pt")], 6, "is a pickle that needs code to load, which vedit never runs"),
        (["--lora", str(tmp_path / "none.safetensors")], 6, "none.safetensors' does not exist"),
        (["--embedding", f"{adapters / 'toy.pt'}:a"], 4, "the token 'a' is already in the model's tokenizer"),
    ]
    for flags, code, text in cases:
        result = vedit("run", clip, "-p", "x", "-o", out, *FAST, *flags)
        assert result.exit_code == code, (flags, result.output)
        assert text in one_error_line(result)
        assert not out.exists()


def test_an_embeddings_token_the_tokenizer_has_is_refused_before_the_model_loads(
    adapters, clip, tmp_path, no_heavy_work
):
    out = tmp_path / "out.mp4"
    toy = str(adapters / "toy.pt")
    for flags in (["--embedding", f"{toy}:a"], ["--embedding", toy, "--embedding", toy]):  # a word; twice one token
        result = vedit("run", clip, "-p", "x", "-o", out, *FAST, *flags)
        assert result.exit_code == 4, (flags, result.output)
        assert "is already in the model's tokenizer" in one_error_line(result)
        assert not out.exists()


@pytest.mark.slow
def test_a_run_fuses_every_lora_given_and_uses_the_embeddings_token(adapters, clip, tmp_path):
    out = tmp_path / "out.mp4"
    style = adapters / "style.safetensors"
    result = vedit(
        "run", clip, "-p", "a <toy> tree", "-o", out, *FAST[:-1], "--max-frames", "4",
        "--lora", f"{style}:0.8", "--lora", f"{style}:-0.3", "--embedding", adapters / "toy.pt",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.exists()
    (model_line,) = [line for line in result.stdout.splitlines() if line.startswith("model")]
    assert model_line.count("+lora:") == 2 and "*0.8+lora:" in model_line and "*-0.3+embedding:" in model_line
    assert "=<toy>)" in model_line
