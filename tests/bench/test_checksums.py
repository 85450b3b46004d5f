"""``vedit bench checksums``: the hashes, and a trajectory read without and with its checks."""

from __future__ import annotations

import json

import pytest

from helpers.cli import vedit


def test_bench_checksums_times_the_hashes_and_a_trajectory_read_without_and_with_its_checks():
    result = vedit(
        "bench",
        "checksums",
        "--frames",
        "4",
        "--size",
        "64x64",
        "--steps",
        "2",
        "--dtypes",
        "fp16,fp32",
        "--file-gb",
        "0.002",
        "--hash-mb",
        "1",
        "--repeats",
        "2",
        "--warmup",
        "0",
        "--json",
        "--no-save",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["suite"] == "checksums" and doc["key_fields"] == ["check", "case", "clock"]
    rows = {(r["check"], r["case"], r["clock"]): r for r in doc["rows"]}
    cases = [
        ("hash", "crc32"),
        ("hash", "sha256"),
        ("hash", "blake2b"),
        ("trajectory", "fp16"),
        ("trajectory", "fp32"),
        ("engine file", "crc32"),
        ("engine file", "sha256"),
    ]
    assert set(rows) == {(*case, clock) for case in cases for clock in ("wall", "thread cpu")}
    for key in [("hash", "crc32", "wall"), ("engine file", "sha256", "thread cpu")]:
        row = rows[key]
        assert len(row["samples_s"]) == 2 and row["gb_per_s"] == pytest.approx(
            row["bytes"] / row["median_s"] / 1e9, rel=1e-2
        )
    assert (
        rows["hash", "crc32", "wall"]["bytes"] == 2**20 and rows["engine file", "crc32", "wall"]["bytes"] == 2_000_000
    )
    # clean and 2 steps (z_T is the first of them) of 4 frames of 4x8x8 latents, and a header
    fp16, fp32 = rows["trajectory", "fp16", "wall"], rows["trajectory", "fp32", "thread cpu"]
    assert 3 * 4 * 4 * 8 * 8 * 2 < fp16["bytes"] < fp32["bytes"] and len(fp32["ratios"]) == 2
    assert fp32["median_s"] == fp32["b_median_s"] and fp32["added_s"] == pytest.approx(
        fp32["b_median_s"] - fp32["a_median_s"]
    )


def test_bench_checksums_refuses_an_unknown_dtype_in_one_line():
    result = vedit("bench", "checksums", "--dtypes", "fp8", "--no-save")
    assert result.exit_code == 4 and result.stderr.startswith("vedit: error: --dtypes takes fp16, bf16 and fp32")
