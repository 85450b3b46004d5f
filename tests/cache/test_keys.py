"""What enters checkpoint keys and batch digests, from the options' declarations."""

from __future__ import annotations

from pathlib import Path

import pytest

import vedit
from helpers.plugins import registered_editor
from vedit.cache.checkpoints import checkpoint_key
from vedit.cache.keys import keyed_options
from vedit.config import RunConfig

KEY_PARTS = {"frames_sha256": "f", "fingerprint": "m", "dtype": "fp32", "device": "cpu", "trajectory": "t"}


@pytest.mark.parametrize(
    "options, key",
    [  # the keys these settings had when every option was a field of RunConfig: existing checkpoints still resume
        ({"prompt": "a"}, "96d5580b104c6176cd197682cb520542"),
        ({"prompt": "a", "editor": "sdedit", "start": 0.5}, "4eef4d843ea2a4ecf3258d3f5e6f328c"),
        ({"prompt": "b", "chunk_size": 4, "pnp_f_t": 0.3, "nn_backend": "torch"}, "c1b706bc9ba74ef1d45e03f3d93d8652"),
        ({"prompt": "d", "model": "tiny@3", "seed": 2}, "0579bdafa48f6a9a249b2f89170cc53b"),
    ],
)
def test_checkpoint_keys_of_settings_from_before_plugins_declared_options_are_unchanged(options, key):
    assert checkpoint_key(RunConfig(**options), **KEY_PARTS) == key


def test_the_digest_covers_the_options_that_change_the_frames_and_no_others():
    settings, paths = keyed_options(RunConfig(prompt="a"), latents=False)
    assert {"prompt", "model", "steps", "device", "postprocess", "output_size", "pnp_f_t", "chunk_size"} <= set(
        settings
    )
    assert not {"engine", "batch_size", "cache_dir", "checkpoint_every", "overwrite", "nn_backend"} & set(settings)
    assert paths == {"inversion", "keyframes"}
    assert not {"model_config", "lora", "embedding"} & set(settings)  # added later: only when set
    given, given_paths = keyed_options(RunConfig(prompt="a", model_config="cfg", lora=["a.safetensors"]), latents=False)
    assert {"model_config", "lora"} <= given_paths and list(given["lora"]) == ["a.safetensors"]
    latents, _ = keyed_options(RunConfig(prompt="a"), latents=True)
    assert {"engine", "batch_size", "nn_backend", "pnp_f_t"} <= set(latents)
    assert not {"postprocess", "output_size", "flow", "checkpoint_every"} & set(latents)


class Sharpen:
    name = "sharpen-test"
    needs_inversion = False

    class Options(vedit.Options):
        amount: float = vedit.option(0.5, min=0.0, max=1.0)
        verbose: bool = vedit.option(False, affects_output=False)


@pytest.fixture
def sharpen():
    with registered_editor(Sharpen()) as editor:
        yield editor


def test_a_plugin_option_counts_when_its_plugin_runs_it_changes_the_output_and_it_is_not_the_default(sharpen):
    def keyed(latents, **options):
        return keyed_options(RunConfig(prompt="a", **options), latents=latents)[0]

    for latents in (False, True):
        assert "sharpen_test_amount" not in keyed(latents, editor="sharpen-test")  # the default: keys as before
        assert keyed(latents, editor="sharpen-test", sharpen_test_amount=0.7)["sharpen_test_amount"] == 0.7
        assert "sharpen_test_amount" not in keyed(latents, sharpen_test_amount=0.7)  # another editor runs
        assert "sharpen_test_verbose" not in keyed(latents, editor="sharpen-test", sharpen_test_verbose=True)
    assert "compile_mode" not in keyed(True, engine="compile", compile_mode="max-autotune")  # the same numbers
    flow = keyed(False, postprocess="deflicker-flow", deflicker_flow_strength=0.2)
    assert flow["deflicker_flow_strength"] == 0.2
    assert "deflicker_flow_strength" not in keyed(True, postprocess="deflicker-flow", deflicker_flow_strength=0.2)


def test_a_keyframe_schedule_enters_a_checkpoint_key_by_its_content(tmp_path: Path):
    schedule = tmp_path / "k.json"
    schedule.write_text('{"keyframes": [[0]]}')
    first = checkpoint_key(RunConfig(prompt="a", keyframes=str(schedule)), **KEY_PARTS)
    schedule.write_text('{"keyframes": [[1]]}')
    assert checkpoint_key(RunConfig(prompt="a", keyframes=str(schedule)), **KEY_PARTS) != first


def test_the_digest_covers_the_options_of_the_annotators_a_run_controls_with_and_not_the_others():
    canny = RunConfig(prompt="a", control=("canny:0.8",), canny_low=50)
    settings, _ = keyed_options(canny, latents=False)
    assert settings["canny_low"] == 50 and "softedge_sigma" not in settings
    assert "canny_low" not in keyed_options(RunConfig(prompt="a", canny_low=50), latents=False)[0]  # no --control
    softer = RunConfig(prompt="a", control=("softedge",), softedge_sigma=3.0)
    assert keyed_options(softer, latents=False)[0]["softedge_sigma"] == 3.0
