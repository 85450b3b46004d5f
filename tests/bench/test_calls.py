"""`vedit bench calls` (vedit_bench.calls): both paths timed with the allocator settings off and on."""

from __future__ import annotations

import json

import pytest

from vedit.runtime import allocator as runtime

GLIBC = runtime.glibc_version()


@pytest.mark.slow
def test_calls_suite_measures_both_paths_with_the_fix_off_and_on(tmp_path, monkeypatch):
    from vedit_bench.calls import run_calls_suite

    for name in (*runtime.USER_MALLOC_VARS, runtime.ENV):
        monkeypatch.delenv(name, raising=False)
    # the tiny UNet's calls take milliseconds on one thread, and can take seconds on a busy second core
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    save = tmp_path / "calls.json"
    rows = run_calls_suite(model="tiny", size="64x64", batch=2, repeats=1, device="cpu", dtype="fp32", save=str(save))
    assert [(r["allocator"], r["path"]) for r in rows] == [
        ("system", "plain"), ("system", "vedit"), ("auto", "plain"), ("auto", "vedit")]  # fmt: skip
    for row in rows:
        assert row["median_ms"] > 0 and row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        assert len(row["ms"]) == 1 and all(ms > 0 for ms in row["ms"])
        assert isinstance(row["faults_per_call"], int) and row["faults_per_call"] >= 0
        assert row["same_output"] is True and row["max_abs_diff"] == 0.0  # the same ε, bit for bit
        assert row["vs_plain"] > 0 and row["vs_system"] > 0
    by = {(r["allocator"], r["path"]): r for r in rows}
    assert by[("system", "plain")]["vs_plain"] == 1.0 and by[("system", "plain")]["vs_system"] == 1.0
    assert "left as is" in by[("system", "plain")]["settings"]
    if GLIBC:
        assert "M_MMAP_MAX=0" in by[("auto", "plain")]["settings"]
    saved = json.loads(save.read_text())
    assert saved["suite"] == "calls" and len(saved["rows"]) == 4
    assert saved["allocators"]["system"]["applied"] == {}
