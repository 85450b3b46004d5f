"""The pipeline's stages (vedit.pipeline.stages)."""

from __future__ import annotations

import time

from conftest import make_clip
from vedit.pipeline import stages
from vedit.pipeline.preflight import open_clip


def test_a_long_clip_is_read_in_bounded_batches(tmp_path):
    """The read-ahead holds at most its byte budget of frames, whatever the clip's length."""
    long_clip = make_clip(tmp_path / "long.mp4", frames=60, size=(64, 48))
    from vedit.config import load_config

    checked_clip = open_clip(long_clip, load_config(size="64x48"))
    budget = 64 * 48 * 3 * 4 * 3  # three batches of four frames
    with stages.read_ahead(checked_clip, 4, budget_bytes=budget) as frames:
        time.sleep(0.5)
        assert frames._queue.qsize() <= 3
        assert sum(len(batch) for batch in frames) == 60
