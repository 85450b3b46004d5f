"""``vedit bench invert`` end to end on the tiny model (no timing asserted): per engine and batch, ``--vs``."""

from __future__ import annotations

import json

import pytest

from helpers.bench import TINY
from helpers.cli import vedit


def test_bench_invert_per_engine_and_batch_to_the_default_file(tmp_path):
    result = vedit(
        "bench",
        "invert",
        *TINY,
        "--frames",
        "4",
        "--inversion-steps",
        "2",
        "--batch-size",
        "2,4",
        "--engines",
        "eager",
        "--repeats",
        "2",
        "--warmup",
        "0",
        "--no-peak",
    )
    assert result.exit_code == 0, result.output
    (saved,) = (tmp_path / "results").iterdir()
    assert saved.name.startswith("invert-") and "-cpu-" in saved.name
    doc = json.loads(saved.read_text())
    assert doc["key_fields"] == ["engine", "batch"]
    assert [(r["engine"], r["batch"]) for r in doc["rows"]] == [("eager", 2), ("eager", 4)]
    for row in doc["rows"]:
        assert row["frames_per_s"] == pytest.approx(4 / row["median_s"], rel=1e-3)
        assert row["forwards_per_s"] == pytest.approx(8 / row["median_s"], rel=1e-3)
        assert row["tflops"] > 0


def test_bench_invert_vs_alternates_and_reports_ratios():
    result = vedit(
        "bench",
        "invert",
        *TINY,
        "--frames",
        "2",
        "--inversion-steps",
        "1",
        "--batch-size",
        "2",
        "--repeats",
        "2",
        "--warmup",
        "0",
        "--no-peak",
        "--vs",
        "batch-size=1",
        "--json",
        "--no-save",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["vs"]["order"] == ["A (warm-up)", "B (warm-up)", "A", "B", "A", "B"]  # one warm-up at least: the builds
    (row,) = doc["rows"]
    assert row["engine"] == "eager" and len(row["ratios"]) == 2
    assert row["ratio_min"] <= row["ratio_median"] <= row["ratio_max"]
