"""The UNet passes of a TokenFlow step through every engine, side by side, at several batch sizes.

A *batch* is the frames of one call: the plain pass (inversion) runs that many latents; the
keyframe pass that many keyframes and the propagation pass a chunk of that many frames, each in
the three branches ``[source, uncond, cond]`` (3× the images). Pass by pass, each engine builds
the pass for every batch (the first call, reported apart as the build), then is timed
(``warmup`` untimed calls, ``repeats`` timed ones, synchronised; CUDA events on a GPU) and
dropped. Eager runs first and again last; its drift between the two says how steady the machine
was, and the ratios to eager use both.

FLOPs are counted, not estimated: ``FlopCounterMode`` over vedit's own pass module at the very
shape timed (once per pass, batch and size). Achieved TFLOP/s is that count over the median
time, and "of peak" divides it by what a large matrix product reaches on the same device in the
same run (8192² in the run's dtype on CUDA, 2048² on the CPU).
"""

from __future__ import annotations

import gc
import shutil
import statistics
import tempfile
import time
from typing import Any

import torch

from ._common import (
    PeakProbe,
    Stats,
    call_pass,
    document,
    finish,
    fmt,
    header,
    images_per_call,
    matmul_peak_tflops,
    measure,
    pass_flops,
    pass_inputs,
    percent,
    say,
    show,
    sync,
)

__all__ = ["run_unet_suite", "matmul_peak_tflops"]

PASSES = ("plain", "keyframe", "propagation")


@torch.no_grad()
def run_unet_suite(
    *,
    model: str,
    size: str,
    batches: list[int] | str = (1, 4, 8),
    repeats: int = 3,
    warmup: int = 1,
    device: str = "auto",
    dtype: str = "auto",
    engines: str | None = None,
    engine_cache: str | None = None,
    passes: str | list[str] = PASSES,
    peak: bool = True,
    json_out: bool = False,
    save: str | None = None,
) -> dict[str, Any]:
    from vedit import plugins
    from vedit.errors import ConfigError
    from vedit.io.frames import parse_size
    from vedit.model.device import dtype_name
    from vedit.model.loading import load_model
    from vedit.plugins.passes import registered_passes
    from vedit.runtime.engine_cache import EngineCache
    from vedit.runtime.runner import Passes

    if isinstance(batches, str):
        batches = [int(b) for b in batches.split(",") if b.strip()]
    batches = sorted(set(batches))
    pass_names = [p.strip() for p in passes.split(",")] if isinstance(passes, str) else list(passes)
    known = registered_passes()
    unknown_passes = [p for p in pass_names if p not in known]
    if unknown_passes or not pass_names:
        raise ConfigError(
            f"--passes: unknown pass {unknown_passes[0] if unknown_passes else ''!r} ({', '.join(known)})"
        )
    if not batches or min(batches) < 1:
        raise ConfigError("--batches: give one or more frame counts of 1 or more, e.g. 1,4,8")
    if repeats < 1:
        raise ConfigError("--repeats must be 1 or more")
    width, height = parse_size(size)
    say(f"bench unet: loading {model}")
    sd = load_model(model, device=device, dtype=dtype)
    h, w = height // 8, width // 8
    registered = plugins.registered("engine")
    names = [n.strip() for n in engines.split(",") if n.strip()] if engines else sorted(registered)
    names = ["eager"] + [n for n in names if n != "eager"]
    skipped = {
        n: registered[n].unavailable_reason() for n in names if n in registered and registered[n].unavailable_reason()
    }
    skipped.update({n: "no such engine" for n in names if n not in registered})
    names = [n for n in names if n not in skipped]
    cache_root = engine_cache or tempfile.mkdtemp(prefix="vedit-bench-engines-")
    notes: list[str] = []
    cache = EngineCache(cache_root, message=notes.append)
    layers = {"conv_layers": sd.family.conv_layers, "qk_layers": sd.family.qk_layers}

    # Inputs (records of a real keyframe pass for the propagation pass) and the counted FLOPs.
    generator = torch.Generator().manual_seed(0)
    embeds = sd.encode_prompt(["a photo", "", "a painting"])
    with Passes(sd, [plugins.get("engine", "eager")], **layers) as eager:
        inputs = {
            (p, b): pass_inputs(eager, p, b, h, w, embeds=embeds, generator=generator)
            for p in pass_names
            for b in batches
        }
    say("bench unet: counting FLOPs")
    flops = {(p, b): pass_flops(sd, p, b, h, w, notes=notes, **layers) for p in pass_names for b in batches}

    # One UNet takes one set of method hooks at a time, and a compiled pass may hold its own copy
    # of the weights (a frozen TorchScript module, an ONNX Runtime session), so each engine's
    # pass is built, timed and dropped before the next. Per pass, eager is measured first and
    # again last.
    probe = PeakProbe(peak)
    probe.probe(sd.device, sd.dtype)
    built: dict[tuple[str, str, int], float] = {}
    failed: dict[tuple[str, str], str] = {}
    samples: dict[tuple[str, str, int], list[float]] = {}
    eager_runs: dict[tuple[str, int], list[Stats]] = {}
    order = names + (["eager"] if len(names) > 1 else [])
    for pass_name in pass_names:
        for name in order:
            if (name, pass_name) in failed:
                continue
            say(f"bench unet: {pass_name} pass, {name}")
            with Passes(sd, [plugins.get("engine", name)], strict=True, cache=cache, message=notes.append,
                        batches={pass_name: [images_per_call(pass_name, b) for b in batches]},
                        **layers) as runner:  # fmt: skip
                for batch in batches:
                    args = inputs[(pass_name, batch)]
                    try:
                        start = time.perf_counter()
                        call_pass(runner, pass_name, args)
                        sync(sd.device)
                        built.setdefault((name, pass_name, batch), time.perf_counter() - start)
                        call_pass(runner, pass_name, args)  # the build's own first result is answered from memory
                    except Exception as error:  # an engine that cannot build here is reported, not fatal
                        text = str(error).strip().splitlines()
                        failed[(name, pass_name)] = text[0] if text else type(error).__name__
                        break
                    stats = measure(
                        lambda a=args, p=pass_name: call_pass(runner, p, a),
                        device=sd.device,
                        warmup=warmup,
                        repeats=repeats,
                    )
                    samples.setdefault((name, pass_name, batch), []).extend(stats.samples)
                    if name == "eager":
                        eager_runs.setdefault((pass_name, batch), []).append(stats)
            gc.collect()
    if engine_cache is None:  # a temporary cache, made so that every build was timed: gone now
        shutil.rmtree(cache_root, ignore_errors=True)

    drift = {
        f"{p}/{b}": round(runs[-1].median / runs[0].median, 3)
        for (p, b), runs in eager_runs.items() if len(runs) > 1
    }  # fmt: skip
    probe.probe(sd.device, sd.dtype)
    peak_tflops = probe.value
    rows = []
    for pass_name in pass_names:
        for batch in batches:
            eager_key = ("eager", pass_name, batch)
            if eager_key not in samples:
                continue
            eager_median = statistics.median(samples[eager_key])
            for name in names:
                key = (name, pass_name, batch)
                if key not in samples:
                    continue
                stats = Stats.of(samples[key])
                images = images_per_call(pass_name, batch)
                count = flops[(pass_name, batch)]
                tflops = count / stats.median / 1e12 if count else None
                rows.append({
                    "pass": pass_name, "engine": name, "batch": batch, "images": images,
                    **stats.as_dict("s"), "ms": round(stats.median * 1e3, 3),
                    "vs_eager": round(eager_median / stats.median, 4),
                    "images_per_s": round(images / stats.median, 3),
                    "gflop_per_image": round(count / images / 1e9, 3) if count else None,
                    "tflop_per_call": round(count / 1e12, 5) if count else None,
                    "tflops": round(tflops, 4) if tflops is not None else None,
                    "of_peak": round(tflops / peak_tflops, 4) if tflops is not None and peak_tflops else None,
                    "build_s": round(built[key], 2),
                })  # fmt: skip
    not_run = {**skipped, **{f"{e} ({p})": why for (e, p), why in failed.items()}}
    settings = {
        "model": model, "size": f"{width}x{height}", "batches": batches, "passes": pass_names, "engines": names,
        "engine_cache": engine_cache or "(temporary)", "injection_layers": "pnp",
    }  # fmt: skip
    head = header(
        "unet", device=sd.device, dtype=sd.dtype, settings=settings, warmup=warmup, repeats=repeats, matmul_peak=probe
    )
    doc = document("unet", head, rows, key_fields=("pass", "engine", "batch"), eager_drift=drift, not_run=not_run,
                   notes=notes, dtype=dtype_name(sd.dtype))  # fmt: skip
    return finish(doc, _render, json_out=json_out, save=save)


def _render(doc: dict[str, Any]) -> None:
    drift = ", ".join(f"{k} {v:.3f}" for k, v in doc.get("eager_drift", {}).items()) or "-"
    show(
        f"UNet passes by engine and batch (frames per call); eager drift, last/first: {drift}",
        ["pass", "engine", "batch", "images", "ms median (min–max)", "× eager", "images/s", "GFLOP/image",
         "TFLOP/s", "of peak", "build s"],
        [[r["pass"], r["engine"], r["batch"], r["images"],
          f"{r['median_s'] * 1e3:.1f} ({r['min_s'] * 1e3:.1f}–{r['max_s'] * 1e3:.1f})",
          f"{r['vs_eager']:.2f}", fmt(r["images_per_s"], 4), fmt(r["gflop_per_image"]), fmt(r["tflops"]),
          percent(r["of_peak"]), r["build_s"]] for r in doc["rows"]],
    )  # fmt: skip
    for name, reason in doc.get("not_run", {}).items():
        print(f"engine {name}: not measured ({reason})")
