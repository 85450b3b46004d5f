"""Reading and writing clips: exact frame rates and counts, frame-exact ranges, sizes, audio,
atomic output, and one clear error for every kind of bad input or output."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vedit.errors import ConfigError, InputError, OutputError
from vedit.io.ffmpeg import find_ffmpeg
from vedit.io.files import check_output_path, written_by_vedit
from vedit.io.frames import FrameRange, parse_size, working_size
from vedit.io.probe import ColorTags, probe
from vedit.io.reader import FrameReader, untagged_matrix
from vedit.io.writer import VideoWriter, lost_in_writing, written_size

SHARED_CLIPS = Path(__file__).parents[2] / "shared" / "clips"
NTSC = Fraction(24000, 1001)


def ffmpeg_run(*args: str) -> None:
    subprocess.run([find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def grey_level(n: int) -> float:
    """RGB value of frame ``n`` of the ``graded`` clip."""
    return 16 + 7 * n


def ffmpeg_children() -> list[str]:
    """Our ffmpeg child processes, running or zombie ("pid state"), read from /proc."""
    me = str(os.getpid())
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
        except (OSError, ValueError):
            continue
        state, parent = tail.split()[:2]
        if parent == me and "ffmpeg" in head:
            children.append(f"{stat.parent.name} {state}")
    return children


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small synthetic clips, made once for the whole module."""
    root = tmp_path_factory.mktemp("clips")
    made = {
        "ntsc_audio": root / "ntsc_audio.mp4",
        "graded": root / "graded.mp4",
        "vp9": root / "odd.webm",
        "mjpeg": root / "odd.avi",
        "short_audio": root / "short_audio.mkv",
    }
    # 48 frames of 320x240 at 23.976 fps with a 2 s 440 Hz tone.
    ffmpeg_run(
        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=24000/1001",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=2",
        "-frames:v", "48", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
        str(made["ntsc_audio"]),
    )  # fmt: skip
    # 30 flat grey frames whose level encodes the frame number: frame n is grey 16 + 7n.
    ffmpeg_run(
        "-f", "lavfi", "-i", "color=size=64x48:rate=30:duration=1,format=gray,geq=lum='16+7*N'",
        "-c:v", "libx264", "-crf", "4", "-pix_fmt", "yuv420p", str(made["graded"]),
    )  # fmt: skip
    # 250x170 is 8 x odd numbers; webm records no frame count, only a duration.
    ffmpeg_run(
        "-f", "lavfi", "-i", "testsrc2=size=250x170:rate=30", "-frames:v", "30",
        "-c:v", "libvpx-vp9", "-b:v", "300k", str(made["vp9"]),
    )  # fmt: skip
    ffmpeg_run(
        "-f", "lavfi", "-i", "testsrc2=size=250x170:rate=30", "-frames:v", "30",
        "-c:v", "mjpeg", str(made["mjpeg"]),
    )  # fmt: skip
    # 3 s of video over only 1 s of sound.
    ffmpeg_run(
        "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=30:duration=3",
        "-f", "lavfi", "-i", "sine=frequency=440:duration=1",
        "-c:v", "libx264", "-c:a", "aac", str(made["short_audio"]),
    )  # fmt: skip
    return made


def coloured_frames(count: int, width: int = 64, height: int = 48) -> np.ndarray:
    """Flat frames, each a different colour, so order survives lossy encoding."""
    frames = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        frames[i] = (20 + 5 * i, 230 - 4 * i, (60 + 37 * i) % 256)
    return frames


def no_leftovers(folder: Path) -> bool:
    return not any(entry.name.startswith(".") for entry in folder.iterdir())


# --------------------------------------------------------------------------- ffmpeg


def test_find_ffmpeg_honours_vedit_ffmpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    real = find_ffmpeg()
    monkeypatch.setenv("VEDIT_FFMPEG", real)
    assert find_ffmpeg() == real
    monkeypatch.setenv("VEDIT_FFMPEG", "/nowhere/ffmpeg")
    with pytest.raises(ConfigError, match="VEDIT_FFMPEG"):
        find_ffmpeg()


# --------------------------------------------------------------------------- probe


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


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, FrameRange()),
        ("", FrameRange()),
        ("10:", FrameRange(start=10)),
        (":50", FrameRange(stop=50)),
        ("::2", FrameRange(step=2)),
        ("5:40:3", FrameRange(5, 40, 3)),
    ],
)
def test_frame_range_parse(text: str | None, expected: FrameRange) -> None:
    assert FrameRange.parse(text) == expected


@pytest.mark.parametrize("text", ["::0", "::-2", "-5:", "a:b", "1:2:3:4", "7", "9:3"])
def test_frame_range_parse_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="^frames: "):
        FrameRange.parse(text)


def test_frame_range_indices_clip_to_the_clip_and_max_frames() -> None:
    assert FrameRange.parse("5:40:3").indices(100) == range(5, 40, 3)
    assert FrameRange.parse("5:40:3").indices(20) == range(5, 20, 3)
    assert list(FrameRange.parse("::2", max_frames=3).indices(100)) == [0, 2, 4]
    assert len(FrameRange.parse("50:").indices(10)) == 0
    with pytest.raises(ConfigError, match="^max_frames: "):
        FrameRange.parse(None, max_frames=0)


def test_working_size_scales_the_short_side_to_512_in_multiples_of_8() -> None:
    assert working_size(320, 240) == (680, 512)  # 682.7 rounds to 680
    assert working_size(250, 170) == (752, 512)
    assert working_size(1920, 1080) == (912, 512)
    assert working_size(1080, 1920) == (512, 912)
    w, h = working_size(768, 576)
    assert w % 8 == 0 and h % 8 == 0 and abs(w / h - 768 / 576) < 0.01
    assert working_size(64, 48, keep_if_aligned=True) == (64, 48)
    assert working_size(250, 170, keep_if_aligned=True) == (752, 512)  # 250 is not aligned
    assert working_size(320, 240, (256, 192)) == (256, 192)
    with pytest.raises(ConfigError, match="^size: "):
        working_size(320, 240, (250, 192))


def test_parse_size() -> None:
    assert parse_size("512x320") == (512, 320)
    assert parse_size(" 640X480 ") == (640, 480)
    for bad in ("512", "512x", "x512", "axb", "0x512", "-8x8"):
        with pytest.raises(ConfigError, match="^size: "):
            parse_size(bad)


# --------------------------------------------------------------------------- reading


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


def asymmetric_clip(path: Path) -> Path:
    """A picture with no symmetry, losslessly coded so every decode gives the same pixels."""
    ffmpeg_run(
        "-f", "lavfi", "-i", "testsrc2=size=96x64:rate=24", "-frames:v", "3",
        "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", str(path),
    )  # fmt: skip
    return path


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


# Saturated colours, where a wrong matrix or range shows most.
QUADRANTS = [(200, 60, 30), (40, 180, 90), (30, 70, 220), (235, 230, 40)]


def quadrant_picture(width: int = 64, height: int = 48) -> np.ndarray:
    picture = np.empty((height, width, 3), np.uint8)
    for index, colour in enumerate(QUADRANTS):
        rows = slice(0, height // 2) if index < 2 else slice(height // 2, height)
        cols = slice(0, width // 2) if index % 2 == 0 else slice(width // 2, width)
        picture[rows, cols] = colour
    return picture


def quadrant_centres(frames: np.ndarray) -> np.ndarray:
    """Each quadrant's colour, away from the edges that chroma subsampling blurs."""
    height, width = frames.shape[1:3]
    centres = [(height // 4, width // 4), (height // 4, 3 * width // 4)]
    centres += [(3 * height // 4, width // 4), (3 * height // 4, 3 * width // 4)]
    return np.stack([frames[:, y - 4 : y + 4, x - 4 : x + 4].reshape(-1, 3).mean(axis=0) for y, x in centres])


@pytest.fixture(scope="module")
def bt601_full_range(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Quadrants converted to YUV with BT.601 at full range, and tagged so."""
    path = tmp_path_factory.mktemp("colour") / "bt601.mp4"
    frames = np.stack([quadrant_picture()] * 6)
    subprocess.run(
        [
            find_ffmpeg(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "64x48",
            "-r", "24", "-i", "pipe:", "-vf",
            "scale=out_color_matrix=bt601:out_range=pc,format=yuv420p,"
            "setparams=colorspace=bt470bg:color_primaries=bt470bg:color_trc=smpte170m:range=pc",
            "-c:v", "libx264", "-qp", "0", str(path),
        ],
        input=frames.tobytes(), check=True,
    )  # fmt: skip
    return path


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


def test_untagged_sources_are_written_as_bt709(tmp_path: Path) -> None:
    out = tmp_path / "plain.mkv"
    with VideoWriter(out, fps=Fraction(24), color=ColorTags()) as writer:
        writer.write(np.stack([quadrant_picture()] * 3))
    assert probe(out).color == ColorTags(primaries="bt709", transfer="bt709", matrix="bt709", range="tv")
    back = FrameReader(out, size=(64, 48)).read_all()
    np.testing.assert_allclose(quadrant_centres(back), np.array(QUADRANTS, float), atol=2.01)


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


def test_written_size_is_what_ends_up_in_the_file(tmp_path: Path) -> None:
    assert written_size(tmp_path / "out.mp4", (321, 241)) == (320, 240)
    assert written_size(tmp_path / "out.mkv", (320, 240)) == (320, 240)
    assert written_size(tmp_path / "frames", (321, 241)) == (321, 241)
    assert written_size(tmp_path / "out.webm", (321, 241)) == (320, 240)  # 4:2:0 as well
    assert written_size(tmp_path / "out.gif", (321, 241)) == (321, 241)  # any size
    # Exact displayed sizes (720 pixels of aspect 32:27 show 853 1/3 wide) go to the nearest
    # size the output holds: 854, the even number nearest, not 852 below the rounded 853.
    shown = (Fraction(2560, 3), 480)
    assert written_size(tmp_path / "out.mp4", shown) == written_size(tmp_path / "out.webm", shown) == (854, 480)
    assert written_size(tmp_path / "out.gif", shown) == written_size(tmp_path / "frames", shown) == (853, 480)
    assert written_size(tmp_path / "out.mp4", (Fraction(16317, 58), 211)) == (282, 210)  # 281.33 x 211
    for suffix in (".mov", ".webm", ".gif"):
        out = tmp_path / f"odd{suffix}"
        with VideoWriter(out, fps=Fraction(24)) as writer:
            writer.write(coloured_frames(2, width=321, height=241))
        assert (probe(out).width, probe(out).height) == written_size(out, (321, 241))


# --------------------------------------------------------------------------- writing


def test_roundtrip_keeps_rate_count_and_content(tmp_path: Path, clips: dict[str, Path]) -> None:
    source = FrameReader(clips["ntsc_audio"], size=(320, 240)).read_all()
    out = tmp_path / "copy.mp4"
    with VideoWriter(out, fps=NTSC) as writer:
        writer.write(source[:20])
        for frame in source[20:]:
            writer.write(frame)
    assert writer.frames_written == 48
    info = probe(out)
    assert (info.fps, info.num_frames, info.width, info.height) == (NTSC, 48, 320, 240)
    assert info.codec == "h264" and not info.has_audio
    back = FrameReader(out, size=(320, 240)).read_all()
    assert np.abs(back.astype(int) - source).mean() < 4
    assert no_leftovers(tmp_path)


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv"])
def test_written_frames_keep_their_order(tmp_path: Path, suffix: str) -> None:
    frames = coloured_frames(25)
    out = tmp_path / f"order{suffix}"
    with VideoWriter(out, fps=Fraction(30)) as writer:
        writer.write(frames)
    back = FrameReader(out, size=(64, 48)).read_all()
    assert len(back) == 25
    np.testing.assert_allclose(back.mean(axis=(1, 2)), frames.mean(axis=(1, 2)), atol=4)


def test_output_dimensions_are_even(tmp_path: Path) -> None:
    odd = tmp_path / "odd.mp4"
    with VideoWriter(odd, fps=Fraction(30)) as writer:
        writer.write(coloured_frames(3, width=251, height=171))
    assert (probe(odd).width, probe(odd).height) == (250, 170)
    resized = tmp_path / "resized.mp4"
    with VideoWriter(resized, fps=Fraction(30), size=(301, 201)) as writer:
        writer.write(coloured_frames(3))
    assert (probe(resized).width, probe(resized).height) == (300, 200)


def audible_seconds(path: Path) -> float:
    """Seconds of the first audio track louder than near-silence."""
    loud = 0
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            samples = frame.to_ndarray()
            if np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 0.02:
                loud += frame.samples
            rate = frame.sample_rate
    return loud / rate


def stream_seconds(path: Path, kind: str) -> float:
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[0]
        if kind == "audio":
            assert stream.codec_context.name == "aac"
        return float(stream.duration * stream.time_base)


def test_audio_is_trimmed_and_ends_with_the_video(tmp_path: Path, clips: dict[str, Path]) -> None:
    source = probe(clips["ntsc_audio"])
    frames = coloured_frames(48)  # 2.002 s at 23.976 fps
    trimmed = tmp_path / "trimmed.mp4"
    with VideoWriter(trimmed, fps=NTSC, audio_from=source, audio_range=(0.5, 1.0)) as writer:
        writer.write(frames)
    assert probe(trimmed).has_audio
    assert probe(trimmed).num_frames == 48  # a short audio track never cuts the video
    assert audible_seconds(trimmed) == pytest.approx(0.5, abs=0.05)
    # Padded with silence up to the last frame and not past it (give or take one AAC frame).
    assert stream_seconds(trimmed, "audio") == pytest.approx(stream_seconds(trimmed, "video"), abs=0.025)

    # The whole 2 s track behind a 1 s video stops with the video.
    short = tmp_path / "short.mp4"
    with VideoWriter(short, fps=NTSC, audio_from=source) as writer:
        writer.write(frames[:24])
    assert stream_seconds(short, "video") == pytest.approx(1.001, abs=0.01)
    assert stream_seconds(short, "audio") == pytest.approx(1.001, abs=0.025)


def test_an_audio_range_past_the_sound_gives_silence(tmp_path: Path, clips: dict[str, Path]) -> None:
    out = tmp_path / "quiet.mp4"
    source = probe(clips["short_audio"])  # 3 s of video over 1 s of sound
    with VideoWriter(out, fps=Fraction(30), audio_from=source, audio_range=(1.5, 2.5)) as writer:
        writer.write(coloured_frames(30))
    assert probe(out).has_audio and probe(out).num_frames == 30
    assert audible_seconds(out) == 0
    assert stream_seconds(out, "audio") == pytest.approx(1.0, abs=0.025)


def test_no_audio_track_means_no_audio_stream(tmp_path: Path, clips: dict[str, Path]) -> None:
    out = tmp_path / "silent.mp4"
    with VideoWriter(out, fps=Fraction(30), audio_from=probe(clips["vp9"]), audio_range=(0, 1)) as writer:
        writer.write(coloured_frames(5))
    assert not probe(out).has_audio


def test_png_folder_roundtrip_is_exact(tmp_path: Path) -> None:
    frames = np.random.default_rng(1).integers(0, 256, (12, 48, 64, 3), np.uint8)
    out = tmp_path / "frames"
    with VideoWriter(out, fps=Fraction(24)) as writer:
        writer.write(frames)
    assert sorted(p.name for p in out.iterdir())[:3] == ["00000.png", "00001.png", "00002.png"]
    np.testing.assert_array_equal(FrameReader(out).read_all(), frames)
    # Rewriting replaces the old frames rather than mixing two runs.
    with VideoWriter(f"{out}/", fps=Fraction(24)) as writer:
        writer.write(frames[:3])
    assert len(list(out.iterdir())) == 3
    assert no_leftovers(tmp_path)


def test_folder_with_other_files_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "holiday").mkdir()
    (tmp_path / "holiday" / "beach.jpg").write_bytes(b"precious")
    with pytest.raises(OutputError, match="already holds other files"):
        VideoWriter(tmp_path / "holiday", fps=Fraction(24))


@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("with_audio", [False, True])
def test_a_failed_run_leaves_nothing_behind(
    tmp_path: Path, clips: dict[str, Path], interruption: type[BaseException], with_audio: bool
) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    audio_from = probe(clips["ntsc_audio"]) if with_audio else None
    with pytest.raises(interruption):
        with VideoWriter(folder / "out.mp4", fps=Fraction(30), audio_from=audio_from) as writer:
            writer.write(coloured_frames(10))
            raise interruption()
    assert list(folder.iterdir()) == []
    assert ffmpeg_children() == []


def test_a_failed_run_keeps_the_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the previous result")
    with pytest.raises(RuntimeError):
        with VideoWriter(out, fps=Fraction(30), overwrite=True) as writer:
            writer.write(coloured_frames(5))
            raise RuntimeError("model crashed")
    assert out.read_bytes() == b"the previous result"
    assert no_leftovers(tmp_path)
    with VideoWriter(out, fps=Fraction(30), overwrite=True) as writer:
        writer.write(coloured_frames(5))
    assert probe(out).num_frames == 5


@pytest.mark.parametrize("name", ["out.mp4", "out.mov", "out.mkv", "out.webm", "out.gif", "frames"])
def test_what_vedit_did_not_write_is_replaced_only_when_asked(tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    if name == "frames":  # numbered frames someone else saved
        out.mkdir()
        for i in range(3):
            Image.fromarray(coloured_frames(1)[0]).save(out / f"{i:05d}.png")
    else:  # a video someone else made, with a comment of its own
        ffmpeg_run("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10", "-frames:v", "3", "-metadata", "comment=holiday",
                   str(out))  # fmt: skip
    before = {p.name: p.read_bytes() for p in ([out] if out.is_file() else sorted(out.iterdir()))}
    assert not written_by_vedit(out)
    with pytest.raises(OutputError) as refused:
        VideoWriter(out, fps=Fraction(30))
    assert str(refused.value) == f"{out} exists and was not written by vedit; pass --overwrite to replace it"
    assert {p.name: p.read_bytes() for p in ([out] if out.is_file() else sorted(out.iterdir()))} == before
    with VideoWriter(out, fps=Fraction(30), overwrite=True) as writer:
        writer.write(coloured_frames(5))
    assert written_by_vedit(out) and probe(out).num_frames == 5
    with VideoWriter(out, fps=Fraction(30)) as writer:  # what vedit wrote, it replaces without being asked
        writer.write(coloured_frames(4))
    assert written_by_vedit(out) and probe(out).num_frames == 4 and no_leftovers(tmp_path)


def test_an_empty_folder_and_a_missing_output_need_no_overwrite(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert check_output_path(tmp_path / "empty", None) == tmp_path / "empty"
    assert check_output_path(tmp_path / "new.mp4", None) == tmp_path / "new.mp4"
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all")
    assert not written_by_vedit(text)
    with pytest.raises(OutputError, match="notes.mp4 exists and was not written by vedit"):
        check_output_path(text, None)


@pytest.mark.parametrize("name", ["out.mp4", "frames"])
def test_zero_frames_is_an_error_and_leaves_nothing(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    with pytest.raises(OutputError, match="no frames were written"):
        with VideoWriter(folder / name, fps=Fraction(30)):
            pass
    assert list(folder.iterdir()) == []


def test_bad_outputs_are_refused_before_any_work(tmp_path: Path, clips: dict[str, Path]) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    cases = [
        (tmp_path / "missing" / "out.mp4", "does not exist"),
        (a_file / "out.mp4", "is a file, not a folder"),
        (tmp_path / "out.txt", "cannot write .txt files"),
        (a_file, "is a file; give a new folder name"),
    ]
    for path, message in cases:
        with pytest.raises(OutputError, match=message):
            VideoWriter(path, fps=Fraction(30))
    with pytest.raises(OutputError, match="this is the input"):
        check_output_path(clips["ntsc_audio"], clips["ntsc_audio"])
    assert check_output_path(tmp_path / "new.mkv", clips["ntsc_audio"]) == tmp_path / "new.mkv"


def test_unwritable_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root writes anywhere, so let the permission check see what a user would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    try:
        with pytest.raises(OutputError, match="locked: folder is not writable"):
            VideoWriter(locked / "out.mp4", fps=Fraction(30))
    finally:
        locked.chmod(0o700)


def test_webm_is_vp9_and_opus_with_the_audio_cut_to_the_video(tmp_path: Path, clips: dict[str, Path]) -> None:
    source = probe(clips["ntsc_audio"])
    frames = coloured_frames(48)  # 2.002 s at 23.976 fps
    out = tmp_path / "shared.webm"
    with VideoWriter(out, fps=NTSC, audio_from=source, audio_range=(0.5, 1.0)) as writer:
        writer.write(frames)
    with av.open(str(out)) as container:
        assert container.format.name.split(",")[0] in ("matroska", "webm")
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, audio.codec_context.name) == ("vp9", "opus")
        assert video.codec_context.pix_fmt == "yuv420p"
        assert len(container.streams) == 2
    info = probe(out)
    assert (info.width, info.height, info.fps, info.num_frames) == (64, 48, NTSC, 48)
    back = FrameReader(out, size=(64, 48)).read_all()
    assert len(back) == 48
    np.testing.assert_allclose(back.mean(axis=(1, 2)), frames.mean(axis=(1, 2)), atol=4)
    # The same audio rules as mp4: the range asked for, then silence up to the last frame and
    # not past it (Opus frames are 20 ms).
    assert audible_seconds(out) == pytest.approx(0.5, abs=0.05)
    assert decoded_seconds(out, "audio") == pytest.approx(48 / float(NTSC), abs=0.025)
    assert no_leftovers(tmp_path)


def decoded_seconds(path: Path, kind: str) -> float:
    """How long a stream lasts by its decoded content (Matroska states no stream durations)."""
    with av.open(str(path)) as container:
        if kind == "audio":
            frames = list(container.decode(audio=0))
            return float(frames[-1].pts * frames[-1].time_base) + frames[-1].samples / frames[-1].sample_rate
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(video=0)) / float(stream.average_rate)


def gif_delays(path: Path) -> list[int]:
    """Each frame's delay, in hundredths of a second, as the file states it."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.time_base == Fraction(1, 100)
        return [packet.duration for packet in container.demux(stream) if packet.size]


def test_gif_is_one_palette_looping_at_the_frame_rate_without_audio(tmp_path: Path, clips: dict[str, Path]) -> None:
    frames = coloured_frames(24, width=251, height=171)
    out = tmp_path / "shared.gif"
    with VideoWriter(out, fps=Fraction(24), audio_from=probe(clips["ntsc_audio"])) as writer:
        writer.write(frames)
    with av.open(str(out)) as container:
        assert [stream.codec_context.name for stream in container.streams] == ["gif"]  # no audio
    info = probe(out)
    assert (info.width, info.height, info.num_frames, info.codec) == (251, 171, 24, "gif")  # odd sides kept
    # Delays are whole hundredths: 24 fps is 4, 4, 5, ... which keeps the rate on average, and the
    # rate read back is the clip's.
    delays = gif_delays(out)
    assert set(delays) == {4, 5} and sum(delays) == 100
    assert info.fps == 24
    data = out.read_bytes()
    assert b"NETSCAPE2.0\x03\x01\x00\x00" in data  # loops forever
    back = FrameReader(out, size=(251, 171)).read_all()
    np.testing.assert_allclose(back.mean(axis=(1, 2)), frames.mean(axis=(1, 2)), atol=3)
    assert no_leftovers(tmp_path)


def test_a_gif_written_at_a_whole_number_of_hundredths_keeps_its_rate_exactly(tmp_path: Path) -> None:
    out = tmp_path / "exact.gif"
    with VideoWriter(out, fps=Fraction(25)) as writer:
        writer.write(coloured_frames(10))
    assert gif_delays(out) == [4] * 10
    assert probe(out).fps == 25


@pytest.mark.parametrize("suffix", [".webm", ".gif"])
def test_a_failed_webm_or_gif_leaves_nothing_behind(tmp_path: Path, clips: dict[str, Path], suffix: str) -> None:
    out = tmp_path / f"out{suffix}"
    out.write_bytes(b"the previous result")
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(out, fps=Fraction(30), audio_from=probe(clips["ntsc_audio"]), overwrite=True) as writer:
            writer.write(coloured_frames(10))
            raise KeyboardInterrupt()
    assert out.read_bytes() == b"the previous result"
    assert no_leftovers(tmp_path)
    assert ffmpeg_children() == []


def test_webm_carries_the_colour_tags(tmp_path: Path, bt601_full_range: Path) -> None:
    info = probe(bt601_full_range)
    first = FrameReader(bt601_full_range, size=(64, 48)).read_all()
    out = tmp_path / "kept.webm"
    with VideoWriter(out, fps=Fraction(24), color=info.color, crf=0) as writer:  # lossless VP9
        writer.write(first)
    assert probe(out).color == info.color
    again = FrameReader(out, size=(64, 48)).read_all()
    np.testing.assert_allclose(quadrant_centres(again), quadrant_centres(first), atol=2.01)


def ffmpeg_without(tmp_path: Path, *encoders: str) -> Path:
    """A stand-in for an ffmpeg built without ``encoders``: it lists the real one's minus those."""
    real = find_ffmpeg()
    listing = subprocess.run([real, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    kept = "\n".join(line for line in listing.splitlines() if not any(f" {name} " in line for name in encoders))
    folder = tmp_path / "-".join(("without", *encoders))
    folder.mkdir()
    (folder / "encoders.txt").write_text(kept + "\n")
    script = folder / "ffmpeg"
    script.write_text(
        f'#!/bin/sh\ncase " $* " in *" -encoders "*) cat "{folder}/encoders.txt";; *) exec "{real}" "$@";; esac\n'
    )
    script.chmod(0o755)
    return script


def test_an_ffmpeg_without_the_format_s_encoders_is_refused_before_any_work(
    tmp_path: Path, clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    no_vp9, no_opus = ffmpeg_without(tmp_path, "libvpx-vp9", "libopus"), ffmpeg_without(tmp_path, "libopus")
    monkeypatch.setenv("VEDIT_FFMPEG", str(no_vp9))
    with pytest.raises(OutputError, match=r"out.webm: the ffmpeg at .* has no libvpx-vp9 encoder, which .webm files"):
        VideoWriter(work / "out.webm", fps=Fraction(24))
    monkeypatch.setenv("VEDIT_FFMPEG", str(no_opus))
    with pytest.raises(OutputError, match="has no libopus encoder"):
        VideoWriter(work / "out.webm", fps=Fraction(24), audio_from=probe(clips["ntsc_audio"]))
    assert list(work.iterdir()) == []
    with VideoWriter(work / "silent.webm", fps=Fraction(24), audio_from=probe(clips["vp9"])) as writer:
        writer.write(coloured_frames(3))  # no audio to carry, so no Opus needed
    assert probe(work / "silent.webm").num_frames == 3


# --------------------------------------------------------------------------- pixel aspect and what is dropped


def disc_picture(width: int, height: int) -> np.ndarray:
    """A white disc on black, round when every pixel is square."""
    rows, cols = np.mgrid[0:height, 0:width]
    radius = 0.35 * min(width, height)
    disc = (cols - width / 2 + 0.5) ** 2 + (rows - height / 2 + 0.5) ** 2 < radius**2
    return np.where(disc[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2)


def disc_extent(frame: np.ndarray) -> tuple[int, int]:
    """The width and height of the white disc in ``frame``."""
    bright = frame.mean(axis=2) > 128
    columns, rows = np.nonzero(bright.any(axis=0))[0], np.nonzero(bright.any(axis=1))[0]
    return int(columns[-1] - columns[0] + 1), int(rows[-1] - rows[0] + 1)


def stored_with_pixel_aspect(path: Path, shown: tuple[int, int], stored_width: int, aspect: str) -> Path:
    """A disc picture shown at ``shown``, stored ``stored_width`` wide with pixels of ``aspect``
    (as a DVD stores 16:9 in 720x480), losslessly in 4:4:4 so that odd sides are allowed."""
    width, height = shown
    subprocess.run(
        [
            find_ffmpeg(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
            "-r", "24", "-i", "pipe:", "-vf", f"scale={stored_width}:{height}:flags=lanczos,setsar={aspect}",
            "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", str(path),
        ],
        input=np.stack([disc_picture(width, height)] * 3).tobytes(), check=True,
    )  # fmt: skip
    return path


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


def test_a_pixel_aspect_stated_by_the_container_alone_counts(tmp_path: Path) -> None:
    square = stored_with_pixel_aspect(tmp_path / "square.mp4", (96, 72), 96, "1")
    tagged = tmp_path / "tagged.mkv"
    ffmpeg_run("-i", str(square), "-c", "copy", "-aspect", "16:9", str(tagged))  # the bitstream still says 1:1
    info = probe(tagged)
    assert info.pixel_aspect == Fraction(4, 3) and (info.width, info.height) == (128, 72)


def test_written_pixels_are_square(tmp_path: Path) -> None:
    clip = stored_with_pixel_aspect(tmp_path / "anamorphic.mp4", (854, 480), 720, "32/27")
    info = probe(clip)
    frames = FrameReader(clip, size=(912, 512), info=info).read_all()
    for suffix in (".mp4", ".webm", ".gif"):
        out = tmp_path / f"out{suffix}"
        with VideoWriter(out, fps=Fraction(24), size=written_size(out, info.exact_size)) as writer:
            writer.write(frames)
        written = probe(out)
        assert written.pixel_aspect == 1
        assert (written.width, written.height) == ((853, 480) if suffix == ".gif" else (854, 480))
        width, height = disc_extent(FrameReader(out, info=written, size=(written.width, written.height)).read_all()[0])
        assert width == pytest.approx(height, rel=0.03)


@pytest.fixture(scope="module")
def many_streams(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An mkv with two video streams, two audio tracks, subtitles and an attached font."""
    root = tmp_path_factory.mktemp("streams")
    subtitles = root / "words.srt"
    subtitles.write_text("1\n00:00:00,000 --> 00:00:00,400\nhello\n\n")
    path = root / "many.mkv"
    ffmpeg_run(
        "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=24:duration=0.5",
        "-f", "lavfi", "-i", "testsrc=size=32x24:rate=24:duration=0.5",
        "-f", "lavfi", "-i", "sine=duration=0.5", "-f", "lavfi", "-i", "sine=frequency=880:duration=0.5",
        "-i", str(subtitles), "-map", "0", "-map", "1", "-map", "2", "-map", "3", "-map", "4",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:v:1", "mpeg4", "-c:a", "aac", "-c:a:1", "libopus",
        "-c:s", "srt", "-attach", str(subtitles), "-metadata:s:t", "mimetype=text/plain", str(path),
    )  # fmt: skip
    return path


def test_the_streams_that_are_not_written_are_named(tmp_path: Path, many_streams: Path) -> None:
    info = probe(many_streams)
    unused = (("video", "mpeg4"), ("audio", "opus"), ("subtitle", "srt"), ("attachment", "words.srt"))
    assert info.unused_streams == unused
    streams = ["a second video stream (mpeg4)", "a subtitle stream (srt)", "an attachment (words.srt)"]
    assert lost_in_writing(info, tmp_path / "out.mp4") == [streams[0], "a second audio track (opus)", *streams[1:]]
    assert lost_in_writing(info, tmp_path / "out.webm") == [streams[0], "a second audio track (opus)", *streams[1:]]
    # Where the output carries no audio, both tracks go as one.
    assert lost_in_writing(info, tmp_path / "out.gif") == ["the audio (GIF has no audio track)", *streams]
    assert lost_in_writing(info, tmp_path / "frames") == ["the audio (PNG frames have no audio track)", *streams]
    # What is read and written is the first of each.
    frames = FrameReader(many_streams, size=(64, 48), info=info).read_all()
    assert len(frames) == 12


@pytest.mark.parametrize(
    ("codec", "expected"),
    [
        (["-c:v", "libx264", "-pix_fmt", "yuv420p10le"], ["10-bit samples (yuv420p10le) written as 8-bit"]),
        (["-c:v", "libx264", "-pix_fmt", "yuv422p"], ["4:2:2 colour (yuv422p) written as 4:2:0"]),
        (["-c:v", "libx264", "-pix_fmt", "yuv444p"], ["4:4:4 colour (yuv444p) written as 4:2:0"]),
        (["-c:v", "libx265", "-pix_fmt", "yuv422p10le", "-x265-params", "log-level=error"],
         ["10-bit samples (yuv422p10le) written as 8-bit", "4:2:2 colour (yuv422p10le) written as 4:2:0"]),
        (["-c:v", "libx264", "-pix_fmt", "yuv420p", "-timecode", "01:00:00:00"], ["a data stream (timecode)"]),
        (["-c:v", "libx264", "-pix_fmt", "yuv420p"], []),
    ],
)
def test_samples_the_output_holds_fewer_of_are_named(tmp_path: Path, codec: list[str], expected: list[str]) -> None:
    clip = tmp_path / "clip.mov"
    ffmpeg_run("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=24:duration=0.25", *codec, str(clip))
    info = probe(clip)
    assert lost_in_writing(info, tmp_path / "out.mp4") == expected
    # GIF and PNG frames keep full-resolution colour, but every output is 8-bit.
    eight_bit = [line for line in expected if "colour" not in line]
    assert lost_in_writing(info, tmp_path / "out.gif") == eight_bit
    assert lost_in_writing(info, tmp_path / "frames") == eight_bit


def test_transparency_and_rgb_folders_are_named(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for index in range(2):
        Image.new("RGBA", (16, 8), (10, 20, 30, 128)).save(folder / f"{index:05d}.png")
    info = probe(folder)
    assert lost_in_writing(info, tmp_path / "out.mp4") == [
        "the alpha channel (rgba)", "4:4:4 colour (rgba) written as 4:2:0"
    ]
    assert lost_in_writing(info, tmp_path / "out") == ["the alpha channel (rgba)"]


# --------------------------------------------------------------------------- the old module path


# Where each public name of the former vedit.video lives now.
VIDEO_MODULE_PARTS = {
    "vedit.io.ffmpeg": ["find_ffmpeg"],
    "vedit.io.probe": ["FOLDER_FPS", "IMAGE_EXTENSIONS", "ColorTags", "VideoInfo", "probe"],
    "vedit.io.timing": ["Resampling", "resampling"],
    "vedit.io.frames": ["FrameRange", "parse_size", "working_size"],
    "vedit.io.reader": ["FrameReader", "untagged_matrix"],
    "vedit.io.files": [
        "OUTPUT_FORMATS", "SIGNATURE", "VIDEO_EXTENSIONS", "OutputFormat", "check_output_folder", "check_output_path",
        "check_replaceable", "process_alive", "remove_dead_partials", "unwritable_suffix", "write_atomically",
        "written_by_vedit",
    ],
    "vedit.io.writer": [
        "VideoWriter", "check_encoders", "frame_timing", "lost_in_writing", "no_audio_track", "output_format",
        "save_png", "written_size",
    ],
}  # fmt: skip


def test_the_old_vedit_video_path_gives_every_name_it_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plugins and scripts that import from ``vedit.video`` get the same objects, and a warning that
    names the modules to import them from."""
    monkeypatch.delitem(sys.modules, "vedit.video", raising=False)  # so that importing it warns again
    moved = r"^vedit\.video has moved: import vedit\.io\.ffmpeg or .* or vedit\.io\.writer instead$"
    with pytest.warns(DeprecationWarning, match=moved):
        old = importlib.import_module("vedit.video")
    for module, names in VIDEO_MODULE_PARTS.items():
        part = importlib.import_module(module)
        assert {name: getattr(old, name, None) for name in names} == {name: getattr(part, name) for name in names}


# --------------------------------------------------------------------------- real clips


@pytest.mark.skipif(not (SHARED_CLIPS / "tree.avi").exists(), reason="shared sample clips not present")
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
