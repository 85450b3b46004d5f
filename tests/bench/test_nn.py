"""The ``nn`` bench suite (vedit_bench.nn)."""

from __future__ import annotations

import json


def test_nn_bench_times_every_backend_and_saves(tmp_path):
    from vedit_bench.nn import IN_GRAPH, run_nn_suite

    out = tmp_path / "nn.json"
    rows = run_nn_suite(seqs=[64], chunk_size=2, backends=None, device="cpu", dtype="fp32", repeats=2, save=str(out))
    names = {r["backend"] for r in rows}
    assert {"torch", IN_GRAPH} <= names
    for row in rows:
        assert row["queries"] == 128 and row["keys"] == 64 and row["dim"] == 1280
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"] and len(row["times_ms"]) == 2
        assert row["same_as_torch"] == 1.0  # Gaussian features: no near-ties at this size
    torch_row = next(r for r in rows if r["backend"] == "torch")
    assert torch_row["x_torch"] == 1.0
    saved = json.loads(out.read_text())
    assert saved["suite"] == "nn" and saved["chunk_size"] == 2 and len(saved["rows"]) == len(rows)
    assert "machine" in saved
