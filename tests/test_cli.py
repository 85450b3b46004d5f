"""The command line as a user meets it: real clips in, real clips out, one-line errors."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import SHARED_CLIPS, make_clip, one_error_line
from vedit.cli import create_app
from vedit.io.reader import FrameReader

FAST = ["--model", "tiny", "--steps", "2", "--inversion-steps", "2", "--chunk-size", "4", "--quiet"]


def vedit(*args: str, cwd: Path | None = None):
    runner = CliRunner()
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return runner.invoke(create_app(), [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "200"})
    finally:
        os.chdir(old)


def streams(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        info = {"codec": video.codec_context.name, "pix_fmt": video.codec_context.pix_fmt,
                "size": (video.codec_context.width, video.codec_context.height),
                "fps": Fraction(video.average_rate), "frames": frames, "audio": None}
    with av.open(str(path)) as container:
        if container.streams.audio:
            audio = container.streams.audio[0]
            info["audio"] = float(audio.duration * audio.time_base) if audio.duration else None
        info["duration"] = container.duration / 1e6 if container.duration else None
    return info


@pytest.fixture(scope="module")
def clip_ntsc(tmp_path_factory):
    """250x170 at 30000/1001 fps with an audio track: odd size, NTSC rate."""
    return make_clip(tmp_path_factory.mktemp("clips") / "ntsc.mp4", frames=14, size=(250, 170), fps=Fraction(30000, 1001), audio=True)


def test_run_keeps_rate_size_and_audio_of_the_source(clip_ntsc, tmp_path):
    (tmp_path / "o").mkdir()
    out = tmp_path / "o" / "out.mp4"
    result = vedit("run", clip_ntsc, "--prompt", "a watercolor", "--size", "64x48", "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    info = streams(out)
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["size"] == (250, 170)
    assert info["fps"] == Fraction(30000, 1001)
    assert info["frames"] == 14
    assert info["audio"] == pytest.approx(14 * 1001 / 30000, abs=0.08)
    assert [p.name for p in out.parent.iterdir()] == ["out.mp4"]  # no temporary left behind


def test_frame_range_and_stride_trim_video_and_audio(clip_ntsc, tmp_path):
    out = tmp_path / "part.mp4"
    result = vedit("run", clip_ntsc, "-p", "x", "--size", "64x48", "--frames", "2:12:2", "--output-size", "working", "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    info = streams(out)
    assert info["frames"] == 5
    assert info["fps"] == Fraction(30000, 1001) / 2  # real-time playback of the kept frames
    assert info["size"] == (64, 48)
    assert info["audio"] == pytest.approx(10 * 1001 / 30000, abs=0.08)


def test_summary_reports_the_run(clip, tmp_path):
    out = tmp_path / "o.mp4"
    args = [a for a in FAST if a != "--quiet"]
    result = vedit("run", clip, "-p", "x", "--size", "64x48", "-o", out, *args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    for fragment in ("frames 12", "64x48 working, 64x48 written", "pnp + tokenflow, 2 steps, inversion computed",
                     "(3.750 per frame per step)", str(out)):
        assert fragment in text, fragment


def test_same_seed_same_frames_and_the_inversion_is_reused(clip, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    args = ["--size", "64x48", "--output-size", "working", *[x for x in FAST if x != "--quiet"]]
    first = vedit("run", clip, "-p", "a watercolor", "-o", a, *args)
    second = vedit("run", clip, "-p", "a watercolor", "-o", b, *args)
    other = vedit("run", clip, "-p", "a pencil sketch", "-o", c, *args)
    assert "inversion computed" in first.stdout
    assert "inversion cached" in second.stdout and "inversion cached" in other.stdout
    frames_a, frames_b, frames_c = (FrameReader(p).read_all() for p in (a, b, c))
    assert frames_a.shape == (12, 48, 64, 3)
    assert np.array_equal(frames_a, frames_b)
    assert not np.array_equal(frames_a, frames_c)


def test_the_seed_draws_the_edit_and_the_spec_the_weights(clip, tmp_path):
    args = ["--size", "64x48", "--output-size", "working", *[x for x in FAST if x != "--quiet"]]
    inverted = vedit("invert", clip, "--size", "64x48", "--model", "tiny", "--steps", "2", "--inversion-steps", "2",
                     "--seed", "3")  # fmt: skip
    assert inverted.exit_code == 0, inverted.output
    assert inverted.stderr.count("vedit: warning: --seed is ignored: inversion draws nothing at random") == 1
    one = vedit("run", clip, "-p", "x", "--seed", "1", "-o", tmp_path / "one", *args)
    two = vedit("run", clip, "-p", "x", "--seed", "2", "-o", tmp_path / "two", *args)
    for result in (one, two):  # one model, so the clip was inverted once, by 'vedit invert'
        text = " ".join(result.stdout.split())
        assert "model tiny (tiny:seed0)" in text and "inversion cached" in text, text
    assert not np.array_equal(FrameReader(tmp_path / "one").read_all(), FrameReader(tmp_path / "two").read_all())
    other = vedit("run", clip, "-p", "x", "--seed", "1", "-o", tmp_path / "other", *args, "--model", "tiny@1")
    text = " ".join(other.stdout.split())
    assert "model tiny@1 (tiny:seed1)" in text and "inversion computed" in text, text


def test_invert_to_a_file_then_edit_from_it(clip, tmp_path):
    traj = tmp_path / "clip.safetensors"
    result = vedit("invert", clip, "--size", "64x48", "--model", "tiny", "--steps", "2", "--inversion-steps", "4", "-o", traj)
    assert result.exit_code == 0, result.output
    assert "12 frames, 2 stored timesteps (noisiest t=751)" in result.stdout
    from safetensors import safe_open

    with safe_open(str(traj), "pt") as f:
        meta = f.metadata()
        assert meta["format"] == "vedit-trajectory/1" and json.loads(meta["timesteps"]) == [501, 1]
        assert set(f.keys()) == {"clean", "latents_t0501", "latents_t0001", "latents_t0751"}
        assert tuple(f.get_tensor("latents_t0751").shape) == (12, 4, 6, 8)
    listing = vedit("cache", "list")
    assert "1 entries" in listing.stdout
    via_file = vedit("run", clip, "-p", "x", "--size", "64x48", "--inversion", traj, "--no-cache",
                     "-o", tmp_path / "f", "--model", "tiny", "--steps", "2", "--chunk-size", "4")
    via_cache = vedit("run", clip, "-p", "x", "--size", "64x48", "--inversion-steps", "4",
                      "-o", tmp_path / "g", "--model", "tiny", "--steps", "2", "--chunk-size", "4")
    assert "inversion file" in via_file.stdout and "inversion cached" in via_cache.stdout
    assert np.array_equal(FrameReader(tmp_path / "f").read_all(), FrameReader(tmp_path / "g").read_all())
    cleared = vedit("cache", "clear")
    assert "removed 1 cached inversions" in cleared.stdout
    assert "no cached inversions" in vedit("cache", "list").stdout


@pytest.mark.parametrize("editor, propagator", [("img2img", "none"), ("img2img", "tokenflow"), ("sdedit", "none"), ("pnp", "none")])
def test_every_editor_and_propagator_pair_runs(clip, tmp_path, editor, propagator):
    out = tmp_path / "o"
    result = vedit("run", clip, "-p", "x", "--size", "64x48", "--editor", editor, "--propagator", propagator, "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.png"))) == 12


def test_a_folder_of_aligned_frames_is_used_as_is(tmp_path):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / f"f_{i}.png")
    out = tmp_path / "out"
    result = vedit("run", folder, "-p", "x", "--editor", "img2img", "--propagator", "none", "-o", out, *FAST[:-1])
    assert result.exit_code == 0, result.output
    assert "56x40 working, 56x40 written" in result.stdout
    assert FrameReader(out).read_all().shape == (5, 40, 56, 3)


def test_real_clip_from_the_shared_folder(tmp_path):
    tree = SHARED_CLIPS / "tree.avi"
    if not tree.exists():
        pytest.skip("../shared/clips is not beside the checkout")
    out = tmp_path / "tree.mp4"
    result = vedit("run", tree, "-p", "autumn", "--size", "64x48", "--max-frames", "6", "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    info = streams(out)
    assert (info["size"], info["fps"], info["frames"]) == ((320, 240), Fraction(1_000_000, 66_667), 6)


def test_third_party_editor_and_postprocessor_from_the_cli(example_plugin, clip, tmp_path):
    plain, negative = tmp_path / "plain", tmp_path / "negative"
    args = ["--size", "64x48", "--editor", "reconstruct", "--propagator", "none", "--model", "tiny", "--quiet"]
    assert vedit("run", clip, "-p", "x", "-o", plain, *args).exit_code == 0
    assert vedit("run", clip, "-p", "x", "-o", negative, "--postprocess", "negative", *args).exit_code == 0
    a, b = FrameReader(plain).read_all(), FrameReader(negative).read_all()
    assert np.array_equal(b, 255 - a)
    listing = vedit("plugins")
    assert "reconstruct" in listing.stdout and "vedit-example-plugin" in listing.stdout and "0.3.1" in listing.stdout
    assert "example_broken" in listing.stderr


def test_plugins_lists_everything_with_availability():
    result = vedit("plugins")
    assert result.exit_code == 0
    for name in ("img2img", "pnp", "sdedit", "tokenflow", "none", "eager", "torch", "faiss"):
        assert f" {name} " in result.stdout, name
    assert "0.1.0" in result.stdout


def test_an_empty_vedit_plugins_keeps_vedits_own_plugins_and_commands(monkeypatch):
    from vedit import plugins

    monkeypatch.setenv("VEDIT_PLUGINS", "")
    plugins.reset()
    listed = vedit("plugins")
    assert listed.exit_code == 0 and listed.stderr == ""
    for name in ("pnp", "tokenflow", "eager", "torch", "dis", "deflicker-luma"):
        assert f" {name} " in listed.stdout, name
    assert " vedit " in listed.stdout and " 0.1.0 " in listed.stdout
    assert vedit("bench", "--help").exit_code == 0  # the bench command comes from a built-in plugin too


def test_config_file_in_the_working_directory(clip, tmp_path):
    (tmp_path / "vedit.toml").write_text('[run]\nmodel = "tiny"\nsteps = 3\ninversion-steps = 3\nsize = "64x48"\neditor = "sdedit"\n')
    result = vedit("run", clip, "-p", "x", "-o", tmp_path / "o", "--start", "0.7", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    assert "sdedit + tokenflow, 2 steps" in result.stdout  # round(0.7 · 3) = 2 steps
    (tmp_path / "vedit.toml").write_text("[run]\nstep = 3\n")
    bad = vedit("run", clip, "-p", "x", "-o", tmp_path / "p", cwd=tmp_path)
    assert bad.exit_code != 0
    assert "unknown option 'step'" in one_error_line(bad)


def _bad(tmp_path, *args):
    out = tmp_path / "never.mp4"
    result = vedit("run", *args, "-o", out, *FAST)
    assert result.exit_code != 0
    assert not out.exists()
    return one_error_line(result)


def test_bad_inputs_end_in_one_line(clip, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a video")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(clip.read_bytes()[: len(clip.read_bytes()) // 3])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(5000))
    keyframes = tmp_path / "k.json"
    keyframes.write_text('{"keyframes": [[9, 9, 9]]}')
    assert "no such file" in _bad(tmp_path, tmp_path / "missing.mp4", "-p", "x")
    assert "notes.txt" in _bad(tmp_path, text, "-p", "x")
    assert "garbage.mp4" in _bad(tmp_path, garbage, "-p", "x")
    assert "no frames selected" in _bad(tmp_path, clip, "-p", "x", "--frames", "100:")
    assert "unknown editor 'paint'" in _bad(tmp_path, clip, "-p", "x", "--editor", "paint")
    assert "unknown propagator" in _bad(tmp_path, clip, "-p", "x", "--propagator", "magic")
    assert "--prompt" in _bad(tmp_path, clip)
    assert "--size" in _bad(tmp_path, clip, "-p", "x", "--size", "63x48")
    assert "keyframe schedule" in _bad(tmp_path, clip, "-p", "x", "--size", "64x48", "--keyframes", keyframes)
    missing_model = vedit("run", clip, "-p", "x", "--model", "does-not/exist", "-o", tmp_path / "m.mp4")
    assert missing_model.exit_code != 0 and not (tmp_path / "m.mp4").exists()
    assert "does-not/exist" in one_error_line(missing_model)
    result = vedit("run", corrupt, "-p", "x", "--size", "64x48", "-o", tmp_path / "c.mp4", *FAST)
    assert result.exit_code != 0 and not (tmp_path / "c.mp4").exists()
    one_error_line(result)


def test_unwritable_output_fails_before_any_work(clip, tmp_path):
    result = vedit("run", clip, "-p", "x", "-o", tmp_path / "no" / "such" / "dir.mp4", *FAST)
    assert result.exit_code != 0
    assert "no/such" in one_error_line(result)
    same = vedit("run", clip, "-p", "x", "-o", clip, *FAST)
    assert same.exit_code != 0
    one_error_line(same)
    assert clip.stat().st_size > 0


def test_python_api_matches_the_cli(clip, tmp_path):
    import vedit as api

    result = api.edit(clip, tmp_path / "api", prompt="x", model="tiny", steps=2, inversion_steps=2, chunk_size=4,
                      size="64x48", output_size="working")
    cli = vedit("run", clip, "-p", "x", "--size", "64x48", "--output-size", "working", "-o", tmp_path / "cli", *FAST)
    assert cli.exit_code == 0
    assert result.frames == 12 and result.size == (64, 48) and result.fps == 24
    assert result.forwards_per_frame_step == pytest.approx(3 * (1 + 3 / 12))
    assert np.array_equal(FrameReader(tmp_path / "api").read_all(), FrameReader(tmp_path / "cli").read_all())


def test_help_lists_every_run_option():
    from dataclasses import fields

    from vedit.config import RunConfig

    result = vedit("run", "--help")
    text = " ".join(result.stdout.split())
    for f in fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag


def test_the_names_of_the_former_cli_module_are_still_there():
    """Plugin commands written when the command line was one module (``from vedit.cli import user_errors``)."""
    import vedit.cli as cli
    from vedit.cli import cache, options, output

    for name in ("err_console", "out_console", "fail", "user_errors", "warn", "QuietReporter", "RichReporter",
                 "PlainReporter", "reporting", "PROGRESS_INTERVAL", "UNFOLDED_WIDTH"):
        assert getattr(cli, name) is getattr(output, name), name
    assert cli.INVERSION_STEPS_HELP is options.INVERSION_STEPS_HELP
    assert cli.CHECKPOINT_DAYS == cache.CHECKPOINT_DAYS == 30.0


def test_python_m_vedit_cli_is_the_command_line():
    import subprocess
    import sys

    from vedit import __version__

    done = subprocess.run([sys.executable, "-m", "vedit.cli", "--version"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"vedit {__version__}"


def test_a_terminated_run_leaves_no_output(clip, tmp_path):
    """SIGTERM mid-run ends like Ctrl-C: one line, no output file, no temporary left behind."""
    import signal
    import subprocess
    import sys
    import time

    out_dir = tmp_path / "o"
    out_dir.mkdir()
    cmd = [sys.executable, "-m", "vedit", "run", str(clip), "-p", "x", "--model", "tiny", "--size", "64x48",
           "--steps", "200", "--inversion-steps", "200", "--no-cache", "-o", str(out_dir / "out.mp4")]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(6)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr.strip().splitlines()[-1]
    assert list(out_dir.iterdir()) == []


# --------------------------------------------------------------------------- output to a pipe or a log


@pytest.fixture
def deep(tmp_path) -> Path:
    """A folder whose path is over 200 characters: a cut or folded line would break it."""
    folder = tmp_path.joinpath("d" * 70, "e" * 70, "f" * 70)
    folder.mkdir(parents=True)
    assert len(str(folder)) > 200
    return folder


def piped(*args, cwd: Path | None = None):
    """A command as a pipe or a log file sees it: stdout is no terminal and $COLUMNS is not set."""
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(create_app(), [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": None})
    finally:
        os.chdir(old)


def whole(path: Path, output: str) -> bool:
    return any(str(path) in line for line in output.splitlines())


def test_summaries_and_tables_in_a_pipe_keep_long_paths_whole(clip, deep, tmp_path):
    from test_cache import trajectory
    from vedit.cache.inversions import InversionCache

    out = deep / "edited.mp4"
    run = piped("run", clip, "-p", "a watercolor painting", "--size", "64x48", "-o", out, *FAST[:-1])
    assert run.exit_code == 0, run.output
    assert whole(out, run.stdout)  # the run's summary
    evaluated = piped("eval", out, "--source", clip)
    assert evaluated.exit_code == 0, evaluated.output
    assert whole(out, evaluated.stdout)  # eval's table of what was compared
    cache = tmp_path / "listed"
    InversionCache(cache).put("ab12" + "0" * 28, trajectory(source=str(deep / "clip.mp4")))
    assert whole(deep / "clip.mp4", piped("cache", "list", "--cache-dir", cache).stdout)
    engines = tmp_path / "engines" / "plain-torchscript-0123456789abcdef"
    engines.mkdir(parents=True)
    parts = {"engine": "torchscript", "pass": "plain", "model": str(deep / "model"), "batches": "4", "dtype": "float32"}
    (engines / "entry.json").write_text(json.dumps({"parts": parts, "files": {}, "created": 0}))
    assert whole(deep / "model", piped("engines", "list", "--engine-cache", engines.parent).stdout)


def test_the_plugin_table_and_a_batch_plan_in_a_pipe_keep_long_paths_whole(clip, deep, tmp_path):
    from test_batch import job_file
    from vedit import plugins
    from vedit.plugins.hookspecs import hookimpl

    class NeedsAFile:
        name = "needs-a-file"

        def unavailable_reason(self):
            return f"needs {deep / 'weights.bin'}"

    class Plugin:
        @hookimpl
        def register_nn_backends(self, register):
            register(NeedsAFile())

    plugins.get_plugin_manager().register(Plugin(), name="needs-a-file")
    assert whole(deep / "weights.bin", piped("plugins").stdout)
    source = deep / "source.mp4"
    source.write_bytes(clip.read_bytes())
    jobs = job_file(tmp_path / "jobs.toml", [{"input": str(source), "prompt": "x", "output": "out/{clip}.mp4"}],
                    run={"model": "tiny", "steps": 2, "inversion-steps": 2})  # fmt: skip
    plan = piped("batch", jobs, "--dry-run", cwd=tmp_path)
    assert plan.exit_code == 0, plan.output
    assert whole(source.relative_to(tmp_path), plan.stdout)  # the plan shows it relative to the job file
