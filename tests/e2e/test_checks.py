"""Whole runs that check what is said and written: progress in a redirected log, variable-rate clips,
overwriting, unused inversion steps, short clips, webm and gif, with and without a working cache."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_clip
from helpers.checks import _commands, _with_file, api_config, theirs, trajectory_file, truncated  # noqa: F401  (fixtures, used by name)
from helpers.cli import FAST, streams, vedit
from vedit.io.reader import FrameReader

pytestmark = pytest.mark.slow


def test_plain_progress_reaches_a_redirected_log_while_the_run_goes_on(clip, tmp_path):
    """In a real process with stderr in a file, lines appear as stages start, not only at the end."""
    log = tmp_path / "log.txt"
    cmd = [
        sys.executable,
        "-m",
        "vedit",
        "run",
        str(clip),
        "-p",
        "x",
        "--model",
        "tiny",
        "--size",
        "64x48",
        "--steps",
        "2",
        "--inversion-steps",
        "2",
        "--chunk-size",
        "4",
        "-o",
        str(tmp_path / "o.mp4"),
    ]
    with log.open("w") as stderr:
        done = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=300,
            env={**__import__("os").environ, "VEDIT_CACHE_DIR": str(tmp_path / "c")},
        )
    assert done.returncode == 0
    text = log.read_text()
    assert "vedit: invert: started, 2 to do" in text and "vedit: decode + write: done, 12/12" in text


def test_the_python_api_warns_and_records_what_it_warned(clip, tmp_path):
    import vedit as api
    from vedit.report import VeditWarning

    with pytest.warns(VeditWarning, match="^prompt is 102 tokens"):  # the keyword, not the flag
        result = api.edit(
            clip,
            tmp_path / "o",
            prompt="y" * 100,
            model="tiny",
            steps=2,
            inversion_steps=2,
            chunk_size=4,
            size="64x48",
            output_size="working",
        )
    assert len(result.warnings) == 1 and "is cut from its start" in result.warnings[0]


def test_inversion_steps_asked_for_but_not_those_of_the_file_are_said_to_be_unused(clip, tmp_path, trajectory_file):
    import vedit as api
    from vedit.report import VeditWarning

    unused = f"inversion file {trajectory_file} was made with 2 inversion steps, and its trajectory is used as it is"
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


def test_same_output_with_and_without_a_working_cache(clip, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = ["-p", "x", "--size", "64x48", "--output-size", "working", *FAST]
    assert vedit("run", clip, *args, "-o", tmp_path / "a").exit_code == 0
    assert vedit("run", clip, *args, "--cache-dir", blocker, "-o", tmp_path / "b").exit_code == 0
    assert np.array_equal(FrameReader(tmp_path / "a").read_all(), FrameReader(tmp_path / "b").read_all())


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
    from helpers.clips import graded_vfr_clip
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
