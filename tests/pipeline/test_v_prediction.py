"""Whole edits with a v-prediction model on a zero-terminal-SNR trailing schedule (the settings SD 2.x 768 finetunes
ship with), from a saved model folder, beside the same weights predicting ε; and a model vedit cannot read."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from conftest import make_clip
from helpers.cli import FAST, one_error_line, vedit
from vedit import edit
from vedit.model.loading import load_model
from vedit.model.stable_diffusion import StableDiffusion

V_SCHEDULE = {"prediction_type": "v_prediction", "timestep_spacing": "trailing", "rescale_betas_zero_snr": True}


def with_schedule(folder: Path, target: Path, **settings) -> Path:
    shutil.copytree(folder, target)
    config_path = target / "scheduler" / "scheduler_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **settings}))
    return target


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """The tiny model's weights twice: predicting ε on SD's schedule, and v on a zero-SNR trailing one."""
    root = tmp_path_factory.mktemp("models")
    epsilon = load_model("tiny@3", device="cpu").save_pretrained(root / "epsilon")
    return {"epsilon": epsilon, "v_prediction": with_schedule(epsilon, root / "v", **V_SCHEDULE)}


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", frames=6)


@pytest.fixture
def decoded(monkeypatch) -> list[torch.Tensor]:
    """The latents each edit decodes, as the loop left them."""
    seen: list[torch.Tensor] = []
    decode = StableDiffusion.decode_latents

    def recording(self, latents, *args, **kwargs):
        seen.append(latents.detach().cpu().clone())
        return decode(self, latents, *args, **kwargs)

    monkeypatch.setattr(StableDiffusion, "decode_latents", recording)
    return seen


@pytest.mark.parametrize("editor, options", [("pnp", {}), ("sdedit", {"start": 1.0}), ("img2img", {"strength": 1.0})])
def test_a_v_model_edits_from_the_noisiest_timestep_with_finite_latents(
    editor, options, folders, clip_file, decoded, tmp_path
):
    results = {}
    for prediction, folder in folders.items():
        result = edit(
            clip_file,
            tmp_path / f"{prediction}.mp4",
            prompt="a watercolor",
            model=str(folder),
            editor=editor,
            steps=2,
            inversion_steps=2,
            chunk_size=4,
            size="64x48",
            **options,
        )
        assert result.steps_run == 2 and result.output.stat().st_size > 0
        results[prediction] = decoded[-1]
    edited = results["v_prediction"]
    assert edited.shape == (6, 4, 6, 8) and edited.isfinite().all()  # its first step is at t=999, where ᾱ = 0
    assert (edited - results["epsilon"]).abs().max() > 0.1  # the same weights read as v give another edit


@pytest.mark.slow
def test_vedit_run_edits_with_a_saved_v_prediction_folder(folders, clip_file, tmp_path):
    out = tmp_path / "out.mp4"
    args = [a for a in FAST if a not in ("--model", "tiny")]
    result = vedit("run", clip_file, "-p", "a watercolor", "--model", folders["v_prediction"], "-o", out, *args)
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0


def test_a_model_of_an_unknown_prediction_type_is_one_line_before_it_loads(folders, clip_file, tmp_path):
    folder = with_schedule(folders["epsilon"], tmp_path / "flow", prediction_type="flow_prediction")
    result = vedit("run", clip_file, "-p", "x", "--model", folder, "-o", tmp_path / "out.mp4", "--quiet")
    assert result.exit_code == 6
    assert one_error_line(result) == (
        "vedit: error: the model predicts 'flow_prediction', which vedit cannot edit with: it takes models that "
        "predict the noise ('epsilon'), the velocity ('v_prediction') or the clean latent ('sample')"
    )
    assert not (tmp_path / "out.mp4").exists()


def test_vedit_invert_checks_a_v_model_from_its_zero_snr_noise(folders, clip_file):
    args = ["--size", "64x48", "--steps", "2", "--inversion-steps", "2", "--check"]
    result = vedit("invert", clip_file, "--model", folders["v_prediction"], *args)
    assert result.exit_code == 0, result.output
    found = re.search(r"reconstruction PSNR ([\d.]+) dB", result.stdout)
    assert found is not None and 0 < float(found.group(1)) < 100, result.stdout


def test_an_epsilon_model_on_a_zero_snr_trailing_schedule_is_one_line_before_it_loads(folders, clip_file, tmp_path):
    folder = with_schedule(folders["epsilon"], tmp_path / "eps-zero-snr", timestep_spacing="trailing",
                           rescale_betas_zero_snr=True)  # fmt: skip
    result = vedit("run", clip_file, "-p", "x", "--model", folder, "-o", tmp_path / "out.mp4", "--quiet")
    assert result.exit_code == 6
    assert one_error_line(result) == (
        "vedit: error: the model predicts the noise ('epsilon') but its schedule reaches t=999, where zero terminal "
        "SNR leaves no signal (ᾱ=0) to recover the clean latent from: set rescale_betas_zero_snr to false in its "
        "scheduler_config.json, or use a v-prediction model"
    )
    assert "Loading" not in result.output and not (tmp_path / "out.mp4").exists()
