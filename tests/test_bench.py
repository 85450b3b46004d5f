"""``vedit bench``: the shared timing, statistics, FLOP counting, naming, ``--vs`` and ``compare``
machinery, and the ``edit`` and ``invert`` suites end to end on the tiny model (no timing asserted)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vedit.cli import create_app
from vedit.errors import ConfigError, InputError
from vedit_bench import _common
from vedit_bench._common import (
    Stats,
    alternate,
    count_flops,
    measure,
    parse_vs,
    results_name,
    results_path,
    vs_rows,
)
from vedit_bench.compare import compare_documents

TINY = ["--model", "tiny", "--size", "64x64", "--device", "cpu", "--dtype", "fp32"]


def vedit(*args):
    return CliRunner().invoke(create_app(), [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "200"})


@pytest.fixture(autouse=True)
def _results_here(tmp_path, monkeypatch):
    """Default results files go to a temporary folder, never into the checkout."""
    monkeypatch.setenv("VEDIT_BENCH_RESULTS", str(tmp_path / "results"))


# ------------------------------------------------------------------------------ statistics, timing


def test_stats_of_known_lists():
    odd = Stats.of([3.0, 1.0, 2.0])
    assert (odd.median, odd.min, odd.max) == (2.0, 1.0, 3.0)
    even = Stats.of([10, 1, 2, 3])
    assert (even.median, even.min, even.max) == (2.5, 1, 10)
    assert even.samples == [10, 1, 2, 3]
    assert Stats.of([4.0]).as_dict("s") == {"median_s": 4.0, "min_s": 4.0, "max_s": 4.0, "samples_s": [4.0]}
    assert Stats.of([1.0, 3.0]).scaled(1000).median == 2000.0
    with pytest.raises(ValueError):
        Stats.of([])


def test_measure_warms_up_then_times_each_repeat():
    calls = []
    stats = measure(lambda: calls.append(1), device="cpu", warmup=2, repeats=5)
    assert len(calls) == 7
    assert len(stats.samples) == 5
    assert 0 <= stats.min <= stats.median <= stats.max


# ------------------------------------------------------------------------------ FLOPs


@pytest.mark.parametrize("fake", [True, False])
def test_linear_layer_flops_are_2mnk(fake):
    m, k, n = 8, 32, 16
    layer = torch.nn.Linear(k, n)
    assert count_flops(layer, lambda: (torch.randn(m, k),), fake=fake) == 2 * m * n * k


def test_cpu_attention_is_counted():
    """The CPU's fused attention kernel is not in FlopCounterMode's table: vedit_bench adds it."""
    b, h, s, d = 2, 4, 16, 8
    attend = torch.nn.functional.scaled_dot_product_attention
    q = torch.randn(b, h, s, d)
    assert count_flops(attend, lambda: (q, q, q), fake=False) == 4 * b * h * s * s * d


def test_pass_flops_are_counted_once_and_scale_with_the_batch():
    from vedit.model.loading import load_model

    sd = load_model("tiny", device="cpu", dtype="fp32")
    one = _common.pass_flops(sd, "plain", 1, 8, 8)
    four = _common.pass_flops(sd, "plain", 4, 8, 8)
    assert one > 0 and four == 4 * one  # the plain pass is per image
    key = next(k for k in _common._FLOPS if k[4] == "plain" and k[5] == 4)
    _common._FLOPS[key] = 123  # a second call is answered from the cache
    assert _common.pass_flops(sd, "plain", 4, 8, 8) == 123


# ------------------------------------------------------------------------------ results files


def test_results_name_and_path():
    day = dt.date(2026, 11, 25)
    assert results_name("edit", "cpu", date=day, host="My Box.local") == "edit-my-box-local-cpu-2026-11-25.json"
    assert results_name("unet", torch.device("cpu"), date=day, host="n1") == "unet-n1-cpu-2026-11-25.json"


def test_results_path_never_overwrites(tmp_path):
    day = dt.date(2026, 11, 25)
    first = results_path("edit", "cpu", directory=tmp_path, date=day)
    assert first.parent == tmp_path and first.name.endswith("-cpu-2026-11-25.json")
    first.write_text("{}")
    second = results_path("edit", "cpu", directory=tmp_path, date=day)
    assert second.name == first.name.replace(".json", "-2.json")


def test_results_go_to_the_env_folder(tmp_path):
    assert _common.results_dir() == tmp_path / "results"
    assert _common.resolve_save("edit", "cpu", None, True) is None
    assert _common.resolve_save("edit", "cpu", "x.json", False) == "x.json"
    assert Path(_common.resolve_save("edit", "cpu", None, False)).parent == tmp_path / "results"


# ------------------------------------------------------------------------------ --vs


def test_alternate_runs_a_then_b_and_ratios_pair_by_pair():
    order = []
    times_a = iter([9.0, 2.0, 4.0, 1.0])  # first value is the warm-up
    times_b = iter([9.0, 1.0, 8.0, 3.0])

    def run_a():
        order.append("A")
        return {"stage": next(times_a)}

    def run_b():
        order.append("B")
        return {"stage": next(times_b)}

    pairing = alternate(run_a, run_b, pairs=3, warmup=1)
    assert order == ["A", "B", "A", "B", "A", "B", "A", "B"]
    assert pairing.order == ["A (warm-up)", "B (warm-up)", "A", "B", "A", "B", "A", "B"]
    (row,) = vs_rows(pairing, ["stage"])
    assert row["stage"] == "stage"
    assert row["ratios"] == [0.5, 2.0, 3.0]
    assert (row["ratio_median"], row["ratio_min"], row["ratio_max"]) == (2.0, 0.5, 3.0)
    assert (row["a_median_s"], row["b_median_s"]) == (2.0, 3.0)


def test_alternate_without_warmup_and_with_plain_seconds():
    order = []
    pairing = alternate(lambda: order.append("A") or 2.0, lambda: order.append("B") or 1.0, pairs=2, warmup=0)
    assert order == ["A", "B", "A", "B"]
    assert vs_rows(pairing)[0]["ratio_median"] == 0.5


def test_parse_vs_types_lists_and_errors():
    settings = {"engine": "auto", "frames": 8, "reuse_inversion": False, "size": "64x64"}
    assert parse_vs("engine=compile", settings) == {"engine": "compile"}
    assert parse_vs("engine=tensorrt,compile,frames=16", settings) == {"engine": "tensorrt,compile", "frames": 16}
    assert parse_vs("reuse-inversion=yes", settings) == {"reuse_inversion": True}
    assert parse_vs("guidance=5,nn-backend=faiss", settings) == {"guidance": 5.0, "nn_backend": "faiss"}  # RunConfig fields
    assert parse_vs(None, settings) == {}
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        parse_vs("bogus=1", settings)
    with pytest.raises(ConfigError, match="frames takes int"):
        parse_vs("frames=many", settings)
    with pytest.raises(ConfigError, match="^steps must be"):
        parse_vs("steps=0", {})
    with pytest.raises(ConfigError, match="unknown key 'guidance'"):
        parse_vs("guidance=5", settings, run_options=False)


# ------------------------------------------------------------------------------ compare


def _doc(suite, rows, keys=("stage",)):
    return {"format": "vedit-bench/1", "suite": suite, "header": {"settings": {"engine": "eager"}, "versions": {"torch": "1"}},
            "key_fields": list(keys), "value_field": "median_s", "rows": rows}


def test_compare_matches_rows_by_key_and_flags_the_rest(tmp_path):
    a = _doc("edit", [{"stage": "invert", "median_s": 2.0}, {"stage": "write", "median_s": 1.0}, {"stage": "nn", "median_s": 0.5}])
    b = _doc("edit", [{"stage": "write", "median_s": 0.25}, {"stage": "invert", "median_s": 3.0}, {"stage": "decode", "median_s": 1.0}])
    b["header"]["settings"]["engine"] = "compile"
    result = compare_documents(a, b)
    rows = {r["stage"]: r for r in result["rows"]}
    assert rows["invert"]["ratio"] == 1.5 and rows["write"]["ratio"] == 0.25
    assert (rows["invert"]["a"], rows["invert"]["b"]) == (2.0, 3.0)
    assert rows["nn"]["only_in"] == "A" and rows["nn"]["ratio"] is None
    assert rows["decode"]["only_in"] == "B" and rows["decode"]["a"] is None
    assert "settings.engine: eager → compile" in result["differences"]

    files = []
    for name, doc in (("a.json", a), ("b.json", b)):
        files.append(tmp_path / name)
        files[-1].write_text(json.dumps(doc))
    shown = vedit("bench", "compare", *files)
    assert shown.exit_code == 0, shown.output
    assert "1.5" in shown.stdout and "only in A" in shown.stdout and "only in B" in shown.stdout
    as_json = vedit("bench", "compare", *files, "--json")
    assert {r["stage"]: r["ratio"] for r in json.loads(as_json.stdout)["rows"]}["write"] == 0.25


def test_compare_refuses_other_suites_and_missing_files(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_doc("edit", [])))
    b.write_text(json.dumps(_doc("unet", [], keys=("pass", "engine", "batch"))))
    with pytest.raises(InputError, match="different suites"):
        compare_documents(json.loads(a.read_text()), json.loads(b.read_text()))
    missing = vedit("bench", "compare", a, tmp_path / "none.json")
    assert missing.exit_code == 2
    assert "no such results file" in missing.stderr


# ------------------------------------------------------------------------------ the suites, end to end


def test_bench_lists_its_commands():
    shown = vedit("bench", "--help")
    for command in ("edit", "invert", "unet", "nn", "calls", "memory", "work", "consistency", "quality", "checksums",
                    "compare"):
        assert command in shown.stdout


def test_bench_edit_writes_a_document_per_stage(tmp_path):
    out = tmp_path / "edit.json"
    result = vedit("bench", "edit", *TINY, "--frames", "4", "--steps", "2", "--inversion-steps", "2", "--chunk-size", "2",
                   "--repeats", "2", "--warmup", "0", "--save", out)  # fmt: skip
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
    # 4 frames, 2 steps, B = 2: inversion 4×2, keyframes 3·2×2, propagation 3·4×2
    assert doc["forwards"] == {"inversion": 8, "keyframes": 12, "propagation": 24}
    assert rows["total"]["forwards"] == 44 and rows["invert"]["forwards"] == 8
    assert rows["invert"]["tflops"] > 0 and rows["total"]["tflop"] > 0
    assert doc["gflop_per_image"]["inversion"] > 0


def test_bench_edit_json_on_stdout_and_no_save(tmp_path):
    result = vedit("bench", "edit", *TINY, "--frames", "2", "--steps", "1", "--inversion-steps", "1", "--repeats", "1",
                   "--warmup", "0", "--no-peak", "--json", "--no-save")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["suite"] == "edit" and doc["header"]["matmul_peak_tflops"] is None
    assert not (tmp_path / "results").exists()


def test_bench_invert_per_engine_and_batch_to_the_default_file(tmp_path):
    result = vedit("bench", "invert", *TINY, "--frames", "4", "--inversion-steps", "2", "--batch-size", "2,4",
                   "--engines", "eager", "--repeats", "2", "--warmup", "0", "--no-peak")  # fmt: skip
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
    result = vedit("bench", "invert", *TINY, "--frames", "2", "--inversion-steps", "1", "--batch-size", "2",
                   "--repeats", "2", "--warmup", "0", "--no-peak", "--vs", "batch-size=1", "--json", "--no-save")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["vs"]["order"] == ["A (warm-up)", "B (warm-up)", "A", "B", "A", "B"]  # one warm-up at least: the builds
    (row,) = doc["rows"]
    assert row["engine"] == "eager" and len(row["ratios"]) == 2
    assert row["ratio_min"] <= row["ratio_median"] <= row["ratio_max"]


def test_bench_vs_with_an_unknown_key_is_one_line():
    result = vedit("bench", "edit", *TINY, "--frames", "2", "--vs", "colour=red", "--no-save")
    assert result.exit_code == 4
    assert result.stderr.strip().startswith("vedit: error: --vs: unknown key 'colour'")
    assert len(result.stderr.strip().splitlines()) == 1


def test_bench_edit_vs_runs_both_configurations_alternately():
    result = vedit("bench", "edit", *TINY, "--frames", "4", "--steps", "1", "--inversion-steps", "1", "--chunk-size", "2",
                   "--repeats", "2", "--warmup", "0", "--no-peak", "--vs", "chunk-size=4,guidance=5", "--json", "--no-save")  # fmt: skip
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


def test_bench_quality_scores_every_variant_along_the_source_flow(tmp_path):
    from conftest import make_clip
    from vedit.quality.flow import flow_backend
    from vedit.quality.metrics import warp_error
    from vedit.io.reader import FrameReader
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
    from test_video_timing import gapped_clip
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


def test_bench_memory_gives_time_per_frame_with_bounded_keyframe_attention():
    result = vedit("bench", "memory", "--frames", "12", "--size", "64x64", "--steps", "1", "--chunk-size", "2",
                   "--max-joint-keyframes", "3", "--device", "cpu", "--dtype", "fp32", "--json", "--no-save")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["header"]["settings"]["max_joint_keyframes"] == 3
    (row,) = doc["rows"]
    assert row["frames"] == 12 and row["peak_rss_mb"] >= row["rss_after_load_mb"] > 0
    assert row["keyframe_ms_per_frame"] > 0 and row["ms_per_frame"] > row["denoise_ms_per_frame"] > 0
    # seconds is rounded to 1 ms, so the figure it gives is good to 1000 * 0.0005 / 12 ms per frame
    assert row["ms_per_frame"] == pytest.approx(1000 * row["seconds"] / 12, abs=0.05)


def test_bench_checksums_times_the_hashes_and_a_trajectory_read_without_and_with_its_checks():
    result = vedit("bench", "checksums", "--frames", "4", "--size", "64x64", "--steps", "2", "--dtypes", "fp16,fp32",
                   "--file-gb", "0.002", "--hash-mb", "1", "--repeats", "2", "--warmup", "0", "--json", "--no-save")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["suite"] == "checksums" and doc["key_fields"] == ["check", "case", "clock"]
    rows = {(r["check"], r["case"], r["clock"]): r for r in doc["rows"]}
    cases = [("hash", "crc32"), ("hash", "sha256"), ("hash", "blake2b"), ("trajectory", "fp16"), ("trajectory", "fp32"),
             ("engine file", "crc32"), ("engine file", "sha256")]  # fmt: skip
    assert set(rows) == {(*case, clock) for case in cases for clock in ("wall", "thread cpu")}
    for key in [("hash", "crc32", "wall"), ("engine file", "sha256", "thread cpu")]:
        row = rows[key]
        assert len(row["samples_s"]) == 2 and row["gb_per_s"] == pytest.approx(row["bytes"] / row["median_s"] / 1e9, rel=1e-2)
    assert rows["hash", "crc32", "wall"]["bytes"] == 2**20 and rows["engine file", "crc32", "wall"]["bytes"] == 2_000_000
    # clean and 2 steps (z_T is the first of them) of 4 frames of 4x8x8 latents, and a header
    fp16, fp32 = rows["trajectory", "fp16", "wall"], rows["trajectory", "fp32", "thread cpu"]
    assert 3 * 4 * 4 * 8 * 8 * 2 < fp16["bytes"] < fp32["bytes"] and len(fp32["ratios"]) == 2
    assert fp32["median_s"] == fp32["b_median_s"] and fp32["added_s"] == pytest.approx(fp32["b_median_s"] - fp32["a_median_s"])


def test_bench_checksums_refuses_an_unknown_dtype_in_one_line():
    result = vedit("bench", "checksums", "--dtypes", "fp8", "--no-save")
    assert result.exit_code == 4 and result.stderr.startswith("vedit: error: --dtypes takes fp16, bf16 and fp32")
