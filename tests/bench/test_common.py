"""The shared machinery of ``vedit bench`` (``vedit_bench._common``): timing, statistics, FLOP counting, results
files and their names, and ``--vs``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import torch

from vedit.errors import ConfigError
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


def test_bench_makes_a_passs_inputs_with_its_spec_and_counts_a_plugins_pass_too():
    """The benchmarks' inputs are the pass's own example (as ``vedit engines build`` makes them), for a
    built-in pass and for a pass a plugin registers."""
    from helpers.passes import register_gain_pass
    from vedit import plugins
    from vedit.model.loading import load_model
    from vedit.runtime.runner import Passes

    register_gain_pass()
    sd = load_model("tiny", device="cpu", dtype="fp32")
    with Passes(sd, [plugins.get("engine", "eager")]) as passes:
        for name in ("gain", "propagation"):
            made = _common.pass_inputs(passes, name, 3, 8, 8, generator=torch.Generator().manual_seed(2))
            spec = passes.example(name, 3, (8, 8), generator=torch.Generator().manual_seed(2))
            assert len(made) == len(spec) and all(torch.equal(a, b) for a, b in zip(made, spec)), name
        assert made[0].shape == (9, 4, 8, 8) and made[4].shape == (3,)  # a chunk of 3 frames, its blend weights
        assert _common.images_per_call("gain", 3) == 9 and _common.images_per_call("plain", 3) == 3
    one, two = _common.pass_flops(sd, "gain", 1, 8, 8), _common.pass_flops(sd, "gain", 2, 8, 8)
    assert one > 0 and two == 2 * one  # per-frame attention: linear in the frames


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
    assert parse_vs("guidance=5,nn-backend=faiss", settings) == {
        "guidance": 5.0,
        "nn_backend": "faiss",
    }  # RunConfig fields
    assert parse_vs(None, settings) == {}
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        parse_vs("bogus=1", settings)
    with pytest.raises(ConfigError, match="frames takes int"):
        parse_vs("frames=many", settings)
    with pytest.raises(ConfigError, match="^steps must be"):
        parse_vs("steps=0", {})
    with pytest.raises(ConfigError, match="unknown key 'guidance'"):
        parse_vs("guidance=5", settings, run_options=False)


def test_a_synthetic_clip_without_a_suffix_is_a_folder_of_moving_png_frames_drawn_without_ffmpeg(tmp_path):
    import numpy as np
    from PIL import Image

    from vedit_bench._common import clip_path, synthetic_clip

    folder = synthetic_clip(clip_path(tmp_path, "clip", "png"), 3, (48, 32))
    again = synthetic_clip(clip_path(tmp_path, "again", "png"), 3, (48, 32))
    assert folder == tmp_path / "clip" and clip_path(tmp_path, "clip", "mp4") == tmp_path / "clip.mp4"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["00000.png", "00001.png", "00002.png"]
    frames = [np.asarray(Image.open(folder / name)) for name in names]
    assert all(frame.shape == (32, 48, 3) for frame in frames)
    assert not np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[1], frames[2])  # it moves
    assert all(np.array_equal(np.asarray(Image.open(again / name)), frame) for name, frame in zip(names, frames))


def test_the_device_peak_is_cudas_alone():
    from vedit_bench._common import device_peak_mb, start_device_peak

    assert start_device_peak("cpu") is None and device_peak_mb("cpu") is None
