"""``vedit bench batch``: one job file timed, and its work counted."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow  # a whole suite run: 30 s and more
def test_bench_batch_times_one_job_file_and_counts_its_work(tmp_path):
    from vedit_bench.batch import run_batch_suite

    doc = run_batch_suite(clips=2, prompts=2, frames=4, size="32x32", steps=1, modes=("serial",), json_out=True,
                          save=str(tmp_path / "batch.json"))  # fmt: skip
    (row,) = doc["rows"]
    assert row["mode"] == "serial" and row["done"] == row["edits"] == 4 and row["failed"] == 0
    assert row["inversions_computed"] == 2 and row["model_loads"] == 1
    assert row["unet_forwards"] == 2 * 4 + 4 * (3 + 12)  # two inversions of 4 frames, four edits of 3 + 12
    assert json.loads((tmp_path / "batch.json").read_text())["suite"] == "batch"
