"""The UNet passes of a TokenFlow step through every engine, side by side, in one run.

Pass by pass, each engine builds the pass (the build time is reported apart), then calls it
``repeats`` times after a warm-up call, and drops it. Eager runs first and again last, so the
ratios to eager use both and the drift between them shows how steady the machine was. The
figures: median ms per call, the ratio to eager, images per second, an approximate TFLOP/s for
the SD-sized UNets, and that as a fraction of the peak a large matrix product reaches on the
same device in the same run.
"""

from __future__ import annotations

import gc
import shutil
import statistics
import sys
import tempfile
import time

import torch

from ._common import machine, save_json, show

TFLOP_PER_IMAGE_512 = 0.80  # SD 1.5 / 2.1 UNet forward at 64×64 latents


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """What a large square matrix product reaches here: the practical peak the passes are held to."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
        if device.type != "cuda" or count % 10 == 0:
            _sync(device)
    _sync(device)
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e12


def _inputs(sd, frames: int, chunks: int, h: int, w: int, passes):
    """Inputs of the plain (3B batch), keyframe (3K) and propagation (3B) passes, records real."""
    from vedit.passes import select_keyframes
    from vedit.unet import COND, SOURCE, UNCOND
    from vedit_plugins.tokenflow import blend_weights

    device, dtype = sd.device, sd.dtype
    gen = torch.Generator().manual_seed(0)
    embeds = dict(zip((SOURCE, UNCOND, COND), sd.encode_prompt(["a photo", "", "a painting"]).split(1)))

    def text(n: int) -> torch.Tensor:
        return torch.cat([embeds[b].expand(n, -1, -1) for b in (SOURCE, UNCOND, COND)]).contiguous()

    def latents(n: int) -> torch.Tensor:
        return torch.randn(n, 4, h, w, generator=gen).to(device, dtype)

    t = torch.tensor(501, device=device)
    flags = torch.tensor([True, True], device=device)
    keyframe = (latents(3 * chunks), t, text(chunks), flags)
    _, records = passes.keyframe(*keyframe)
    i = 1 if chunks > 1 else 0
    slots = torch.tensor([i, max(i - 1, 0)], device=device)
    chunk = range(i * frames, (i + 1) * frames)
    weights = (blend_weights(chunk, i, frames) if i else torch.ones(frames)).to(device)
    return {
        "plain": (latents(3 * frames), t, text(frames)),
        "keyframe": keyframe,
        "propagation": (latents(3 * frames), t, text(frames), flags, weights, *select_keyframes(records, slots)),
    }


def _call(passes, name: str, args):
    if name == "plain":
        return passes.plain(*args)
    if name == "keyframe":
        return passes.keyframe(*args)
    return passes.propagate(*args[:5], args[5:])


@torch.no_grad()
def run_unet_suite(
    *, model, size, frames, chunks, repeats, device, dtype, save, engines=None, engine_cache=None
) -> list[dict]:
    from vedit import plugins
    from vedit.engine import EngineCache, Passes
    from vedit.models import load_model
    from vedit.video import parse_size
    from vedit_plugins.pnp import CONV_LAYERS, QK_LAYERS

    width, height = parse_size(size)
    sd = load_model(model, device=device, dtype=dtype)
    h, w = height // 8, width // 8
    registered = plugins.registered("engine")
    names = [n.strip() for n in engines.split(",")] if engines else sorted(registered)
    names = ["eager"] + [n for n in names if n != "eager"]
    skipped = {n: registered[n].unavailable_reason() for n in names if n in registered and registered[n].unavailable_reason()}
    unknown = [n for n in names if n not in registered]
    names = [n for n in names if n not in skipped and n not in unknown]
    cache_root = engine_cache or tempfile.mkdtemp(prefix="vedit-bench-engines-")
    notes: list[str] = []
    cache = EngineCache(cache_root, message=notes.append)

    # One UNet takes one set of method hooks at a time, and a compiled pass may hold its own copy
    # of the weights (a frozen TorchScript module, an ONNX Runtime session), so each engine's
    # pass is built, timed and dropped before the next. Per pass, eager is measured first and
    # again last; the ratios use both, and the drift between them says how steady the machine was.
    with Passes(sd, [plugins.get("engine", "eager")], conv_layers=CONV_LAYERS, qk_layers=QK_LAYERS) as passes:
        inputs = _inputs(sd, frames, chunks, h, w, passes)
    built: dict[tuple[str, str], float] = {}
    failed: dict[str, str] = {}
    samples: dict[tuple[str, str], list[float]] = {}
    drift: dict[str, float] = {}
    order = names + (["eager"] if len(names) > 1 else [])
    for pass_name, args in inputs.items():
        for position, name in enumerate(order):
            if name in failed:
                continue
            print(f"bench unet: {pass_name} pass, {name}", file=sys.stderr, flush=True)
            with Passes(sd, [plugins.get("engine", name)], strict=True, conv_layers=CONV_LAYERS, qk_layers=QK_LAYERS,
                        cache=cache, message=notes.append) as passes:  # fmt: skip
                try:
                    start = time.perf_counter()
                    _call(passes, pass_name, args)
                    _sync(sd.device)
                    built.setdefault((name, pass_name), time.perf_counter() - start)
                except Exception as error:  # an engine that cannot build here is reported, not fatal
                    failed[name] = str(error).splitlines()[0] if str(error) else type(error).__name__
                    continue
                times = samples.setdefault((name, pass_name), [])
                for round_index in range(repeats + 1):  # call 0 warms up and is not counted
                    _sync(sd.device)
                    start = time.perf_counter()
                    _call(passes, pass_name, args)
                    _sync(sd.device)
                    if round_index:
                        times.append(time.perf_counter() - start)
            if name == "eager" and position:
                first, last = times[:repeats], times[repeats:]
                drift[pass_name] = round(statistics.median(last) / statistics.median(first), 3)
            gc.collect()
    runs = [n for n in names if n not in failed]
    if engine_cache is None:  # a temporary cache, made so that every build was timed: gone now
        shutil.rmtree(cache_root, ignore_errors=True)

    peak = matmul_peak_tflops(sd.device, sd.dtype)
    images = {"plain": 3 * frames, "keyframe": 3 * chunks, "propagation": 3 * frames}
    sd_sized = model != "tiny"  # the FLOP figure holds for the SD 1.5 / 2.1 UNet only
    rows = []
    for pass_name in inputs:
        eager_ms = statistics.median(samples[("eager", pass_name)]) * 1e3
        for name in runs:
            ms = statistics.median(samples[(name, pass_name)]) * 1e3
            tflops = TFLOP_PER_IMAGE_512 * (h * w) / (64 * 64) * images[pass_name] / (ms / 1e3) if sd_sized else None
            rows.append({
                "pass": pass_name, "engine": name, "images": images[pass_name], "ms": round(ms, 2),
                "vs_eager": round(eager_ms / ms, 3), "images_per_s": round(images[pass_name] / (ms / 1e3), 2),
                "approx_tflops": round(tflops, 3) if tflops else None,
                "of_peak": round(tflops / peak, 4) if tflops else None,
                "build_s": round(built[(name, pass_name)], 1),
            })  # fmt: skip
    show(
        f"UNet passes by engine: {model} {size} {sd.dtype} on {sd.device}, B={frames}, K={chunks}, "
        f"median of {repeats} calls; eager before and after the others (drift, last/first: "
        f"{', '.join(f'{k} {v:.3f}' for k, v in drift.items()) or '-'}); matmul peak here {peak:.2f} TFLOP/s",
        ["pass", "engine", "images", "ms", "× eager", "images/s", "≈TFLOP/s", "of peak", "build s"],
        [[r["pass"], r["engine"], r["images"], r["ms"], f"{r['vs_eager']:.2f}", r["images_per_s"],
          r["approx_tflops"] if r["approx_tflops"] is not None else "-",
          f"{100 * r['of_peak']:.1f}%" if r["of_peak"] is not None else "-", r["build_s"]] for r in rows],
    )  # fmt: skip
    for name, reason in {**skipped, **failed}.items():
        print(f"engine {name}: not measured ({reason})")
    for name in unknown:
        print(f"engine {name}: not measured (no such engine)")
    save_json(save, {"suite": "unet", "model": model, "size": size, "frames": frames, "chunks": chunks,
                     "device": str(sd.device), "dtype": str(sd.dtype), "repeats": repeats, "matmul_peak_tflops": peak, "eager_drift": drift,
                     "machine": machine(), "skipped": {**skipped, **failed}, "rows": rows})  # fmt: skip
    return rows
