"""``vedit bench edit`` end to end on the tiny model (no timing asserted): a document per stage, ``--vs``."""

from __future__ import annotations

import json

import pytest

from helpers.bench import TINY
from helpers.cli import vedit


@pytest.mark.slow  # a whole suite run: several seconds
def test_bench_edit_writes_a_document_per_stage(tmp_path):
    out = tmp_path / "edit.json"
    result = vedit(
        "bench",
        "edit",
        *TINY,
        "--frames",
        "4",
        "--steps",
        "2",
        "--inversion-steps",
        "2",
        "--chunk-size",
        "2",
        "--repeats",
        "2",
        "--warmup",
        "0",
        "--save",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "total" in result.stdout and "saved" in result.stderr
    doc = json.loads(out.read_text())
    assert doc["suite"] == "edit" and doc["key_fields"] == ["stage"] and doc["value_field"] == "median_s"
    head = doc["header"]
    assert {"date", "machine", "device", "versions", "settings", "timing", "matmul_peak_tflops"} <= set(head)
    assert {"torch", "diffusers", "vedit"} <= set(head["versions"])
    assert head["settings"]["frames"] == 4 and head["settings"]["model"] == "tiny"
    assert head["timing"]["repeats"] == 2 and head["matmul_peak_tflops"] > 0
    rows = {r["stage"]: r for r in doc["rows"]}
    assert {"invert", "total"} <= set(rows)
    assert {"keyframe", "propagation"} <= set(rows) or "denoise" in rows
    for row in doc["rows"]:
        assert len(row["samples_s"]) == 2
        assert row["min_s"] <= row["median_s"] <= row["max_s"]
    # 4 frames, 2 steps, B = 2: inversion 4×2, keyframes 3·2×2, propagation 3·4×2 (and the keyframe pass's count
    # under its earlier name, keyframes, for the readers of earlier documents)
    assert doc["forwards"] == {"inversion": 8, "keyframe": 12, "propagation": 24, "keyframes": 12}
    assert rows["total"]["forwards"] == 44 and rows["invert"]["forwards"] == 8
    assert rows["invert"]["tflops"] > 0 and rows["total"]["tflop"] > 0
    assert doc["gflop_per_image"]["inversion"] > 0


def test_bench_edit_json_on_stdout_and_no_save(tmp_path):
    result = vedit(
        "bench",
        "edit",
        *TINY,
        "--frames",
        "2",
        "--steps",
        "1",
        "--inversion-steps",
        "1",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--no-peak",
        "--json",
        "--no-save",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["suite"] == "edit" and doc["header"]["matmul_peak_tflops"] is None
    assert not (tmp_path / "results").exists()


def test_bench_vs_with_an_unknown_key_is_one_line():
    result = vedit("bench", "edit", *TINY, "--frames", "2", "--vs", "colour=red", "--no-save")
    assert result.exit_code == 4
    assert result.stderr.strip().startswith("vedit: error: --vs: unknown key 'colour'")
    assert len(result.stderr.strip().splitlines()) == 1


def test_bench_edit_vs_runs_both_configurations_alternately():
    result = vedit(
        "bench",
        "edit",
        *TINY,
        "--frames",
        "4",
        "--steps",
        "1",
        "--inversion-steps",
        "1",
        "--chunk-size",
        "2",
        "--repeats",
        "2",
        "--warmup",
        "0",
        "--no-peak",
        "--vs",
        "chunk-size=4,guidance=5",
        "--json",
        "--no-save",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["vs"]["order"] == ["A", "B", "A", "B"]
    assert doc["vs"]["overrides"] == "chunk-size=4,guidance=5.0"
    assert doc["vs"]["b"]["chunk_size"] == 4 and doc["vs"]["b_options"] == {"guidance": 5.0}
    # B = 4 means one keyframe for 4 frames: fewer keyframe forwards than A's two
    assert doc["vs"]["forwards"]["A"]["keyframes"] == 6 and doc["vs"]["forwards"]["B"]["keyframes"] == 3
    rows = {r["stage"]: r for r in doc["rows"]}
    assert "total" in rows and len(rows["total"]["ratios"]) == 2
    assert doc["value_field"] == "ratio_median"


@pytest.mark.parametrize("suite", ["edit", "memory"])
def test_a_clip_format_other_than_mp4_or_png_is_one_line_before_anything_runs(suite, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where a suite would make its temporary folder
    result = vedit("bench", suite, "--clip-format", "gif", "--no-save")
    assert result.exit_code == 4
    assert result.stderr.strip() == "vedit: error: --clip-format takes mp4 or png, got 'gif'"
    assert list(tmp_path.iterdir()) == []
