"""Frame ranges and sizes: parsing, clipping to the clip, the working size."""

from __future__ import annotations

import pytest

from vedit.errors import ConfigError
from vedit.io.frames import FrameRange, parse_size, working_size


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
