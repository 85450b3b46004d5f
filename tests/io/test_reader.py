"""Reading clips: exact frames, sizes and batches, truncated and damaged files, rotation, colour matrices and
non-square pixels."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_CLIPS
from helpers.clips import (
    QUADRANTS,
    disc_extent,
    ffmpeg_children,
    ffmpeg_run,
    quadrant_centres,
    quadrant_picture,
    sample_clips,
    stored_with_pixel_aspect,
)
from vedit.errors import InputError
from vedit.io.ffmpeg import find_ffmpeg
from vedit.io.frames import FrameRange
from vedit.io.probe import probe
from vedit.io.reader import FrameReader, untagged_matrix
from vedit.io.writer import VideoWriter


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return sample_clips(tmp_path_factory)


def grey_level(n: int) -> float:
    """RGB value of frame ``n`` of the ``graded`` clip."""
    return 16 + 7 * n


def cut_before_video_packet(source: Path, target: Path, packet: int) -> Path:
    """``source`` cut at the byte where its ``packet``-th video packet starts: a clean end."""
    with av.open(str(source)) as container:
        positions = [p.pos for p in container.demux(video=0) if p.size]
    target.write_bytes(source.read_bytes()[: positions[packet]])
    return target


@pytest.fixture(scope="module")
def truncated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """217 frames promised by the index at the front, the data cut off after the 27th."""
    root = tmp_path_factory.mktemp("truncated")
    whole = root / "whole.mp4"
    ffmpeg_run(
        "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=24", "-f", "lavfi", "-i", "sine",
        "-frames:v", "217", "-c:v", "libx264", "-c:a", "aac", "-shortest",
        "-movflags", "+faststart", str(whole),
    )  # fmt: skip
    return cut_before_video_packet(whole, root / "clip.mp4", 27)


@pytest.fixture(scope="module")
def complete_clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Whole clips whose frame counts the reader must not take for truncation."""
    root = tmp_path_factory.mktemp("complete")
    codecs = {
        ".mp4": ["-c:v", "libx264", "-c:a", "aac"],
        ".mov": ["-c:v", "libx264", "-c:a", "aac"],
        ".mkv": ["-c:v", "libx264", "-c:a", "aac"],
        ".webm": ["-c:v", "libvpx", "-deadline", "realtime", "-c:a", "libopus"],
        ".avi": ["-c:v", "mpeg4", "-c:a", "libmp3lame"],
        ".ts": ["-c:v", "libx264", "-c:a", "aac"],
    }
    made = []
    for n, (suffix, codec) in enumerate(codecs.items()):
        for rate, frames in ((Fraction(30000, 1001), 31), (Fraction(2997, 125), 7 + n)):
            for audio in (False, True):
                path = root / f"{rate.numerator}-{frames}-{audio}{suffix}"
                sound = ["-f", "lavfi", "-t", f"{float(frames / rate):.3f}", "-i", "sine"] if audio else []
                # Half of them with the picture starting late, as after an edit.
                delay = ["-itsoffset", "0.2"] if audio and n % 2 else []
                ffmpeg_run(
                    *delay, "-f", "lavfi", "-i", f"testsrc2=size=64x48:rate={rate}", *sound,
                    "-frames:v", str(frames), *(codec if audio else codec[:-2]), str(path),
                )  # fmt: skip
                made.append(path)
    # A Matroska file whose sound runs a second past its picture.
    picture, sound = root / "picture.mp4", root / "sound.m4a"
    ffmpeg_run("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=24:duration=1", str(picture))
    ffmpeg_run("-f", "lavfi", "-i", "sine=duration=2", str(sound))
    ffmpeg_run("-i", str(picture), "-i", str(sound), "-c", "copy", str(root / "long_sound.mkv"))
    return made + [root / "long_sound.mkv"]


def asymmetric_clip(path: Path) -> Path:
    """A picture with no symmetry, losslessly coded so every decode gives the same pixels."""
    ffmpeg_run(
        "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=24", "-frames:v", "3",
        "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", str(path),
    )  # fmt: skip
    return path


@pytest.mark.parametrize(
    ("frames", "expected"),
    [("3:20:4", [3, 7, 11, 15, 19]), ("::10", [0, 10, 20]), ("25:", [25, 26, 27, 28, 29])],
)
def test_reader_selects_exact_frames(clips: dict[str, Path], frames: str, expected: list[int]) -> None:
    reader = FrameReader(clips["graded"], frames=FrameRange.parse(frames), size=(64, 48))
    assert list(reader.indices) == expected and len(reader) == len(expected)
    got = reader.read_all()
    assert got.shape == (len(expected), 48, 64, 3)
    np.testing.assert_allclose(got.mean(axis=(1, 2, 3)), [grey_level(n) for n in expected], atol=2.5)


def test_reader_default_size_and_batches(clips: dict[str, Path]) -> None:
    reader = FrameReader(clips["ntsc_audio"], frames=FrameRange.parse(":10"))
    assert reader.size == (680, 512)
    assert [batch.shape for batch in reader.batches(4)] == [(4, 512, 680, 3)] * 2 + [(2, 512, 680, 3)]
    small = FrameReader(clips["ntsc_audio"], frames=FrameRange(max_frames=3), size=(160, 120))
    frames = small.read_all()
    assert frames.shape == (3, 120, 160, 3) and frames.dtype == np.uint8


def test_reader_kills_ffmpeg_once_it_has_what_it_needs(clips: dict[str, Path]) -> None:
    reader = FrameReader(clips["ntsc_audio"], size=(320, 240))
    for count, _ in enumerate(reader, start=1):
        if count == 2:
            break
    assert ffmpeg_children() == []
    assert len(FrameReader(clips["ntsc_audio"], frames=FrameRange(stop=3)).read_all()) == 3
    assert ffmpeg_children() == []


def test_reader_refuses_a_range_past_the_end(clips: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="no frames selected"):
        FrameReader(clips["graded"], frames=FrameRange.parse("30:"))
    # A container may promise more frames than it holds; then we only learn it while reading.
    optimistic = dataclasses.replace(probe(clips["graded"]), num_frames=100)
    reader = FrameReader(clips["graded"], frames=FrameRange.parse("50:"), info=optimistic)
    with pytest.raises(InputError, match="no frames selected"):
        reader.read_all()


def test_reader_reports_a_file_damaged_mid_stream(tmp_path: Path, clips: dict[str, Path]) -> None:
    # With the index at the front, half a file opens fine and then runs out of data.
    faststart = tmp_path / "faststart.mp4"
    ffmpeg_run("-i", str(clips["ntsc_audio"]), "-c", "copy", "-movflags", "+faststart", str(faststart))
    whole = faststart.read_bytes()
    half = tmp_path / "half.mp4"
    half.write_bytes(whole[: len(whole) // 2])
    reader = FrameReader(half, size=(320, 240))
    with pytest.raises(InputError, match="decoding failed after [0-9]+ frames") as caught:
        reader.read_all()
    assert "\n" not in str(caught.value)
    assert ffmpeg_children() == []


def test_a_truncated_file_is_refused_with_what_was_read(truncated: Path) -> None:
    reader = FrameReader(truncated, size=(160, 120))
    assert len(reader) == 217  # the index still promises every frame
    with pytest.raises(InputError) as caught:
        reader.read_all()
    message = str(caught.value)
    match = re.fullmatch(
        r".*clip\.mp4: read (\d+) of 217 frames; the file is truncated or damaged "
        r"\(pass allow_short=True to edit the (\d+) frames that could be read\)",
        message,
    )
    assert match is not None, message
    read = int(match.group(1))
    assert 20 <= read <= 30 and int(match.group(2)) == read
    assert reader.frames_read == read
    assert ffmpeg_children() == []

    # The stride is counted in selected frames.
    every_other = FrameReader(truncated, frames=FrameRange.parse("::2"), size=(160, 120))
    with pytest.raises(InputError, match=f"read {(read + 1) // 2} of 109 frames"):
        every_other.read_all()
    # Reading every frame at its own time, the container's frame count is still the promise.
    with pytest.raises(InputError, match=r"read 2\d of 217 frames"):
        FrameReader(truncated, size=(160, 120), keep_timestamps=True).read_all()


def test_allow_short_reads_what_there_is_and_says_so(truncated: Path) -> None:
    reader = FrameReader(truncated, size=(160, 120), allow_short=True)
    assert reader.frames_read == 0 and reader.short_read is None
    first = reader.read_all()
    read = len(first)
    assert 20 <= read <= 30
    assert reader.frames_read == read and reader.short_read == (read, 217)
    assert len(reader.timestamps) == read  # one per frame read, to cut the sound by
    # A second pass (as the pipeline makes to reconstruct) runs a fresh ffmpeg, same result.
    second = reader.read_all()
    np.testing.assert_array_equal(second, first)
    assert reader.short_read == (read, 217)
    # A loop that stops early is not a short clip.
    for count, _ in enumerate(reader, start=1):
        if count == 5:
            break
    assert reader.frames_read == 5 and reader.short_read is None
    assert ffmpeg_children() == []


def test_complete_clips_are_not_taken_for_truncated(complete_clips: list[Path]) -> None:
    for path in complete_clips:
        reader = FrameReader(path, size=(64, 48))
        frames = reader.read_all()
        assert reader.short_read is None and reader.frames_read == len(frames), path
        assert len(reader) - len(frames) <= 1, path  # the promise is at most a frame over


@pytest.mark.skipif(not (SHARED_CLIPS / "vtest.avi").exists(), reason="shared sample clips not present")
def test_vtest_avi_reads_to_its_last_frame() -> None:
    reader = FrameReader(SHARED_CLIPS / "vtest.avi", frames=FrameRange.parse("700:"), size=(96, 72))
    assert len(reader.read_all()) == 95 and reader.short_read is None


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotated_clips_are_read_and_written_upright(tmp_path: Path, degrees: int) -> None:
    stored = asymmetric_clip(tmp_path / "stored.mp4")
    phone = tmp_path / "phone.mp4"
    ffmpeg_run("-display_rotation", str(degrees), "-i", str(stored), "-c", "copy", str(phone))
    info = probe(phone)
    assert info.rotation == degrees
    turned = degrees in (90, 270)
    assert (info.width, info.height) == ((64, 96) if turned else (96, 64))
    plain = FrameReader(stored, size=(96, 64)).read_all()
    upright = FrameReader(phone, size=(info.width, info.height)).read_all()
    # -display_rotation turns counter-clockwise, as np.rot90 does.
    expected = np.rot90(plain, k=degrees // 90, axes=(1, 2))
    assert upright.shape == expected.shape
    assert np.abs(upright.astype(int) - expected).mean() < 1
    out = tmp_path / "out.mp4"
    with VideoWriter(out, fps=Fraction(24)) as writer:
        writer.write(upright)
    written = probe(out)
    assert written.rotation == 0 and (written.width, written.height) == (info.width, info.height)
    back = FrameReader(out, size=(info.width, info.height)).read_all()
    assert np.abs(back.astype(int) - expected).mean() < 8  # 4:2:0 and crf 18 on sharp edges
    if degrees == 180:
        assert np.abs(back.astype(int) - plain).mean() > 40  # far from the picture as stored


@pytest.mark.parametrize(("size", "matrix"), [((640, 480), "bt601"), ((1280, 720), "bt709"), ((720, 1280), "bt709")])
def test_an_untagged_matrix_is_read_as_players_guess_it(tmp_path: Path, size: tuple[int, int], matrix: str) -> None:
    width, height = size
    assert untagged_matrix(width, height) == matrix
    path = tmp_path / "untagged.mkv"
    picture = np.asarray(Image.fromarray(quadrant_picture()).resize(size, Image.Resampling.NEAREST))
    # to YUV with the matrix, then coded from raw YUV, which carries no tags
    yuv = subprocess.run(
        [
            find_ffmpeg(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
            "-i", "pipe:", "-vf", f"scale=out_color_matrix={matrix},format=yuv420p", "-f", "rawvideo", "pipe:",
        ],
        input=np.stack([picture] * 2).tobytes(), check=True, capture_output=True,
    ).stdout  # fmt: skip
    subprocess.run(
        [
            find_ffmpeg(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{width}x{height}",
            "-r", "24", "-i", "pipe:", "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", str(path),
        ],
        input=yuv, check=True,
    )  # fmt: skip
    assert probe(path).color.matrix is None  # nothing says which matrix: the size must decide
    frames = FrameReader(path, size=(64, 48)).read_all()
    # the other matrix would put these quadrants 7 to 18 levels off
    np.testing.assert_allclose(quadrant_centres(frames), np.array(QUADRANTS, float), atol=2.01)


@pytest.mark.parametrize(
    ("shown", "stored_width", "aspect", "displayed", "working"),
    [
        ((854, 480), 720, "32/27", (853, 480), (912, 512)),  # NTSC DVD 16:9
        ((281, 211), 333, "49/58", (281, 211), (680, 512)),  # odd sides, pixels narrower than tall
    ],
)
def test_non_square_pixels_are_read_at_their_displayed_size(
    tmp_path: Path, shown: tuple[int, int], stored_width: int, aspect: str,
    displayed: tuple[int, int], working: tuple[int, int],
) -> None:  # fmt: skip
    clip = stored_with_pixel_aspect(tmp_path / "anamorphic.mp4", shown, stored_width, aspect)
    info = probe(clip)
    assert info.stored_size == (stored_width, shown[1]) and info.pixel_aspect == Fraction(aspect)
    assert (info.width, info.height) == displayed
    assert info.exact_size == (stored_width * Fraction(aspect), shown[1])
    reader = FrameReader(clip, info=info)
    assert reader.size == working  # from the displayed size: the stored one gave 768x512 and 808x512
    width, height = disc_extent(reader.read_all()[0])
    assert width == pytest.approx(height, rel=0.03)  # round, not squeezed to the stored shape


def test_a_rotated_clip_of_non_square_pixels_is_turned_after_the_pixels_are_squared(tmp_path: Path) -> None:
    stored = stored_with_pixel_aspect(tmp_path / "stored.mp4", (128, 72), 96, "4/3")
    phone = tmp_path / "phone.mp4"
    ffmpeg_run("-display_rotation", "90", "-i", str(stored), "-c", "copy", str(phone))
    info = probe(phone)
    assert (info.rotation, info.stored_size, info.pixel_aspect) == (90, (96, 72), Fraction(4, 3))
    assert (info.width, info.height) == (72, 128)
    reader = FrameReader(phone, info=info)
    assert reader.size == (512, 912)
    width, height = disc_extent(reader.read_all()[0])
    assert width == pytest.approx(height, rel=0.03)


@pytest.mark.skipif(not (SHARED_CLIPS / "tree.avi").exists(), reason="shared sample clips not present")
@pytest.mark.slow
def test_tree_avi_holds_fewer_frames_than_its_header_claims() -> None:
    info = probe(SHARED_CLIPS / "tree.avi")
    assert (info.width, info.height, info.codec) == (320, 240, "cinepak")
    assert info.fps == Fraction(1_000_000, 66_667)  # the header's exact rate, about 15 fps
    assert info.num_frames == 444 and not info.has_audio
    reader = FrameReader(SHARED_CLIPS / "tree.avi", size=(320, 240))
    frames = reader.read_all()
    # The AVI index lists 444 slots but only 68 hold a new picture; the others repeat the one
    # before. Reading at the stream's constant rate keeps every slot, so timing is preserved.
    assert frames.shape == (444, 240, 320, 3) and len(reader) == 444
    assert reader.frames_read == 444 and reader.short_read is None
    pictures = 1 + sum(not np.array_equal(frames[i], frames[i - 1]) for i in range(1, len(frames)))
    assert pictures == 68
    assert frames.std() > 20  # real pictures, not blank frames


def test_a_folder_of_16_bit_greyscale_frames_reads_as_their_top_8_bits(tmp_path: Path) -> None:
    # a depth map's 16-bit ramp: Pillow's own conversion would clip everything above 255 to white
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (16, 1))
    for i in range(2):
        Image.fromarray(ramp).save(tmp_path / f"{i:03d}.png")
    assert Image.open(tmp_path / "000.png").mode.startswith("I")
    reader = FrameReader(tmp_path, info=probe(tmp_path))
    frames = np.concatenate(list(reader.batches(2)))
    assert frames.shape == (2, 16, 32, 3)
    expected = (ramp >> 8).astype(np.uint8)
    for channel in range(3):
        assert np.array_equal(frames[0, :, :, channel], expected)
