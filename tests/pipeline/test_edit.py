"""What an edit says and writes (vedit.pipeline.edit): the summary, progress lines, warnings, trajectory
files used, cache trouble, and clips that are not what they say."""

from __future__ import annotations

import subprocess

import pytest

from conftest import make_clip
from helpers.checks import _with_file, api_config, theirs, trajectory_file  # noqa: F401  (fixtures, used by name)
from helpers.cli import FAST, streams, vedit


def test_an_odd_source_size_is_reported_as_written(tmp_path):
    odd = make_clip(
        tmp_path / "odd.mp4",
        frames=4,
        size=(321, 241),
        source="testsrc",
        codec=["-c:v", "libx264", "-pix_fmt", "yuv444p"],
    )  # testsrc2 rounds to even sides
    out = tmp_path / "out.mp4"
    result = vedit("run", odd, "-p", "x", "--size", "64x48", "-o", out, *[a for a in FAST if a != "--quiet"])
    assert result.exit_code == 0, result.output
    assert streams(out)["size"] == (320, 240)
    text = " ".join(result.stdout.split())
    assert "64x48 working, 320x240 written (the source is 321x241; H.264 4:2:0 video needs even sides)" in text


def test_the_summary_says_how_to_repeat_the_run(clip, tmp_path):
    out = tmp_path / "o.mp4"
    args = [a for a in FAST if a != "--quiet"]
    result = vedit(
        "run",
        clip,
        "-p",
        "a [red] car",
        "--source-prompt",
        "a clip",
        "--seed",
        "7",
        "--size",
        "64x48",
        "-o",
        out,
        *args,
    )
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


def test_a_rotated_phone_clip_is_edited_and_written_upright(tmp_path):
    from conftest import ffmpeg

    stored = make_clip(tmp_path / "stored.mp4", frames=4, size=(64, 48))
    rotated = tmp_path / "phone.mp4"
    subprocess.run(
        [ffmpeg(), "-v", "error", "-display_rotation", "90", "-i", str(stored), "-c", "copy", str(rotated)], check=True
    )
    out = tmp_path / "o.mp4"
    args = [a for a in FAST if a != "--quiet"]
    result = vedit("run", rotated, "-p", "x", "--size", "48x64", "-o", out, *args)
    assert result.exit_code == 0, result.output
    assert "48x64 working, 48x64 written" in " ".join(result.stdout.split())
    assert streams(out)["size"] == (48, 64)


def test_a_gif_too_fast_for_browsers_is_a_warning(tmp_path):
    fast = make_clip(tmp_path / "fast.mp4", frames=6, fps=60)
    result = vedit("run", fast, "-p", "x", "--size", "64x48", *FAST, "-o", tmp_path / "o.gif")
    assert result.exit_code == 0, result.output
    assert (
        f"vedit: warning: {tmp_path / 'o.gif'}: 60 fps is too fast for GIF: browsers show frames shorter than 2 "
        "hundredths of a second for 10; --frames ::2 halves the rate"
    ) in result.stderr


@pytest.mark.parametrize("turned", [False, True])
def test_a_clip_of_non_square_pixels_is_written_at_its_displayed_size(tmp_path, turned):
    from conftest import ffmpeg

    dvd = make_clip(
        tmp_path / "dvd.mp4",
        frames=4,
        size=(720, 480),
        source="testsrc",
        codec=["-vf", "setsar=32/27", "-c:v", "libx264", "-pix_fmt", "yuv420p"],
    )
    if turned:  # the rotation turns the displayed picture: 480x853, written 480x854
        phone = tmp_path / "phone.mp4"
        subprocess.run(
            [ffmpeg(), "-v", "error", "-display_rotation", "90", "-i", str(dvd), "-c", "copy", str(phone)], check=True
        )
        dvd = phone
    out = tmp_path / "o.mp4"
    size = "40x72" if turned else "72x40"
    result = vedit("run", dvd, "-p", "x", "--size", size, "-o", out, *[a for a in FAST if a != "--quiet"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    if turned:
        assert streams(out)["size"] == (480, 854)
        assert (
            "aspect 720x480 stored with pixel aspect 32:27, turned 90 degrees (480x853 displayed): "
            "read and written with square pixels at 480x854"
        ) in text
    else:
        assert streams(out)["size"] == (854, 480)
        assert "72x40 working, 854x480 written (the source is 853x480; H.264 4:2:0 video needs even sides)" in text
        assert (
            "aspect 720x480 stored with pixel aspect 32:27 (853x480 displayed): "
            "read and written with square pixels at 854x480"
        ) in text


def test_the_summary_says_what_is_dropped(tmp_path):
    from conftest import ffmpeg

    subtitles = tmp_path / "words.srt"
    subtitles.write_text("1\n00:00:00,000 --> 00:00:00,400\nhello\n\n")
    clip = tmp_path / "many.mkv"
    subprocess.run(
        [
            ffmpeg(),
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=64x48:rate=24:duration=0.5",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=32x24:rate=24:duration=0.5",
            "-i",
            str(subtitles),
            "-map",
            "0",
            "-map",
            "1",
            "-map",
            "2",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv422p10le",
            "-c:s",
            "srt",
            str(clip),
        ],
        check=True,
    )
    out = tmp_path / "o.mp4"
    result = vedit("run", clip, "-p", "x", "--size", "64x48", "-o", out, *[a for a in FAST if a != "--quiet"])
    assert result.exit_code == 0, result.output
    assert (
        "dropped a second video stream (h264); a subtitle stream (srt); 10-bit samples (yuv422p10le) written as "
        "8-bit; 4:2:2 colour (yuv422p10le) written as 4:2:0"
    ) in " ".join(result.stdout.split())
    info = streams(out)
    assert info["size"] == (64, 48) and info["frames"] == 12 and info["pix_fmt"] == "yuv420p"
