"""What a run checks before any heavy work (vedit.pipeline.preflight): options that cannot work, numbers that
are not finite, trajectory files, outputs vedit did not write, truncated clips; each refusal one line."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from conftest import make_clip
from helpers.checks import (  # noqa: F401  (fixtures, used by name)
    _commands,
    _refused,
    _with_file,
    api_config,
    no_heavy_work,
    theirs,
    trajectory_file,
    truncated,
)
from helpers.cli import FAST, one_error_line, vedit


def test_option_combinations_that_cannot_work_are_refused_first(clip, tmp_path, no_heavy_work):
    tiny = ["--model", "tiny", "--chunk-size", "4"]
    line = _refused(tmp_path, clip, *tiny, "--steps", "2", "--inversion-steps", "3")
    assert "--inversion-steps 3 does not pass through the 2-step sampling schedule" in line
    assert "use --inversion-steps 4" in line
    assert "--steps 1000" in _refused(tmp_path, clip, *tiny, "--steps", "1000", "--inversion-steps", "1000")
    assert "--strength 0.1 with --steps 5 runs no denoising step" in _refused(
        tmp_path, clip, *tiny, "--editor", "img2img", "--strength", "0.1", "--steps", "5"
    )
    assert "--start 0.01" in _refused(tmp_path, clip, *tiny, "--editor", "sdedit", "--start", "0.01", "--steps", "5")
    assert "editor 'img2img' uses no inversion" in _refused(
        tmp_path, clip, *tiny, "--editor", "img2img", "--inversion", tmp_path / "t.safetensors"
    )
    assert "fp16 is not supported on the CPU" in _refused(tmp_path, clip, *tiny, "--dtype", "fp16")


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("tiny@x", "model 'tiny@x': the weights' seed after '@' must be a whole number"),
        ("random:sd15@-1", "model 'random:sd15@-1': the weights' seed after '@' must be a whole number"),
        ("random:nosuch", "unknown model 'random:nosuch'"),
    ],
)
def test_a_malformed_built_model_is_refused_before_it_loads(clip, tmp_path, no_heavy_work, spec, expected):
    assert expected in _refused(tmp_path, clip, "--model", spec, "--chunk-size", "4")


def test_unknown_plugins_are_refused_before_the_model_loads(clip, tmp_path, no_heavy_work):
    assert "unknown nn backend 'annoy'" in _refused(tmp_path, clip, "--model", "tiny", "--nn-backend", "annoy", code=5)
    assert "engine 'tensorrt' cannot run here: tensorrt is not installed" in _refused(
        tmp_path, clip, "--model", "tiny", "--engine", "tensorrt", code=5
    )
    assert "unknown engine 'warp'" in _refused(tmp_path, clip, "--model", "tiny", "--engine", "warp", code=5)


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ([[0, 4, 8]] * 3, "has 3 steps; this run denoises 2"),
        ([[0, 4]] * 2, "step 0: 2 keyframes for 3 chunks"),
        ([[0, 4, 3]] * 2, "frame 3 is not in chunk 8-11"),
    ],
)
def test_a_keyframe_file_that_does_not_fit_is_refused_first(clip, tmp_path, no_heavy_work, schedule, expected):
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"keyframes": schedule}))
    line = _refused(tmp_path, clip, *FAST, "--keyframes", path)
    assert expected in line


def test_messages_name_the_flag_and_numbers_as_written(clip, tmp_path):
    assert "--output-size: expected WIDTHxHEIGHT" in _refused(tmp_path, clip, *FAST, "--output-size", "huge")
    line = _refused(tmp_path, clip, *FAST, "--max-frames", "0")
    assert line == "vedit: error: --max-frames must be 1 or more, got 0"
    assert "--steps must be between 1 and 1000, got 1001" in _refused(tmp_path, clip, "--steps", "1001")
    (tmp_path / "vedit.toml").write_text("[run]\nmax-frames = 0\n")
    bad = vedit("run", clip, "-p", "x", "-o", tmp_path / "o.mp4", cwd=tmp_path)
    assert bad.exit_code == 4
    assert one_error_line(bad).endswith("vedit.toml: option 'max-frames' must be 1 or more, got 0")


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--guidance", "nan", "--guidance must be a finite number (between 0 and 100), got nan"),
        ("--strength", "nan", "--strength must be a finite number (between 0 and 1), got nan"),
        ("--start", "nan", "--start must be a finite number (between 0 and 1), got nan"),
        ("--pnp-f-t", "nan", "--pnp-f-t must be a finite number (between 0 and 1), got nan"),
        ("--pnp-attn-t", "-inf", "--pnp-attn-t must be a finite number (between 0 and 1), got -inf"),
        ("--cache-max-gb", "nan", "--cache-max-gb must be a finite number (0 or more), got nan"),
        ("--cache-max-gb", "inf", "--cache-max-gb must be a finite number (0 or more), got inf"),
    ],
)
def test_a_number_that_is_not_finite_is_refused_first(clip, tmp_path, no_heavy_work, flag, value, expected):
    # NaN fails every comparison, so a range check alone let it through (--guidance nan wrote black frames)
    assert _refused(tmp_path, clip, *FAST, flag, value) == f"vedit: error: {expected}"


def test_a_number_that_is_not_finite_in_vedit_toml_is_refused_first(clip, tmp_path, no_heavy_work):
    (tmp_path / "vedit.toml").write_text("[run]\nguidance = nan\n")
    out = tmp_path / "o.mp4"
    result = vedit("run", clip, "-p", "x", "--model", "tiny", "-o", out, cwd=tmp_path)
    assert result.exit_code == 4 and not out.exists()
    expected = f"{tmp_path / 'vedit.toml'}: option 'guidance' must be a finite number (between 0 and 100), got nan"
    assert one_error_line(result) == f"vedit: error: {expected}"
    result = vedit("invert", clip, "--model", "tiny", "--config", tmp_path / "vedit.toml")
    assert result.exit_code == 4 and one_error_line(result) == f"vedit: error: {expected}"
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("error, hint", [
    # the CPU allocator's own words: the CPU refuses fp16, so the hint names what works there
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                  "you tried to allocate 137438953472 bytes. Error code 12 (Cannot allocate memory)"),
     "try a smaller --size, --chunk-size or --batch-size (or --dtype bf16 on the CPU)"),
    (MemoryError(), "try a smaller --size, --chunk-size or --batch-size (or --dtype bf16 on the CPU)"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore"),
     "try --dtype fp16, a smaller --size, --chunk-size or --batch-size"),
])  # fmt: skip
def test_running_out_of_memory_is_one_line_that_fits_the_memory_that_ran_out(clip, tmp_path, monkeypatch, error, hint):
    edit_module = importlib.import_module("vedit.pipeline.edit")  # vedit.pipeline.edit is the function

    def out_of_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(edit_module, "encode_clip", out_of_memory)
    line = _refused(tmp_path, clip, *FAST, code=7)
    detail = str(error).splitlines()[0][:120] if str(error) else "allocation failed"
    assert line == f"vedit: error: out of memory ({detail}): {hint}"


def test_usage_errors_are_one_line_with_exit_code_4(clip):
    for args, expected in [
        (["run", clip, "-p", "x", "--steps", "abc"], "Invalid value for '--steps'"),
        (["run", clip, "-p", "x", "--bogus"], "No such option: --bogus"),
        (["run"], "Missing argument"),
    ]:
        result = vedit(*args)
        assert result.exit_code == 4, result.output
        assert expected in one_error_line(result)


def test_text_with_brackets_and_colons_is_shown_literally(clip, tmp_path):
    help_text = " ".join(vedit("run", "--help").stdout.split())
    for fragment in (
        "[default: pnp]",
        "[default: 50]",
        "[default: 7.5]",
        '[default: ""]',
        '{"keyframes": [[k, ...], ...]}',
        "[default: stabilityai/stable-diffusion-2-1-base]",
    ):
        assert fragment in help_text, fragment
    line = _refused(tmp_path, clip, *FAST, "--frames", "a:100:")
    assert line.endswith("got 'a:100:'")  # not an emoji


def test_plugin_reasons_keep_their_brackets():
    from vedit import plugins
    from vedit.plugins.hookspecs import hookimpl

    class NeedsExtra:
        name = "needs-extra"

        def unavailable_reason(self):
            return "needs faiss: pip install 'vedit[faiss]'"

    class Plugin:
        @hookimpl
        def register_nn_backends(self, register):
            register(NeedsExtra())

    plugins.get_plugin_manager().register(Plugin(), name="needs-extra")
    listing = " ".join(vedit("plugins").stdout.split())
    assert "pip install 'vedit[faiss]'" in listing


def test_the_python_api_checks_its_options_like_the_cli(clip, tmp_path):
    import vedit as api
    from vedit.errors import ConfigError

    with pytest.raises(ConfigError, match="^max_frames must be 1 or more"):
        api.edit(clip, tmp_path / "o", config=api_config(), max_frames=0)


def test_the_python_api_refuses_numbers_that_are_not_finite_before_any_work(clip, tmp_path, no_heavy_work):
    import vedit as api
    from vedit.errors import ConfigError

    out = tmp_path / "o.mp4"
    with pytest.raises(ConfigError) as error:
        api.edit(clip, out, config=api_config(), guidance=float("nan"))
    assert str(error.value) == "guidance must be a finite number (between 0 and 100), got nan"
    # A RunConfig built by hand has not been through validation; it is checked all the same.
    with pytest.raises(ConfigError) as error:
        api.edit(clip, out, config=api_config().replace(pnp_f_t=float("inf")))
    assert str(error.value) == "pnp_f_t must be a finite number (between 0 and 1), got inf"
    with pytest.raises(ConfigError) as error:
        api.invert(clip, None, config=api_config().replace(cache_max_gb=float("nan")))
    assert str(error.value) == "cache_max_gb must be a finite number (0 or more), got nan"
    assert not out.exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("args, options, flag_line, keyword_line", [
    (["--steps", "20"], {"steps": 20},
     "--inversion-steps 50 does not pass through the 20-step sampling schedule (it never visits t=951); "
     "use --inversion-steps 40",
     "inversion_steps=50 does not pass through the 20-step sampling schedule (it never visits t=951); "
     "use inversion_steps=40"),
    (["--max-frames", "0"], {"max_frames": 0},
     "--max-frames must be 1 or more, got 0", "max_frames must be 1 or more, got 0"),
    (["--editor", "img2img", "--strength", "0.1", "--steps", "5"], {"editor": "img2img", "strength": 0.1, "steps": 5},
     "--strength 0.1 with --steps 5 runs no denoising step; raise either",
     "strength=0.1 with steps=5 runs no denoising step; raise either"),
    (["--size", "60x48"], {"size": "60x48"},
     "--size: 60x48 is not allowed; width and height must be positive multiples of 8",
     "size: 60x48 is not allowed; width and height must be positive multiples of 8"),
    (["--dtype", "fp16"], {"dtype": "fp16"},
     "fp16 is not supported on the CPU (many of its kernels are missing or slow there): "
     "use --dtype fp32 or --dtype bf16",
     "fp16 is not supported on the CPU (many of its kernels are missing or slow there): "
     "use dtype='fp32' or dtype='bf16'"),
])  # fmt: skip
def test_a_mistake_names_the_flag_on_the_command_line_and_the_keyword_in_the_python_api(
    clip, tmp_path, no_heavy_work, args, options, flag_line, keyword_line
):
    import vedit as api
    from vedit.errors import ConfigError

    assert _refused(tmp_path, clip, "--model", "tiny", "--device", "cpu", *args) == f"vedit: error: {flag_line}"
    with pytest.raises(ConfigError) as error:
        api.edit(clip, tmp_path / "o.mp4", prompt="x", model="tiny", device="cpu", **options)
    assert str(error.value) == keyword_line


def test_a_trajectory_from_another_prompt_is_refused_before_the_model_loads(
    clip, tmp_path, trajectory_file, no_heavy_work
):
    result, out = _with_file(clip, tmp_path, trajectory_file, "--source-prompt", "a cat")
    assert result.exit_code == 4 and not out.exists()
    line = one_error_line(result)
    assert "it was made with --source-prompt 'a test card', this run's is 'a cat'" in line
    assert "--force-inversion" in line


def test_a_trajectory_from_another_model_or_clip_is_refused(clip, tmp_path, trajectory_file):
    other_model, out = _with_file(
        clip, tmp_path, trajectory_file, "--source-prompt", "a test card", "--model", "tiny@1"
    )
    assert other_model.exit_code == 4 and not out.exists()
    assert "made with model tiny (tiny:seed0), this run uses tiny@1 (tiny:seed1)" in one_error_line(other_model)
    other = make_clip(tmp_path / "other.mp4", source="mandelbrot")
    other_clip, out = _with_file(other, tmp_path, trajectory_file, "--source-prompt", "a test card")
    assert other_clip.exit_code == 4 and not out.exists()
    assert "it was made from other frames" in one_error_line(other_clip)
    assert str(clip.resolve()) in one_error_line(other_clip)  # names the clip it came from


def test_invert_refuses_an_output_it_cannot_write_before_any_work(clip, tmp_path, no_heavy_work):
    result = vedit("invert", clip, "--model", "tiny", "-o", tmp_path / "no" / "t.safetensors")
    assert result.exit_code == 3
    assert "does not exist" in one_error_line(result)


def test_files_vedit_did_not_write_are_refused_before_any_work(clip, tmp_path, theirs, no_heavy_work):
    for kind, args in _commands(clip, theirs).items():
        result = vedit(*args)
        path, before = theirs[kind]
        assert result.exit_code == 3, (kind, result.output)
        assert one_error_line(result) == (f"vedit: error: {path} exists and was not written by vedit; "
                                          "pass --overwrite to replace it")  # fmt: skip
        assert path.read_bytes() == before, kind
    notes = tmp_path / "o.eval.json"  # where vedit run --eval puts its report
    notes.write_text("my notes")
    result = vedit("run", clip, "-p", "x", "-o", tmp_path / "o.mp4", "--eval", *FAST)
    errors = [line for line in result.stderr.splitlines() if line.startswith("vedit: error:")]
    assert result.exit_code == 3 and errors == [f"vedit: error: {notes} exists and was not written by vedit; "
                                                "pass --overwrite to replace it"]  # fmt: skip
    assert notes.read_text() == "my notes" and not (tmp_path / "o.mp4").exists()
    assert not (tmp_path / "cache").exists()  # nothing was inverted or cached


def test_a_truncated_clip_is_refused_with_how_much_was_read(truncated, tmp_path):
    out = tmp_path / "o.mp4"
    result = vedit("run", truncated, "-p", "x", "--size", "64x48", "-o", out, *FAST)
    assert result.exit_code == 2 and not out.exists()
    line = one_error_line(result)
    assert " of 96 frames; the file is truncated or damaged (pass --allow-short" in line


def test_an_ffmpeg_without_vp9_is_refused_before_any_work(clip, tmp_path, monkeypatch, no_heavy_work):
    from helpers.clips import ffmpeg_without

    monkeypatch.setenv("VEDIT_FFMPEG", str(ffmpeg_without(tmp_path, "libvpx-vp9")))
    out = tmp_path / "never.webm"
    result = vedit("run", clip, "-p", "x", "--size", "64x48", "-o", out, *FAST)
    assert result.exit_code == 3, result.output
    assert "has no libvpx-vp9 encoder, which .webm files need" in one_error_line(result)
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_a_control_clip_that_does_not_fit_is_refused_before_the_model_loads(clip, tmp_path, no_heavy_work):
    wrong = make_clip(tmp_path / "wrong.mp4", frames=7)
    line = _refused(tmp_path, clip, "--model", "tiny", "--control", wrong, "--controlnet", "random", code=2)
    assert line == (
        f"vedit: error: --control {wrong}: the control clip gives 7 frames and the source 12; a control clip needs "
        "one frame for each frame of the source"
    )
    (tmp_path / "notes.mp4").write_text("not a video\n")
    assert "notes.mp4: not a readable video" in _refused(
        tmp_path, clip, "--model", "tiny", "--control", tmp_path / "notes.mp4", "--controlnet", "random", code=2
    )
    assert "--canny-low 200 must be below --canny-high 200" in _refused(
        tmp_path, clip, "--model", "tiny", "--control", "canny", "--canny-low", "200"
    )
    assert "'nosuch' is neither an annotator (canny, softedge) nor an existing control clip" in _refused(
        tmp_path, clip, "--model", "tiny", "--control", "nosuch:0.5", code=2
    )
