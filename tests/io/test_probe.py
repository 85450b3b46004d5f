"""Probing clips: exact frame rates and counts, containers, frame folders, colour tags, pixel aspect, and one
clear error for what is not a video."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.clips import (
    NTSC,
    QUADRANTS,
    bt601_full_range,  # noqa: F401  (a fixture, used by name)
    ffmpeg_run,
    quadrant_centres,
    sample_clips,
    stored_with_pixel_aspect,
)
from vedit.errors import InputError
from vedit.io.probe import ColorTags, probe
from vedit.io.reader import FrameReader
from vedit.io.writer import VideoWriter


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return sample_clips(tmp_path_factory)


def test_probe_mp4_keeps_the_exact_ntsc_rate(clips: dict[str, Path]) -> None:
    info = probe(clips["ntsc_audio"])
    assert info.fps == NTSC  # not 23.976
    assert (info.width, info.height) == (320, 240)
    assert info.num_frames == 48
    assert info.has_audio
    assert info.codec == "h264"
    assert info.duration == pytest.approx(48 / NTSC, abs=0.01)
    assert not info.is_image_sequence


@pytest.mark.parametrize(("name", "codec"), [("vp9", "vp9"), ("mjpeg", "mjpeg")])
def test_probe_other_containers(clips: dict[str, Path], name: str, codec: str) -> None:
    info = probe(clips[name])
    assert (info.width, info.height, info.fps) == (250, 170, Fraction(30))
    assert info.num_frames == 30  # from the duration for webm, from the header for avi
    assert info.codec == codec
    assert not info.has_audio


def test_probe_folder_orders_frames_by_their_last_number(tmp_path: Path) -> None:
    for n in (10, 2, 1):
        Image.new("RGB", (64, 48), (n, n, n)).save(tmp_path / f"take3_frame_{n}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    info = probe(tmp_path)
    assert info.is_image_sequence and info.codec == "png"
    assert (info.width, info.height, info.num_frames, info.fps) == (64, 48, 3, Fraction(24))
    frames = FrameReader(tmp_path).read_all()
    assert frames.shape == (3, 48, 64, 3)  # aligned to 8 already, so not resized
    assert [int(frame[0, 0, 0]) for frame in frames] == [1, 2, 10]


def test_probe_refuses_empty_and_mixed_folders(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no images found"):
        probe(tmp_path)
    Image.new("RGB", (64, 48)).save(tmp_path / "0.png")
    Image.new("RGB", (64, 40)).save(tmp_path / "1.png")
    with pytest.raises(InputError, match="1.png: is 64x40.*same size"):
        probe(tmp_path)


def test_probe_refuses_what_is_not_a_video(tmp_path: Path, clips: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="missing.mp4: no such file or folder"):
        probe(tmp_path / "missing.mp4")
    text = tmp_path / "readme.txt"
    text.write_text("just some words\n" * 50)
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, np.uint8).tobytes())
    # Without -movflags +faststart the index sits at the end, so half a file has no index.
    whole = clips["ntsc_audio"].read_bytes()
    headless = tmp_path / "headless.mp4"
    headless.write_bytes(whole[: len(whole) // 2])
    for path in (text, noise, headless):
        with pytest.raises(InputError, match="not a readable video") as caught:
            probe(path)
        assert "\n" not in str(caught.value)


def test_colour_tags_are_probed_and_kept(tmp_path: Path, bt601_full_range: Path) -> None:
    info = probe(bt601_full_range)
    assert info.color == ColorTags(primaries="bt470bg", transfer="smpte170m", matrix="bt470bg", range="pc")
    first = FrameReader(bt601_full_range, size=(64, 48)).read_all()
    # Read with the source's own matrix (BT.709's would put these 7 to 18 levels off); YUV
    # rounding and swscale's full-range arithmetic cost up to 2.
    np.testing.assert_allclose(quadrant_centres(first), np.array(QUADRANTS, float), atol=2.01)
    out = tmp_path / "kept.mp4"
    # Lossless coding, so that what is left is the colour conversion there and back.
    with VideoWriter(out, fps=Fraction(24), color=info.color, crf=0) as writer:
        writer.write(first)
    assert probe(out).color == info.color
    again = FrameReader(out, size=(64, 48)).read_all()
    np.testing.assert_allclose(quadrant_centres(again), quadrant_centres(first), atol=2.01)


def test_a_pixel_aspect_stated_by_the_container_alone_counts(tmp_path: Path) -> None:
    square = stored_with_pixel_aspect(tmp_path / "square.mp4", (96, 72), 96, "1")
    tagged = tmp_path / "tagged.mkv"
    ffmpeg_run("-i", str(square), "-c", "copy", "-aspect", "16:9", str(tagged))  # the bitstream still says 1:1
    info = probe(tagged)
    assert info.pixel_aspect == Fraction(4, 3) and (info.width, info.height) == (128, 72)
