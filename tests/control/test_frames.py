"""The control frames of a run (vedit.control.frames): control clips and folders read as the source is and checked
before any work, annotations made once per clip and cached beside the inversion."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vedit
from conftest import make_clip
from helpers.clips import ffmpeg_children, ffmpeg_run
from helpers.plugins import registered_annotator
from helpers.preview import Recorder
from vedit.config import load_config
from vedit.control.frames import check_controls, control_frames
from vedit.control.sources import ControlSource
from vedit.errors import ConfigError, InputError, PluginError
from vedit.io.reader import FrameReader
from vedit.pipeline.preflight import open_clip


class Inverting(vedit.Annotator):
    """Control frames that are the source's negatives; counts the frames it is asked to annotate."""

    name = "inverting"
    version = "1"
    batch_size = 5

    class Options(vedit.Annotator.Options):
        gain: int = vedit.option(1, min=1, max=3)
        verbose: bool = vedit.option(False, affects_output=False)

    def __init__(self):
        self.annotated: list[int] = []

    def annotate(self, frames):
        self.annotated.append(len(frames))
        return 255 - frames


@pytest.fixture
def inverting():
    with registered_annotator(Inverting()) as annotator:
        yield annotator


def graded_clip(path: Path, frames: int = 12, size: str = "64x48", rate: int = 24) -> Path:
    """Flat grey frames whose level says their number: frame n is grey 16 + 7n."""
    ffmpeg_run(
        "-f", "lavfi", "-i", f"color=size={size}:rate={rate},format=gray,geq=lum='16+7*N'", "-frames:v", str(frames),
        "-c:v", "libx264", "-crf", "4", "-pix_fmt", "yuv420p", str(path),
    )  # fmt: skip
    return path


def frame_numbers(frames: np.ndarray) -> list[int]:
    return [int(round((frame.mean() - 16) / 7)) for frame in frames]


def opened(source: Path, tmp_path: Path, **options):
    """The run's config (at 64x48 unless ``size`` says otherwise), its opened clip, and the sha256 of its selected
    frames read as encode_clip reads them."""
    config = load_config(cwd=tmp_path, **{"prompt": "x", "size": "64x48", **options})
    clip = open_clip(source, config)
    digest = hashlib.sha256()
    for batch in clip.reader.batches(4):
        digest.update(batch.tobytes())
    return config, clip, digest.hexdigest()


def frames_of(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    return FrameReader(path, size=size).read_all()


def cached_files(tmp_path: Path) -> list[str]:
    folder = tmp_path / "cache" / "annotations"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------- annotations and their cache


def test_annotations_are_made_once_and_reused_by_a_run_with_another_prompt(clip, tmp_path, inverting):
    config, opened_clip, sha = opened(clip, tmp_path, control=["inverting:0.5"])
    sources = check_controls(config, opened_clip)
    assert sources == [ControlSource("inverting:0.5", 0.5, "inverting", None, None)]
    first = Recorder()
    (made,) = control_frames(sources, config, opened_clip, sha, first)
    source_frames = frames_of(clip, opened_clip.reader.size)
    assert made.shape == (12, 48, 64, 3) and made.dtype == np.uint8
    assert np.array_equal(made, 255 - source_frames)
    assert inverting.annotated == [5, 5, 2] and first.tasks == ["annotate (inverting)"]
    assert len(cached_files(tmp_path)) == 1 and first.messages == []

    again, again_clip, again_sha = opened(clip, tmp_path, control=["inverting:0.5"], prompt="another prompt")
    second = Recorder()
    (reused,) = control_frames(check_controls(again, again_clip), again, again_clip, again_sha, second)
    assert inverting.annotated == [5, 5, 2]  # not annotated again
    entry = tmp_path / "cache" / "annotations" / cached_files(tmp_path)[0]
    assert second.messages == [f"reusing cached annotations {entry}"] and second.tasks == []
    assert isinstance(reused, np.memmap) and not reused.flags.writeable  # read from its file, not held in memory
    assert np.array_equal(reused, made)


def test_the_annotations_key_changes_with_an_option_the_version_and_the_size_and_nothing_else(
    clip, tmp_path, inverting
):
    def annotate(**options) -> int:
        """Frames annotated by a run with ``options``."""
        config, opened_clip, sha = opened(clip, tmp_path, control=["inverting"], **options)
        before = sum(inverting.annotated)
        control_frames(check_controls(config, opened_clip), config, opened_clip, sha, Recorder())
        return sum(inverting.annotated) - before

    assert annotate() == 12
    assert annotate(inverting_gain=2) == 12  # an option that changes the frames: another entry
    assert annotate(inverting_gain=2) == 0
    assert annotate(inverting_verbose=True, inverting_controlnet="/models/other", prompt="y", source_prompt="z") == 0
    assert annotate(size="32x24") == 12  # another working size
    inverting.version = "2"
    assert annotate() == 12
    assert len(cached_files(tmp_path)) == 4


def test_no_cache_annotates_every_time_and_keeps_nothing(clip, tmp_path, inverting):
    config, opened_clip, sha = opened(clip, tmp_path, control=["inverting"], no_cache=True)
    sources = check_controls(config, opened_clip)
    for _ in range(2):
        (made,) = control_frames(sources, config, opened_clip, sha, Recorder())
        assert np.array_equal(made, 255 - frames_of(clip, opened_clip.reader.size))
    assert inverting.annotated == [5, 5, 2] * 2
    assert not (tmp_path / "cache").exists()


def test_a_preview_slices_the_clips_annotations_or_makes_its_frames_alone_and_keeps_nothing(clip, tmp_path, inverting):
    config, opened_clip, sha = opened(clip, tmp_path, control=["inverting"])
    sources = check_controls(config, opened_clip)
    expected = 255 - frames_of(clip, opened_clip.reader.size)
    (alone,) = control_frames(sources, config, opened_clip, sha, Recorder(), frames=[9, 2])
    assert np.array_equal(alone, expected[[9, 2]]) and inverting.annotated == [2]  # those two frames alone
    assert cached_files(tmp_path) == []
    control_frames(sources, config, opened_clip, sha, Recorder())  # the whole clip's, kept
    reporter = Recorder()
    (sliced,) = control_frames(sources, config, opened_clip, sha, reporter, frames=[9, 2])
    assert np.array_equal(sliced, expected[[9, 2]]) and sum(inverting.annotated) == 2 + 12
    assert reporter.messages[0].startswith("reusing cached annotations ")


def test_a_damaged_entry_is_said_removed_and_made_again(clip, tmp_path, inverting):
    config, opened_clip, sha = opened(clip, tmp_path, control=["inverting"])
    sources = check_controls(config, opened_clip)
    control_frames(sources, config, opened_clip, sha, Recorder())
    entry = tmp_path / "cache" / "annotations" / cached_files(tmp_path)[0]
    entry.write_bytes(entry.read_bytes()[:-100])  # cut short
    reporter = Recorder()
    (made,) = control_frames(sources, config, opened_clip, sha, reporter)
    assert reporter.warnings == [
        f"cached annotations {entry.stem[:8]}… are damaged (mmap length is greater than file size); "
        "computing them again"
    ]
    assert np.array_equal(made, 255 - frames_of(clip, opened_clip.reader.size)) and sum(inverting.annotated) == 24
    assert entry.stat().st_size == 128 + 12 * 48 * 64 * 3  # written whole again: the .npy header and the frames


def test_a_cache_that_cannot_be_written_is_one_warning_and_the_annotations_are_still_made(clip, tmp_path, inverting):
    (tmp_path / "blocked").write_text("")
    config, opened_clip, sha = opened(clip, tmp_path, control=["inverting"], cache_dir=str(tmp_path / "blocked"))
    reporter = Recorder()
    (made,) = control_frames(check_controls(config, opened_clip), config, opened_clip, sha, reporter)
    assert np.array_equal(made, 255 - frames_of(clip, opened_clip.reader.size))
    assert reporter.warnings == [
        f"cannot write the annotation cache in {tmp_path / 'blocked' / 'annotations'} (Not a directory); "
        "carrying on without it"
    ]


def test_an_annotator_that_returns_frames_of_another_shape_is_one_line_naming_it(clip, tmp_path):
    class Gray(vedit.Annotator):
        name = "gray"

        def annotate(self, frames):
            return frames.mean(axis=-1).astype(np.uint8)

    with registered_annotator(Gray()):
        config, opened_clip, sha = opened(clip, tmp_path, control=["gray"])
        with pytest.raises(PluginError, match=r"^annotator 'gray' made uint8 frames of shape \(12, 48, 64\) from "):
            control_frames(check_controls(config, opened_clip), config, opened_clip, sha, Recorder())
    assert cached_files(tmp_path) == []  # nothing half-written is left


def test_an_annotators_check_refuses_its_options_in_preflight(clip, tmp_path):
    config, opened_clip, _ = opened(clip, tmp_path, control=["canny"], canny_low=220)
    with pytest.raises(ConfigError, match="^canny_low=220 must be below canny_high=200"):
        check_controls(config, opened_clip)


# --------------------------------------------------------------------------- control clips and folders


def test_a_control_clip_is_read_with_the_sources_frame_selection(tmp_path):
    source = graded_clip(tmp_path / "source.mp4")
    control = graded_clip(tmp_path / "control.mp4", size="128x96")  # twice the size: resized to the working size
    config, opened_clip, sha = opened(source, tmp_path, control=[str(control)], controlnet=["random"], frames="2:10:2")
    reporter = Recorder()
    sources = check_controls(config, opened_clip, reporter=reporter)
    assert sources == [ControlSource(str(control), 1.0, None, str(control), "random")] and reporter.warnings == []
    (made,) = control_frames(sources, config, opened_clip, sha, reporter)
    assert made.shape == (4, 48, 64, 3) and made.dtype == np.uint8
    assert frame_numbers(made) == [2, 4, 6, 8] == frame_numbers(opened_clip.reader.read_all())
    (previewed,) = control_frames(sources, config, opened_clip, sha, reporter, frames=[3, 1])
    assert frame_numbers(previewed) == [8, 4] and ffmpeg_children() == []  # its reading stopped after the last
    assert not (tmp_path / "cache").exists()  # a control clip is read, not cached


def test_a_folder_of_png_control_frames_gives_those_frames_at_the_working_size(clip, tmp_path):
    folder = tmp_path / "depth"
    folder.mkdir()
    pictures = [np.full((96, 128, 3), 10 * n, np.uint8) for n in range(12)]
    for n, picture in enumerate(pictures):
        Image.fromarray(picture).save(folder / f"{n:04d}.png")
    config, opened_clip, sha = opened(clip, tmp_path, control=[f"{folder}:0.7"], controlnet=["random"])
    sources = check_controls(config, opened_clip)
    assert sources[0].scale == 0.7 and sources[0].path == str(folder)
    (made,) = control_frames(sources, config, opened_clip, sha, Recorder())
    assert np.array_equal(made, np.stack([picture[:48, :64] for picture in pictures]))


def test_a_control_clip_of_another_frame_count_is_refused_naming_both_counts(clip, tmp_path, monkeypatch):
    short = make_clip(tmp_path / "short.mp4", frames=7)
    config, opened_clip, _ = opened(clip, tmp_path, control=[f"{short}:0.8"], controlnet=["random"])
    selected, selected_clip, _ = opened(clip, tmp_path, control=[str(short)], controlnet=["random"], frames="0:12:2")
    monkeypatch.setattr(FrameReader, "__iter__", lambda self: pytest.fail("a frame was read"))  # checked first
    with pytest.raises(InputError) as error:
        check_controls(config, opened_clip)
    assert str(error.value) == (
        f"control={str(short) + ':0.8'!r}: the control clip gives 7 frames and the source 12; a control clip needs "
        "one frame for each frame of the source"
    )
    with pytest.raises(InputError, match=r"gives 4 frames and the source 6 \(frames='0:12:2' picking from both\);"):
        check_controls(selected, selected_clip)


def test_an_unreadable_control_file_is_one_line(clip, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    config, opened_clip, _ = opened(clip, tmp_path, control=[str(text)], controlnet=["random"])
    with pytest.raises(InputError) as error:
        check_controls(config, opened_clip)
    assert str(error.value) == (
        f"control={str(text)!r}: {text}: not a readable video; give a video file (mp4, mov, mkv, avi, webm...) or a "
        "folder of frames"
    )


def test_a_control_clip_at_another_rate_or_shape_is_a_warning(clip, tmp_path):
    other = graded_clip(tmp_path / "other.mp4", size="64x64", rate=30)
    config, opened_clip, _ = opened(clip, tmp_path, control=[str(other)], controlnet=["random"])
    reporter = Recorder()
    check_controls(config, opened_clip, reporter=reporter)
    where = f"control={str(other)!r}"
    assert reporter.warnings == [
        f"{where}: the control clip runs at 30 fps and the source at 24; their frames go together by position, not "
        "by time",
        f"{where}: the control frames are 64x64 and the source's 64x48; they are stretched to the working size, 64x48",
    ]


def test_no_control_checks_nothing_but_a_controlnet_without_one_is_refused(clip, tmp_path):
    config, opened_clip, _ = opened(clip, tmp_path)
    assert check_controls(config, opened_clip) == []
    lone, lone_clip, _ = opened(clip, tmp_path, controlnet=["random"])
    with pytest.raises(ConfigError, match=r"^1 controlnet for 0 control: each ControlNet goes with the control in"):
        check_controls(lone, lone_clip)
