"""Timing of what is read and written: where the sound sits against the picture, and how
variable-rate clips are resampled or kept as they are."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from helpers.clips import BEEPS, ffmpeg_run, frame_numbers, gapped_clip, graded_clip, graded_vfr_clip
from vedit.io.frames import FrameRange
from vedit.io.probe import probe
from vedit.io.reader import FrameReader
from vedit.io.timing import Resampling, resampling
from vedit.io.writer import VideoWriter

RATE = Fraction(2997, 125)  # 23.976 written as the fraction some encoders store
FRAMES = 90  # 3.75 s


def beeping_clip(
    path: Path,
    video: list[str],
    audio: list[str],
    *,
    audio_delay: float = 0.0,
    video_delay: float = 0.0,
) -> Path:
    """A 64x48 clip of FRAMES frames at RATE over a beep track, either stream delayed."""
    seconds = f"{float(FRAMES / RATE):.4f}"
    ffmpeg_run(
        "-itsoffset", str(video_delay), "-f", "lavfi", "-i", f"testsrc2=size=64x48:rate={RATE}",
        "-itsoffset", str(audio_delay), "-f", "lavfi", "-t", seconds, "-i", BEEPS,
        "-frames:v", str(FRAMES), *video, *audio, str(path),
    )  # fmt: skip
    return path


def first_video_time(path: Path) -> float:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return float(frame.pts * frame.time_base)


def beep_onsets(path: Path) -> list[float]:
    """When each beep starts, in seconds from the first video frame, from the decoded sound."""
    onsets: list[float] = []
    last_loud = -1.0
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            samples = frame.to_ndarray().astype(np.float64)
            samples = samples[0] if samples.ndim > 1 else samples
            if samples.dtype.kind == "i" or np.abs(samples).max() > 2:
                samples = samples / 32768
            start = float(frame.pts * frame.time_base)
            for index in np.nonzero(np.abs(samples) > 0.05)[0]:
                moment = start + index / frame.sample_rate
                if moment - last_loud > 0.2:
                    onsets.append(moment)
                last_loud = moment
    origin = first_video_time(path)
    return [onset - origin for onset in onsets]


def stream_seconds(path: Path) -> dict[str, float]:
    with av.open(str(path)) as container:
        return {stream.type: float(stream.duration * stream.time_base) for stream in container.streams}


SOURCES = {
    "mp4-aac": (["-c:v", "libx264"], ["-c:a", "aac"], {}),
    "mov-aac": (["-c:v", "libx264"], ["-c:a", "aac"], {}),
    "mkv-opus": (["-c:v", "libx264"], ["-c:a", "libopus"], {}),
    # MPEG-4 with B-frames and AC-3 in AVI: seeking this file's audio with -ss lands late.
    "avi-ac3": (["-c:v", "mpeg4", "-bf", "2"], ["-c:a", "ac3"], {}),
    "avi-mp3": (["-c:v", "mpeg4"], ["-c:a", "libmp3lame"], {}),
    "mp4-aac-audio-late": (["-c:v", "libx264"], ["-c:a", "aac"], {"audio_delay": 0.3}),
    "mkv-aac-video-late": (["-c:v", "libx264"], ["-c:a", "aac"], {"video_delay": 0.2}),
    "ts-aac-audio-late": (["-c:v", "libx264"], ["-c:a", "aac"], {"audio_delay": 0.3}),
}
SUFFIX = {"mp4": ".mp4", "mov": ".mov", "mkv": ".mkv", "avi": ".avi", "ts": ".ts"}


@pytest.fixture(scope="module")
def beeping(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("beeping")
    return {
        name: beeping_clip(root / f"{name}{SUFFIX[name.split('-')[0]]}", video, audio, **delays)
        for name, (video, audio, delays) in SOURCES.items()
    }


# --------------------------------------------------------------------------- audio placement


@pytest.mark.parametrize("frames", [":", "30:", "31::2"])
@pytest.mark.parametrize("name", list(SOURCES))
def test_audio_keeps_its_place_against_the_first_frame(
    tmp_path: Path, beeping: dict[str, Path], name: str, frames: str
) -> None:
    source = beeping[name]
    info = probe(source)
    selection = FrameRange.parse(frames)
    reader = FrameReader(source, frames=selection, size=(64, 48), info=info)
    pictures = reader.read_all()
    # What the pipeline passes: the selected span of the source, from its first video frame.
    first, last, step = reader.indices[0], reader.indices[-1], selection.step
    audio_range = (float(first / info.fps), float((last + step) / info.fps))
    out = tmp_path / "out.mp4"
    with VideoWriter(out, fps=info.fps / step, audio_from=info, audio_range=audio_range) as writer:
        writer.write(pictures)

    video_seconds = len(pictures) * step / info.fps
    start = audio_range[0]
    expected = [t - start for t in beep_onsets(source) if 0.04 < t - start < video_seconds - 0.05]
    got = [t for t in beep_onsets(out) if t > 0.035]  # a beep under way at the cut starts at 0
    assert len(expected) >= 3
    assert len(got) == len(expected)
    # Within a couple of milliseconds (AAC frames); before the fix the AVI/AC-3 clip's sound
    # came 1.5 s late and the MPEG-TS one lost its 0.3 s delay.
    np.testing.assert_allclose(got, expected, atol=0.004)
    # And the sound still ends with the picture.
    lengths = stream_seconds(out)
    assert lengths["audio"] == pytest.approx(float(video_seconds), abs=0.025)
    assert lengths["video"] == pytest.approx(float(video_seconds), abs=0.002)


def test_audio_that_starts_late_is_preceded_by_silence(tmp_path: Path, beeping: dict[str, Path]) -> None:
    source = beeping["mp4-aac-audio-late"]  # sound from 0.3 s, first beep at 0.55 s
    info = probe(source)
    pictures = FrameReader(source, frames=FrameRange(stop=24), size=(64, 48), info=info).read_all()
    out = tmp_path / "late.mkv"
    with VideoWriter(out, fps=info.fps, audio_from=info, audio_range=(0.0, float(24 / info.fps))) as writer:
        writer.write(pictures)
    with av.open(str(out)) as container:
        sound = np.concatenate([frame.to_ndarray()[0] for frame in container.decode(audio=0)])
        rate = container.streams.audio[0].sample_rate
    # The track covers the picture from its start, silent until the source's sound begins.
    assert np.abs(sound[: int(0.5 * rate)]).max() < 0.01
    assert beep_onsets(out)[0] == pytest.approx(0.55, abs=0.004)


# --------------------------------------------------------------------------- variable frame rate


def packet_times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        ticks = sorted(packet.pts for packet in container.demux(stream) if packet.size)
        return [float((tick - ticks[0]) * stream.time_base) for tick in ticks]


@pytest.fixture(scope="module")
def vfr_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return graded_vfr_clip(tmp_path_factory.mktemp("vfr") / "vfr.mp4")


@pytest.mark.parametrize("frames", [":", "5:40", "3:50:3"])
def test_resampling_counts_what_the_constant_rate_reading_does(vfr_clip: Path, frames: str) -> None:
    info = probe(vfr_clip)
    selection = FrameRange.parse(frames)
    counted = resampling(info, selection)
    reader = FrameReader(vfr_clip, frames=selection, size=(64, 48), info=info)
    shown = frame_numbers(reader.read_all())
    # Every frame read at the constant rate, over the selection's span, says which it shows.
    span = FrameRange(start=reader.indices[0], stop=reader.indices[-1] + 1)
    span_shown = frame_numbers(FrameReader(vfr_clip, frames=span, size=(64, 48), info=info).read_all())
    repeated = sum(a == b for a, b in zip(shown, shown[1:]))
    dropped = span_shown[-1] - span_shown[0] + 1 - len(set(span_shown))
    assert counted == Resampling(dropped=dropped, repeated=repeated, variable=True)
    if frames == ":":
        assert dropped > 0 and repeated > 0  # the 50 fps part loses frames, the gap repeats them
    # Which decoded frame each frame read shows, and which pairs read show one frame twice.
    assert counted.shown == tuple(shown)
    assert counted.repeated_pairs == tuple(t for t in range(len(shown) - 1) if shown[t] == shown[t + 1])


@pytest.mark.parametrize(("gap", "after"), [(2, 2), (5, 1)])
def test_a_clip_with_a_gap_in_its_timestamps_is_read_whole_at_the_constant_rate(
    tmp_path: Path, gap: int, after: int
) -> None:
    clip = gapped_clip(tmp_path / "gapped.mp4", gap=gap, after=after)
    info = probe(clip)
    reader = FrameReader(clip, size=(64, 48), info=info)
    assert len(reader) == 20  # the container's count: every frame it holds
    # At the average rate the clip's span holds fewer frames than it has: not a sign of a cut-off
    # end (5 after 1 was refused as "read 17 of 20 frames; the file is truncated").
    shown = frame_numbers(reader.read_all())
    assert reader.short_read is None and len(shown) < 20
    change = resampling(info)
    assert change.shown == tuple(shown)
    assert change.repeated_pairs == tuple(t for t in range(len(shown) - 1) if shown[t] == shown[t + 1])
    assert change.repeated == len(change.repeated_pairs) > 0 and change.dropped > 0
    # Each frame once at its own time: all of them.
    assert frame_numbers(FrameReader(clip, size=(64, 48), keep_timestamps=True).read_all()) == list(range(20))


def test_a_clip_cut_by_stream_copy_is_read_whole(tmp_path: Path) -> None:
    """``-ss`` before ``-i`` with ``-c copy`` starts the cut at the key frame before the time asked
    for and writes an edit list that skips to it: the container counts the skipped packets too."""
    source = graded_clip(tmp_path / "source.mp4", "N/25", 60, sound=False, rate=25, quality=("-qp", "0", "-g", "12"))
    cut = tmp_path / "cut.mp4"
    ffmpeg_run("-ss", "1.3", "-i", str(source), "-c", "copy", str(cut))
    info = probe(cut)
    assert info.num_frames == 36  # from the key frame at 0.96 s (frame 24); 27 of them are shown
    # Both were refused: "read 27 of 36 frames; the file is truncated or damaged".
    own_times = FrameReader(cut, size=(64, 48), info=info, keep_timestamps=True)
    assert frame_numbers(own_times.read_all()) == list(range(33, 60)) and own_times.short_read is None
    constant = FrameReader(cut, size=(64, 48), info=info)
    assert [n - 33 for n in frame_numbers(constant.read_all())] == list(resampling(info).shown)
    assert constant.short_read is None


def test_resampling_of_a_constant_rate_clip_changes_nothing(beeping: dict[str, Path]) -> None:
    assert resampling(probe(beeping["mp4-aac"])) == Resampling(dropped=0, repeated=0, variable=False)
    assert resampling(probe(beeping["avi-ac3"]), FrameRange.parse("3:60:2")) == Resampling(0, 0, False)


def test_keep_timestamps_reads_every_frame_once_at_its_own_time(vfr_clip: Path) -> None:
    reader = FrameReader(vfr_clip, size=(64, 48), keep_timestamps=True)
    source_times = packet_times(vfr_clip)
    assert len(reader) == len(source_times) == 60
    np.testing.assert_allclose(reader.timestamps, source_times, atol=1e-6)  # known up front
    assert frame_numbers(reader.read_all()) == list(range(60))
    np.testing.assert_allclose(reader.timestamps, source_times, atol=1e-6)  # and as read

    picked = FrameReader(vfr_clip, frames=FrameRange.parse("10:40:3"), size=(64, 48), keep_timestamps=True)
    assert frame_numbers(picked.read_all()) == list(range(10, 40, 3))
    np.testing.assert_allclose(picked.timestamps, [source_times[i] for i in range(10, 40, 3)], atol=1e-6)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm"])
def test_a_variable_rate_clip_written_back_keeps_its_timestamps(tmp_path: Path, vfr_clip: Path, suffix: str) -> None:
    info = probe(vfr_clip)
    reader = FrameReader(vfr_clip, size=(64, 48), keep_timestamps=True, info=info)
    pictures = reader.read_all()
    end = reader.timestamps[-1] + float(1 / info.fps)
    out = tmp_path / f"copy{suffix}"
    with VideoWriter(
        out, fps=info.fps, timestamps=reader.timestamps, audio_from=info, audio_range=(0.0, end)
    ) as writer:
        writer.write(pictures)

    back = FrameReader(out, size=(64, 48), keep_timestamps=True)
    assert frame_numbers(back.read_all()) == list(range(60))
    tolerance = 0.001 if suffix in (".mkv", ".webm") else 1e-5  # Matroska and WebM store milliseconds
    np.testing.assert_allclose(packet_times(out), packet_times(vfr_clip), atol=tolerance)
    np.testing.assert_allclose(back.timestamps, reader.timestamps, atol=tolerance)
    # The sound stays with the picture and ends with it.
    np.testing.assert_allclose(beep_onsets(out), beep_onsets(vfr_clip)[: len(beep_onsets(out))], atol=0.004)
    assert len(beep_onsets(out)) >= 4
    assert probe(out).duration == pytest.approx(end, abs=0.002)


def test_a_variable_rate_gif_keeps_its_frame_times_to_the_hundredth(tmp_path: Path, vfr_clip: Path) -> None:
    info = probe(vfr_clip)
    reader = FrameReader(vfr_clip, size=(64, 48), keep_timestamps=True, info=info)
    pictures = reader.read_all()
    out = tmp_path / "copy.gif"
    with VideoWriter(out, fps=info.fps, timestamps=reader.timestamps, audio_from=info) as writer:
        writer.write(pictures)
    # Each frame's time to the nearest hundredth, halves up as ffmpeg rounds (0.125 s is 0.13 s).
    hundredths = [math.floor(t * 100 + 0.5) / 100 for t in reader.timestamps]
    assert packet_times(out) == pytest.approx(hundredths, abs=1e-9)
    back = FrameReader(out, size=(64, 48), keep_timestamps=True).read_all()
    # Every frame once, in order: greys 3 levels apart are dithered by up to 2, but stay in order.
    assert len(back) == 60 and np.all(np.diff(back.mean(axis=(1, 2, 3))) > 0)
    assert not probe(out).has_audio


def test_timestamps_must_increase(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        VideoWriter(tmp_path / "out.mp4", fps=Fraction(24), timestamps=[0.0, 0.5, 0.5])
    with VideoWriter(tmp_path / "out.mp4", fps=Fraction(24), timestamps=[0.0, 0.1]) as writer:
        with pytest.raises(ValueError, match="only 2 timestamps"):
            writer.write(np.zeros((3, 48, 64, 3), np.uint8))
        writer.write(np.zeros((2, 48, 64, 3), np.uint8))
