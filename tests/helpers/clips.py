"""Clips that several test modules make: synthetic clips with known frames and timing, and a stand-in
ffmpeg without some encoders."""

from __future__ import annotations

import os
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from vedit.io.ffmpeg import find_ffmpeg

NTSC = Fraction(24000, 1001)
# 30 ms beeps every half second from 0.25 s: their onsets say where the sound is.
BEEPS = "aevalsrc=exprs='if(gte(t\\,0.25)*lt(mod(t-0.25\\,0.5)\\,0.03)\\,0.5*sin(2*PI*1000*t)\\,0)':s=48000"


def ffmpeg_run(*args: str) -> None:
    subprocess.run([find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


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


_SAMPLE_CLIPS: dict[Path, dict[str, Path]] = {}


def sample_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small synthetic clips, made once for the whole session (the first module that asks makes them)."""
    if tmp_path_factory.getbasetemp() in _SAMPLE_CLIPS:
        return _SAMPLE_CLIPS[tmp_path_factory.getbasetemp()]
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
    _SAMPLE_CLIPS[tmp_path_factory.getbasetemp()] = made
    return made


def coloured_frames(count: int, width: int = 64, height: int = 48) -> np.ndarray:
    """Flat frames, each a different colour, so order survives lossy encoding."""
    frames = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        frames[i] = (20 + 5 * i, 230 - 4 * i, (60 + 37 * i) % 256)
    return frames


def no_leftovers(folder: Path) -> bool:
    return not any(entry.name.startswith(".") for entry in folder.iterdir())


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


def graded_clip(
    path: Path,
    seconds: str,
    frames: int,
    *,
    sound: bool = True,
    rate: int = 120,
    quality: tuple[str, ...] = ("-qp", "0"),
) -> Path:
    """Frame n is grey 20 + 3n (lossless by default), shown at ``seconds``: an ffmpeg expression of
    N. ``rate`` is the made frames' own, which sets how long the encoder says the last one lasts."""
    audio = ["-f", "lavfi", "-t", "3", "-i", BEEPS] if sound else []
    ffmpeg_run(
        "-f", "lavfi", "-i", f"color=size=64x48:rate={rate}", *audio,
        "-vf", f"format=gray,geq=lum='20+3*N',setpts='({seconds})/TB'", "-fps_mode", "vfr",
        "-frames:v", str(frames), "-pix_fmt", "yuv420p", "-c:v", "libx264", *quality,
        "-enc_time_base", "1:90000", *(["-c:a", "aac", "-shortest"] if sound else []), str(path),
    )  # fmt: skip
    return path


def graded_vfr_clip(path: Path, frames: int = 60) -> Path:
    """Frame n is grey 20 + 3n (lossless), shown at uneven times: 24 fps, a gap, then 50 fps."""
    return graded_clip(path, "if(lt(N\\,20)\\,N/24\\,if(lt(N\\,30)\\,20/24+(N-20)/10\\,20/24+1+(N-30)/50))", frames)


def gapped_clip(path: Path, gap: int = 2, after: int = 2, frames: int = 20) -> Path:
    """Frame n is grey 20 + 3n at 24 fps, but ``gap`` frame times are missing after the first
    ``after`` frames, as when a camera stalls as it starts. Coded with B-frames (flat grey still
    decodes to its level), the file's average rate (20 fps for the defaults) is lower than its
    frames' span implies, so the constant-rate reading gives fewer frames (18) than it has."""
    return graded_clip(
        path, f"if(lt(N\\,{after})\\,N\\,N+{gap})/24", frames, sound=False, rate=24, quality=("-crf", "10")
    )


def frame_numbers(frames: np.ndarray) -> list[int]:
    """Which frame of the graded clip each picture is."""
    return [int(round((frame.mean() - 20) / 3)) for frame in frames]


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
