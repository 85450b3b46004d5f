"""Writing clips: rate, count and content kept, audio trimmed to the video, atomic output, WebM and GIF,
square pixels, and what an output cannot hold named."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from helpers.clips import (
    NTSC,
    QUADRANTS,
    bt601_full_range,  # noqa: F401  (a fixture, used by name)
    coloured_frames,
    disc_extent,
    ffmpeg_children,
    ffmpeg_run,
    ffmpeg_without,
    no_leftovers,
    quadrant_centres,
    quadrant_picture,
    sample_clips,
    stored_with_pixel_aspect,
)
from vedit.errors import OutputError
from vedit.io.probe import ColorTags, probe
from vedit.io.reader import FrameReader
from vedit.io.writer import VideoWriter, lost_in_writing, written_size


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return sample_clips(tmp_path_factory)


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


def test_untagged_sources_are_written_as_bt709(tmp_path: Path) -> None:
    out = tmp_path / "plain.mkv"
    with VideoWriter(out, fps=Fraction(24), color=ColorTags()) as writer:
        writer.write(np.stack([quadrant_picture()] * 3))
    assert probe(out).color == ColorTags(primaries="bt709", transfer="bt709", matrix="bt709", range="tv")
    back = FrameReader(out, size=(64, 48)).read_all()
    np.testing.assert_allclose(quadrant_centres(back), np.array(QUADRANTS, float), atol=2.01)


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


@pytest.mark.parametrize("name", ["out.mp4", "frames"])
def test_zero_frames_is_an_error_and_leaves_nothing(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    with pytest.raises(OutputError, match="no frames were written"):
        with VideoWriter(folder / name, fps=Fraction(30)):
            pass
    assert list(folder.iterdir()) == []


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
        (
            ["-c:v", "libx265", "-pix_fmt", "yuv422p10le", "-x265-params", "log-level=error"],
            ["10-bit samples (yuv422p10le) written as 8-bit", "4:2:2 colour (yuv422p10le) written as 4:2:0"],
        ),
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
        "the alpha channel (rgba)",
        "4:4:4 colour (rgba) written as 4:2:0",
    ]
    assert lost_in_writing(info, tmp_path / "out") == ["the alpha channel (rgba)"]


def test_what_folders_of_frames_hold_is_known_without_pyav_and_agrees_with_it() -> None:
    from vedit.io.probe import PIL_PIXEL_FORMATS
    from vedit.io.writer import FOLDER_SAMPLES, _chroma_subsampling

    assert set(FOLDER_SAMPLES) == set(PIL_PIXEL_FORMATS.values())
    for pixel_format, facts in FOLDER_SAMPLES.items():
        samples = av.VideoFormat(pixel_format, 16, 16)
        depth = max(component.bits for component in samples.components)
        alpha = any(component.is_alpha for component in samples.components)
        assert facts == (depth, alpha, _chroma_subsampling(samples)), pixel_format
