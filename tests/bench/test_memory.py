"""``vedit bench memory``: time per frame with the keyframe attention bounded."""

from __future__ import annotations

import json

import pytest

from helpers.cli import vedit


@pytest.mark.slow  # a whole suite run: several seconds
def test_bench_memory_gives_time_per_frame_with_bounded_keyframe_attention():
    result = vedit(
        "bench",
        "memory",
        "--frames",
        "12",
        "--size",
        "64x64",
        "--steps",
        "1",
        "--chunk-size",
        "2",
        "--max-joint-keyframes",
        "3",
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--json",
        "--no-save",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["header"]["settings"]["max_joint_keyframes"] == 3
    (row,) = doc["rows"]
    assert row["frames"] == 12 and row["peak_rss_mb"] >= row["rss_after_load_mb"] > 0
    assert row["keyframe_ms_per_frame"] > 0 and row["ms_per_frame"] > row["denoise_ms_per_frame"] > 0
    # seconds is rounded to 1 ms, so the figure it gives is good to 1000 * 0.0005 / 12 ms per frame
    assert row["ms_per_frame"] == pytest.approx(1000 * row["seconds"] / 12, abs=0.05)
