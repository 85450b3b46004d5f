"""Mistakes end in one line before any heavy work; what is lost or changed is said; the CLI tells the truth."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_clip
from test_cli import FAST, one_error_line, streams, vedit
from vedit.io.reader import FrameReader


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Fail the test if the model is loaded or a frame is decoded: the check must come first."""
    import vedit.model.loading
    import vedit.io.reader

    def refuse(*args, **kwargs):
        raise AssertionError("heavy work started before the options were checked")

    monkeypatch.setattr(vedit.model.loading, "load_model", refuse)
    monkeypatch.setattr(vedit.io.reader.FrameReader, "__iter__", refuse)


def _refused(tmp_path, clip, *args, code=4):
    out = tmp_path / "never.mp4"
    result = vedit("run", clip, "-p", "x", "--size", "64x48", "-o", out, *args)
    assert result.exit_code == code, result.output
    assert not out.exists()
    assert not (tmp_path / "cache").exists()  # nothing was inverted or cached
    return one_error_line(result)


def test_option_combinations_that_cannot_work_are_refused_first(clip, tmp_path, no_heavy_work):
    tiny = ["--model", "tiny", "--chunk-size", "4"]
    line = _refused(tmp_path, clip, *tiny, "--steps", "2", "--inversion-steps", "3")
    assert "--inversion-steps 3 does not pass through the 2-step sampling schedule" in line
    assert "use --inversion-steps 4" in line
    assert "--steps 1000" in _refused(tmp_path, clip, *tiny, "--steps", "1000", "--inversion-steps", "1000")
    assert "--strength 0.1 with --steps 5 runs no denoising step" in _refused(
        tmp_path, clip, *tiny, "--editor", "img2img", "--strength", "0.1", "--steps", "5")
    assert "--start 0.01" in _refused(tmp_path, clip, *tiny, "--editor", "sdedit", "--start", "0.01", "--steps", "5")
    assert "editor 'img2img' uses no inversion" in _refused(
        tmp_path, clip, *tiny, "--editor", "img2img", "--inversion", tmp_path / "t.safetensors")
    assert "fp16 is not supported on the CPU" in _refused(tmp_path, clip, *tiny, "--dtype", "fp16")


@pytest.mark.parametrize("spec, expected", [
    ("tiny@x", "model 'tiny@x': the weights' seed after '@' must be a whole number"),
    ("random:sd15@-1", "model 'random:sd15@-1': the weights' seed after '@' must be a whole number"),
    ("random:nosuch", "unknown model 'random:nosuch'"),
])
def test_a_malformed_built_model_is_refused_before_it_loads(clip, tmp_path, no_heavy_work, spec, expected):
    assert expected in _refused(tmp_path, clip, "--model", spec, "--chunk-size", "4")


def test_unknown_plugins_are_refused_before_the_model_loads(clip, tmp_path, no_heavy_work):
    assert "unknown nn backend 'annoy'" in _refused(tmp_path, clip, "--model", "tiny", "--nn-backend", "annoy", code=5)
    assert "engine 'tensorrt' cannot run here: tensorrt is not installed" in _refused(
        tmp_path, clip, "--model", "tiny", "--engine", "tensorrt", code=5
    )
    assert "unknown engine 'warp'" in _refused(tmp_path, clip, "--model", "tiny", "--engine", "warp", code=5)


@pytest.mark.parametrize("schedule, expected", [
    ([[0, 4, 8]] * 3, "has 3 steps; this run denoises 2"),
    ([[0, 4]] * 2, "step 0: 2 keyframes for 3 chunks"),
    ([[0, 4, 3]] * 2, "frame 3 is not in chunk 8-11"),
])
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


@pytest.mark.parametrize("flag, value, expected", [
    ("--guidance", "nan", "--guidance must be a finite number (between 0 and 100), got nan"),
    ("--strength", "nan", "--strength must be a finite number (between 0 and 1), got nan"),
    ("--start", "nan", "--start must be a finite number (between 0 and 1), got nan"),
    ("--pnp-f-t", "nan", "--pnp-f-t must be a finite number (between 0 and 1), got nan"),
    ("--pnp-attn-t", "-inf", "--pnp-attn-t must be a finite number (between 0 and 1), got -inf"),
    ("--cache-max-gb", "nan", "--cache-max-gb must be a finite number (0 or more), got nan"),
    ("--cache-max-gb", "inf", "--cache-max-gb must be a finite number (0 or more), got inf"),
])
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
    for fragment in ("[default: pnp]", "[default: 50]", "[default: 7.5]", '[default: ""]',
                     '{"keyframes": [[k, ...], ...]}', "[default: stabilityai/stable-diffusion-2-1-base]"):
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


def test_an_odd_source_size_is_reported_as_written(tmp_path):
    odd = make_clip(tmp_path / "odd.mp4", frames=4, size=(321, 241), source="testsrc",
                    codec=["-c:v", "libx264", "-pix_fmt", "yuv444p"])  # testsrc2 rounds to even sides
    out = tmp_path / "out.mp4"
    result = vedit("run", odd, "-p", "x", "--size", "64x48", "-o", out, *[a for a in FAST if a != "--quiet"])
    assert result.exit_code == 0, result.output
    assert streams(out)["size"] == (320, 240)
    text = " ".join(result.stdout.split())
    assert "64x48 working, 320x240 written (the source is 321x241; H.264 4:2:0 video needs even sides)" in text


def test_the_summary_says_how_to_repeat_the_run(clip, tmp_path):
    out = tmp_path / "o.mp4"
    args = [a for a in FAST if a != "--quiet"]
    result = vedit("run", clip, "-p", "a [red] car", "--source-prompt", "a clip", "--seed", "7", "--size", "64x48", "-o", out, *args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    for fragment in ("prompt 'a [red] car'", "source prompt 'a clip'", "model tiny (tiny:seed0)", "seed 7"):
        assert fragment in text, fragment
    entries = list((tmp_path / "cache" / "inversions").glob("*.safetensors"))
    assert len(entries) == 1 and f"inversion {entries[0]}" in text


def test_progress_is_printed_as_lines_when_stderr_is_not_a_terminal(clip, tmp_path, monkeypatch):
    monkeypatch.setenv("VEDIT_PROGRESS_INTERVAL", "0")  # a line at every advance
    args = [a for a in FAST if a != "--quiet"]
    result = vedit("run", clip, "-p", "x", "--size", "64x48", "-o", tmp_path / "o.mp4", *args)
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    for stage, total in (("read + encode", 12), ("invert", 2), ("denoise", 2), ("decode + write", 12)):
        assert f"vedit: {stage}: started, {total} to do" in lines
    assert "vedit: denoise: 1/2 (50%)" in result.stderr
    assert any(line.startswith("vedit: denoise: done, 2/2 in ") for line in lines)
    # every stage says its speed in frames per second (a step of the loop is 12 frames)
    for stage in ("read + encode", "invert", "denoise", "decode + write"):
        assert any(line.startswith(f"vedit: {stage}: done,") and line.endswith(" frames/s") for line in lines), stage
    assert "\x1b[" not in result.stderr and "━" not in result.stderr  # no terminal codes, no bars


def test_plain_progress_gives_frames_per_second_and_time_left_without_the_steps_done_before(monkeypatch):
    import io

    from vedit.cli.output import PlainReporter
    from vedit.report import open_task

    clock = iter([100.0, 102.0, 104.0, 110.0])  # started, then three advances
    monkeypatch.setattr("vedit.cli.output.time.monotonic", lambda: next(clock))
    stream = io.StringIO()
    task = open_task(PlainReporter(stream, interval=0), "denoise", 50, frames_per_unit=40, done=20)
    task.advance(1)  # 1 step of 40 frames in 2 s: 20 frames/s; 29 steps left at 2 s each
    task.advance(1)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "vedit: denoise: started, 50 to do, 20 done before"
    assert lines[1] == "vedit: denoise: 21/50 (42%), 20 frames/s, 2s elapsed, about 58s left"
    assert lines[2] == "vedit: denoise: 22/50 (44%), 20 frames/s, 4s elapsed, about 56s left"
    # a reporter that knows neither keyword is advanced past the steps done before, as it always was
    seen = []

    class Old:
        def task(self, description, total):
            return type("T", (), {"advance": lambda self, n=1: seen.append(n)})()

    open_task(Old(), "denoise", 50, frames_per_unit=40, done=20)
    assert seen == [20]


def test_plain_progress_reaches_a_redirected_log_while_the_run_goes_on(clip, tmp_path):
    """In a real process with stderr in a file, lines appear as stages start, not only at the end."""
    log = tmp_path / "log.txt"
    cmd = [sys.executable, "-m", "vedit", "run", str(clip), "-p", "x", "--model", "tiny", "--size", "64x48",
           "--steps", "2", "--inversion-steps", "2", "--chunk-size", "4", "-o", str(tmp_path / "o.mp4")]
    with log.open("w") as stderr:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=300,
                              env={**__import__("os").environ, "VEDIT_CACHE_DIR": str(tmp_path / "c")})
    assert done.returncode == 0
    text = log.read_text()
    assert "vedit: invert: started, 2 to do" in text and "vedit: decode + write: done, 12/12" in text


def test_a_prompt_past_77_tokens_is_cut_with_a_warning(clip, tmp_path):
    long_prompt = "a watercolor painting of a tree " + "with many leaves " * 4  # tiny's tokenizer: a token per byte
    result = vedit("run", clip, "-p", long_prompt, "--size", "64x48", "-o", tmp_path / "o.mp4", *FAST)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("vedit: warning:")]
    assert len(warnings) == 1
    count = len(long_prompt.replace(" ", "")) + 2  # a token per byte of each word, plus start and end
    assert count == 84
    assert f"--prompt is {count} tokens, the text encoder reads 77: it is cut after" in warnings[0]
    assert warnings[0].endswith('so "many leaves" is ignored')  # 72 of the 75 free tokens hold whole words


def test_the_python_api_warns_and_records_what_it_warned(clip, tmp_path):
    import vedit as api
    from vedit.report import VeditWarning

    with pytest.warns(VeditWarning, match="^prompt is 102 tokens"):  # the keyword, not the flag
        result = api.edit(clip, tmp_path / "o", prompt="y" * 100, model="tiny", steps=2, inversion_steps=2,
                          chunk_size=4, size="64x48", output_size="working")
    assert len(result.warnings) == 1 and "is cut from its start" in result.warnings[0]


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


def api_config():
    from vedit.config import RunConfig

    return RunConfig(prompt="x", model="tiny", steps=2, inversion_steps=2, chunk_size=4, size="64x48")


# --------------------------------------------------------------------------- trajectory files


@pytest.fixture
def trajectory_file(clip, tmp_path):
    path = tmp_path / "clip.safetensors"
    result = vedit("invert", clip, "--size", "64x48", "--model", "tiny", "--steps", "2", "--inversion-steps", "2",
                   "--source-prompt", "a test card", "-o", path, "--no-cache", "--quiet")
    assert result.exit_code == 0, result.output
    return path


def _with_file(clip, tmp_path, path, *args):
    out = tmp_path / "f.mp4"
    return vedit("run", clip, "-p", "x", "--size", "64x48", "--inversion", path, "--no-cache", "-o", out,
                 "--model", "tiny", "--steps", "2", "--chunk-size", "4", "--quiet", *args), out


def test_a_trajectory_from_another_prompt_is_refused_before_the_model_loads(clip, tmp_path, trajectory_file, no_heavy_work):
    result, out = _with_file(clip, tmp_path, trajectory_file, "--source-prompt", "a cat")
    assert result.exit_code == 4 and not out.exists()
    line = one_error_line(result)
    assert "it was made with --source-prompt 'a test card', this run's is 'a cat'" in line
    assert "--force-inversion" in line


def test_a_trajectory_from_another_model_or_clip_is_refused(clip, tmp_path, trajectory_file):
    other_model, out = _with_file(clip, tmp_path, trajectory_file, "--source-prompt", "a test card",
                                  "--model", "tiny@1")
    assert other_model.exit_code == 4 and not out.exists()
    assert "made with model tiny (tiny:seed0), this run uses tiny@1 (tiny:seed1)" in one_error_line(other_model)
    other = make_clip(tmp_path / "other.mp4", source="mandelbrot")
    other_clip, out = _with_file(other, tmp_path, trajectory_file, "--source-prompt", "a test card")
    assert other_clip.exit_code == 4 and not out.exists()
    assert "it was made from other frames" in one_error_line(other_clip)
    assert str(clip.resolve()) in one_error_line(other_clip)  # names the clip it came from


def test_force_inversion_uses_a_mismatched_file_and_says_so(clip, tmp_path, trajectory_file):
    other = make_clip(tmp_path / "other.mp4", source="mandelbrot")
    result, out = _with_file(other, tmp_path, trajectory_file, "--source-prompt", "a cat", "--force-inversion")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("vedit: warning:")]
    assert len(warnings) == 2
    assert "--source-prompt 'a test card'" in warnings[0] and "other frames" in warnings[1]
    assert streams(out)["frames"] == 12


def test_the_matching_trajectory_is_used_silently(clip, tmp_path, trajectory_file):
    result, out = _with_file(clip, tmp_path, trajectory_file, "--source-prompt", "a test card")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_inversion_steps_asked_for_but_not_those_of_the_file_are_said_to_be_unused(clip, tmp_path, trajectory_file):
    import vedit as api
    from vedit.report import VeditWarning

    unused = (f"inversion file {trajectory_file} was made with 2 inversion steps, and its trajectory is used as it is")
    same_prompt = ("--source-prompt", "a test card")
    result, out = _with_file(clip, tmp_path, trajectory_file, *same_prompt, "--inversion-steps", "50")
    assert result.exit_code == 0 and streams(out)["frames"] == 12
    assert result.stderr.splitlines() == [f"vedit: warning: --inversion-steps 50 is not used: {unused}"]
    same, _ = _with_file(clip, tmp_path, trajectory_file, *same_prompt, "--inversion-steps", "2")
    assert same.exit_code == 0 and same.stderr == ""  # the file's own count: nothing to say
    (tmp_path / "vedit.toml").write_text("[run]\ninversion-steps = 500\n")  # asked for in vedit.toml
    args = ["--inversion", trajectory_file, "--no-cache", "--model", "tiny", "--steps", "2", "--chunk-size", "4", "-q"]
    toml = vedit("run", clip, "-p", "x", "--size", "64x48", *same_prompt, "-o", out, *args, cwd=tmp_path)
    assert toml.exit_code == 0
    assert toml.stderr.splitlines() == [f"vedit: warning: --inversion-steps 500 is not used: {unused}"]
    with pytest.warns(VeditWarning, match=r"^inversion_steps=50 is not used: inversion file "):
        api.edit(clip, tmp_path / "api.mp4", config=api_config().replace(source_prompt="a test card", size="64x48",
                 inversion=str(trajectory_file), no_cache=True), inversion_steps=50)  # fmt: skip


def test_invert_refuses_an_output_it_cannot_write_before_any_work(clip, tmp_path, no_heavy_work):
    result = vedit("invert", clip, "--model", "tiny", "-o", tmp_path / "no" / "t.safetensors")
    assert result.exit_code == 3
    assert "does not exist" in one_error_line(result)


# --------------------------------------------------------------------------- outputs vedit did not write


@pytest.fixture
def theirs(tmp_path):
    """A file vedit did not write of each kind vedit writes, with its bytes as they were."""
    files = {
        "video": make_clip(tmp_path / "theirs.mp4", frames=3, source="mandelbrot"),
        "sheet": tmp_path / "theirs.png",
        "trajectory": tmp_path / "theirs.safetensors",
        "report": tmp_path / "theirs.json",
    }
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(files["sheet"])
    files["trajectory"].write_bytes(b"someone's tensors")
    files["report"].write_text('{"format": "their-tool/1"}')
    return {kind: (path, path.read_bytes()) for kind, path in files.items()}


def _commands(clip, theirs) -> dict[str, list]:
    tiny = ["--model", "tiny", "--steps", "2", "--inversion-steps", "2", "--size", "64x48", "--quiet"]
    return {
        "video": ["run", clip, "-p", "x", "-o", theirs["video"][0], "--chunk-size", "4", *tiny],
        "sheet": ["run", clip, "-p", "x", "--preview", "-o", theirs["sheet"][0], "--chunk-size", "4", *tiny],
        "trajectory": ["invert", clip, "-o", theirs["trajectory"][0], *tiny],
        "report": ["eval", clip, "--source", clip, "--json", theirs["report"][0]],
    }


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


def test_overwrite_replaces_them_and_what_vedit_wrote_it_replaces_unasked(clip, theirs):
    for kind, args in _commands(clip, theirs).items():
        path, before = theirs[kind]
        replaced = vedit(*args, "--overwrite")
        assert replaced.exit_code == 0, (kind, replaced.output)
        assert path.read_bytes() != before, kind
        again = vedit(*args)  # now vedit's own file: the same command works again without the flag
        assert again.exit_code == 0, (kind, again.output)
    assert streams(theirs["video"][0])["frames"] == 12
    assert json.loads(theirs["report"][0].read_text())["format"] == "vedit-eval/1"


def test_the_python_api_refuses_them_too_unless_told(clip, theirs):
    import vedit as api
    from vedit.errors import OutputError

    path, before = theirs["video"]
    with pytest.raises(OutputError, match="theirs.mp4 exists and was not written by vedit"):
        api.edit(clip, path, config=api_config())
    assert path.read_bytes() == before
    assert api.edit(clip, path, config=api_config(), overwrite=True).frames == 12


# --------------------------------------------------------------------------- cache trouble


def test_an_unwritable_cache_never_ends_the_run(clip, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = tmp_path / "o.mp4"
    result = vedit("run", clip, "-p", "x", "--size", "64x48", "--cache-dir", blocker / "cache", "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("vedit: warning:")]
    assert len(warnings) == 2 and "carrying on without it" in warnings[0]
    # the checkpoints (every 5 steps and at the end) fail for the same reason: said once
    assert warnings[1].endswith("(Not a directory); this run cannot resume if stopped")
    assert streams(out)["frames"] == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "clip.mp4", "o.mp4"]


def test_same_output_with_and_without_a_working_cache(clip, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = ["-p", "x", "--size", "64x48", "--output-size", "working", *FAST]
    assert vedit("run", clip, *args, "-o", tmp_path / "a").exit_code == 0
    assert vedit("run", clip, *args, "--cache-dir", blocker, "-o", tmp_path / "b").exit_code == 0
    assert np.array_equal(FrameReader(tmp_path / "a").read_all(), FrameReader(tmp_path / "b").read_all())


# --------------------------------------------------------------------------- clips that are not what they say


@pytest.fixture(scope="module")
def truncated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("truncated")
    whole = make_clip(folder / "whole.mp4", frames=96, size=(64, 48), audio=True,
                      codec=["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "10", "-movflags", "+faststart"])
    cut = folder / "cut.mp4"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return cut


def test_a_truncated_clip_is_refused_with_how_much_was_read(truncated, tmp_path):
    out = tmp_path / "o.mp4"
    result = vedit("run", truncated, "-p", "x", "--size", "64x48", "-o", out, *FAST)
    assert result.exit_code == 2 and not out.exists()
    line = one_error_line(result)
    assert " of 96 frames; the file is truncated or damaged (pass --allow-short" in line


def test_allow_short_edits_what_was_read_and_says_so(truncated, tmp_path):
    out = tmp_path / "o.mp4"
    args = [a for a in FAST if a != "--quiet"]
    result = vedit("run", truncated, "-p", "x", "--size", "64x48", "--allow-short", "-o", out, *args)
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if line.startswith("vedit: warning:")]
    assert len(warning) == 1 and "of 96 frames, the clip ends early" in warning[0]
    read = int(warning[0].split("read ")[1].split(" of")[0])
    assert 0 < read < 96
    info = streams(out)
    assert info["frames"] == read
    assert info["audio"] == pytest.approx(read / 24, abs=0.05)  # the audio of the frames written, no more
    assert f"frames {read} (the clip promised 96; it ends early)" in " ".join(result.stdout.split())


def test_a_variable_rate_clip_is_resampled_with_a_word_or_kept_as_it_is(tmp_path):
    from test_video_timing import graded_vfr_clip

    from vedit.io.frames import FrameRange
    from vedit.io.probe import probe
    from vedit.io.timing import resampling

    clip = graded_vfr_clip(tmp_path / "vfr.mp4")
    change = resampling(probe(clip), FrameRange())
    assert change.dropped > 0 and change.repeated > 0
    args = ["-p", "x", "--size", "64x48", *[a for a in FAST if a != "--quiet"]]
    resampled = vedit("run", clip, *args, "-o", tmp_path / "r.mp4")
    assert resampled.exit_code == 0, resampled.output
    note = f"{change.dropped} frames dropped, {change.repeated} repeated (--keep-timestamps keeps its own times)"
    assert note in " ".join(resampled.stdout.split())
    assert any(note in line for line in resampled.stderr.splitlines() if line.startswith("vedit: warning:"))
    kept = vedit("run", clip, *args, "--keep-timestamps", "-o", tmp_path / "k.mp4")
    assert kept.exit_code == 0, kept.output
    assert "source frame times kept (--keep-timestamps)" in " ".join(kept.stdout.split())
    assert "vedit: warning:" not in kept.stderr
    times = lambda path: [float(f.pts * f.time_base) for f in __import__("av").open(str(path)).decode(video=0)]  # noqa: E731
    source, written = times(clip), times(tmp_path / "k.mp4")
    assert len(written) == len(source)
    assert np.allclose(np.array(written) - written[0], np.array(source) - source[0], atol=1e-3)


def test_a_rotated_phone_clip_is_edited_and_written_upright(tmp_path):
    from conftest import ffmpeg

    stored = make_clip(tmp_path / "stored.mp4", frames=4, size=(64, 48))
    rotated = tmp_path / "phone.mp4"
    subprocess.run([ffmpeg(), "-v", "error", "-display_rotation", "90", "-i", str(stored), "-c", "copy", str(rotated)],
                   check=True)
    out = tmp_path / "o.mp4"
    args = [a for a in FAST if a != "--quiet"]
    result = vedit("run", rotated, "-p", "x", "--size", "48x64", "-o", out, *args)
    assert result.exit_code == 0, result.output
    assert "48x64 working, 48x64 written" in " ".join(result.stdout.split())
    assert streams(out)["size"] == (48, 64)


@pytest.fixture(scope="module")
def clip_with_sound(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("sound") / "sound.mp4", frames=12, audio=True)


def test_webm_is_written_with_its_audio_and_gif_without_it_said_once(clip_with_sound, tmp_path):
    import av

    args = ["-p", "x", "--size", "64x48", *[a for a in FAST if a != "--quiet"]]
    webm = vedit("run", clip_with_sound, *args, "-o", tmp_path / "o.webm")
    assert webm.exit_code == 0, webm.output
    assert "vedit: warning:" not in webm.stderr
    with av.open(str(tmp_path / "o.webm")) as container:
        assert [s.codec_context.name for s in container.streams] == ["vp9", "opus"]
    assert streams(tmp_path / "o.webm")["frames"] == 12 and streams(tmp_path / "o.webm")["size"] == (64, 48)

    gif = vedit("run", clip_with_sound, *args, "-o", tmp_path / "o.gif")
    assert gif.exit_code == 0, gif.output
    warnings = [line for line in gif.stderr.splitlines() if line.startswith("vedit: warning:")]
    dropped = f"GIF has no audio track, so the audio of {clip_with_sound} is dropped"
    assert warnings == [f"vedit: warning: {tmp_path / 'o.gif'}: {dropped}"]
    with av.open(str(tmp_path / "o.gif")) as container:
        assert [s.codec_context.name for s in container.streams] == ["gif"]
    assert streams(tmp_path / "o.gif")["frames"] == 12
    text = " ".join(gif.stdout.split())
    assert "dropped the audio (GIF has no audio track)" in text
    assert "GIF delays are whole hundredths of a second: frames show for 4 or 5 hundredths (24 fps on average)" in text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_gif_too_fast_for_browsers_is_a_warning(tmp_path):
    fast = make_clip(tmp_path / "fast.mp4", frames=6, fps=60)
    result = vedit("run", fast, "-p", "x", "--size", "64x48", *FAST, "-o", tmp_path / "o.gif")
    assert result.exit_code == 0, result.output
    assert (f"vedit: warning: {tmp_path / 'o.gif'}: 60 fps is too fast for GIF: browsers show frames shorter than 2 "
            "hundredths of a second for 10; --frames ::2 halves the rate") in result.stderr


@pytest.mark.parametrize("turned", [False, True])
def test_a_clip_of_non_square_pixels_is_written_at_its_displayed_size(tmp_path, turned):
    from conftest import ffmpeg

    dvd = make_clip(tmp_path / "dvd.mp4", frames=4, size=(720, 480), source="testsrc",
                    codec=["-vf", "setsar=32/27", "-c:v", "libx264", "-pix_fmt", "yuv420p"])
    if turned:  # the rotation turns the displayed picture: 480x853, written 480x854
        phone = tmp_path / "phone.mp4"
        subprocess.run([ffmpeg(), "-v", "error", "-display_rotation", "90", "-i", str(dvd), "-c", "copy", str(phone)],
                       check=True)
        dvd = phone
    out = tmp_path / "o.mp4"
    size = "40x72" if turned else "72x40"
    result = vedit("run", dvd, "-p", "x", "--size", size, "-o", out, *[a for a in FAST if a != "--quiet"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    if turned:
        assert streams(out)["size"] == (480, 854)
        assert ("aspect 720x480 stored with pixel aspect 32:27, turned 90 degrees (480x853 displayed): "
                "read and written with square pixels at 480x854") in text
    else:
        assert streams(out)["size"] == (854, 480)
        assert "72x40 working, 854x480 written (the source is 853x480; H.264 4:2:0 video needs even sides)" in text
        assert ("aspect 720x480 stored with pixel aspect 32:27 (853x480 displayed): "
                "read and written with square pixels at 854x480") in text


def test_the_summary_says_what_is_dropped(tmp_path):
    from conftest import ffmpeg

    subtitles = tmp_path / "words.srt"
    subtitles.write_text("1\n00:00:00,000 --> 00:00:00,400\nhello\n\n")
    clip = tmp_path / "many.mkv"
    subprocess.run(
        [ffmpeg(), "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=24:duration=0.5",
         "-f", "lavfi", "-i", "testsrc2=size=32x24:rate=24:duration=0.5", "-i", str(subtitles),
         "-map", "0", "-map", "1", "-map", "2", "-c:v", "libx264", "-pix_fmt", "yuv422p10le", "-c:s", "srt", str(clip)],
        check=True,
    )
    out = tmp_path / "o.mp4"
    result = vedit("run", clip, "-p", "x", "--size", "64x48", "-o", out, *[a for a in FAST if a != "--quiet"])
    assert result.exit_code == 0, result.output
    assert ("dropped a second video stream (h264); a subtitle stream (srt); 10-bit samples (yuv422p10le) written as "
            "8-bit; 4:2:2 colour (yuv422p10le) written as 4:2:0") in " ".join(result.stdout.split())
    info = streams(out)
    assert info["size"] == (64, 48) and info["frames"] == 12 and info["pix_fmt"] == "yuv420p"


def test_an_ffmpeg_without_vp9_is_refused_before_any_work(clip, tmp_path, monkeypatch, no_heavy_work):
    from test_video import ffmpeg_without

    monkeypatch.setenv("VEDIT_FFMPEG", str(ffmpeg_without(tmp_path, "libvpx-vp9")))
    out = tmp_path / "never.webm"
    result = vedit("run", clip, "-p", "x", "--size", "64x48", "-o", out, *FAST)
    assert result.exit_code == 3, result.output
    assert "has no libvpx-vp9 encoder, which .webm files need" in one_error_line(result)
    assert not out.exists() and not (tmp_path / "cache").exists()
