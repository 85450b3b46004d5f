"""``vedit bench quality``: every variant scored along the source's flow, as ``vedit eval`` scores it."""

from __future__ import annotations

from pathlib import Path

import pytest

from vedit.errors import ConfigError


def test_bench_quality_scores_every_variant_along_the_source_flow(tmp_path):
    from conftest import make_clip
    from vedit.io.reader import FrameReader
    from vedit.quality.flow import flow_backend
    from vedit.quality.metrics import warp_error
    from vedit_bench.quality import measure_clip, parse_clip

    assert parse_clip("a/b.avi:40") == (Path("a/b.avi"), 40) and parse_clip("c:/x.avi") == (Path("c:/x.avi"), None)
    with pytest.raises(ConfigError, match="at least 2 frames"):
        parse_clip("b.avi:1")
    clip = make_clip(tmp_path / "clip.mp4", frames=10, size=(64, 48))
    (tmp_path / "work").mkdir()
    rows = measure_clip(f"{clip}:6", tmp_path / "work", size=(64, 48), steps=1, seed=0, chunk_size=4, flow="dis",
                        models=("tiny",), postprocessors=("deflicker-luma",))  # fmt: skip
    assert [(r["model"], r["propagator"], r["frames"]) for r in rows] == [("tiny", "none", 6), ("tiny", "tokenflow", 6)]
    source = FrameReader(clip, size=(64, 48)).read_all()[:6]
    assert rows[0]["source"] == pytest.approx(warp_error(source, flow_backend("dis")))
    edited = FrameReader(tmp_path / "work" / "tiny-tokenflow-deflicker-luma.mp4", size=(64, 48)).read_all()
    assert len(edited) == 6
    assert rows[1]["deflicker-luma"] == pytest.approx(warp_error(edited, flow_backend("dis"), source=source))


def test_bench_quality_leaves_out_pairs_of_a_repeated_source_frame_as_vedit_eval_does(tmp_path):
    from helpers.clips import gapped_clip
    from vedit.quality.evaluate import evaluate
    from vedit_bench.quality import measure_clip

    clip = gapped_clip(tmp_path / "gapped.mp4")  # at its average rate: 18 frames, frame 1 twice
    (tmp_path / "work").mkdir()
    with pytest.warns(UserWarning, match="2 frames dropped, 1 repeated"):  # each edit says it resampled
        rows = measure_clip(str(clip), tmp_path / "work", size=(64, 48), steps=1, seed=0, chunk_size=4, flow="dis",
                            models=("tiny",), postprocessors=())  # fmt: skip
    assert [(r["frames"], r["measured_pairs"]) for r in rows] == [(18, 16), (18, 16)]
    report = evaluate(tmp_path / "work" / "tiny-tokenflow-plain.mp4", clip, clip=None)
    assert report.floor.repeated_pairs == 1
    assert rows[1]["source"] == pytest.approx(report.floor.warp_error, rel=1e-12)
    assert rows[1]["plain"] == pytest.approx(report.edit.warp_error, rel=1e-12)
