"""What one UNet call costs: a plain diffusers forward beside vedit's plain pass, allocator fix off and on.

Two fresh processes, one with ``VEDIT_ALLOCATOR=system`` (glibc as it comes) and one with the
default (``auto``, see :mod:`vedit.runtime.allocator`). Each loads the model once and, on the same weights
and the same inputs, calls two things in alternation (the order swapped every round):

- *plain*: ``unet(latents, t, encoder_hidden_states=text)`` on a second ``UNet2DConditionModel``
  that shares every weight tensor with vedit's, with diffusers' own attention processors;
- *vedit*: ``Passes.plain`` through the eager engine, as a run's inversion and per-frame edits
  call it (the method's attention processors installed, ``PlainPass`` and its call context).

Both run under ``torch.inference_mode`` (the eager engine's own mode). Two warm-up calls of each
are not counted. Per call: wall time, and the minor page faults of the whole process
(``getrusage``). The table gives median (min–max), the median faults per call, vedit's median
over plain's, each path's median over its own with the allocator left as is, and whether the two
paths' outputs are bit for bit the same.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from ._common import machine, save_json, show

MODES = ("system", "auto")  # VEDIT_ALLOCATOR of the two processes, in the order they run
PATHS = ("plain", "vedit")
WARMUP = 2


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def probe(args: argparse.Namespace) -> dict:
    """One process's measurement: both paths, alternating, on the same weights and inputs."""
    import torch
    from diffusers import UNet2DConditionModel

    from vedit import plugins
    from vedit.io.frames import parse_size
    from vedit.model.builders import PROMPT_LENGTH
    from vedit.model.loading import load_model
    from vedit.runtime import allocator as runtime
    from vedit.runtime.runner import Passes

    width, height = parse_size(args.size)
    sd = load_model(args.model, device=args.device, dtype=args.dtype)
    device = sd.device

    # The plain UNet: diffusers' own module tree and processors, on vedit's very weight tensors.
    with torch.device("meta"):
        plain_unet = UNet2DConditionModel.from_config(sd.unet.config)
    plain_unet.load_state_dict(sd.unet.state_dict(), assign=True)
    plain_unet.eval().requires_grad_(False)
    shared = all(a.data_ptr() == b.data_ptr() for a, b in zip(plain_unet.parameters(), sd.unet.parameters()))
    if not shared:
        raise RuntimeError("the plain UNet does not share vedit's weights")

    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(args.batch, 4, height // 8, width // 8, generator=gen).to(device, sd.dtype)
    width_of_text = sd.unet.config.cross_attention_dim
    text = torch.randn(args.batch, PROMPT_LENGTH, width_of_text, generator=gen).to(device, sd.dtype)
    t = torch.tensor(501, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def plain():
        with torch.inference_mode():
            return plain_unet(latents, t, encoder_hidden_states=text).sample

    samples = {p: {"seconds": [], "faults": []} for p in PATHS}
    outputs = {}
    with Passes(sd, [plugins.get("engine", "eager")]) as passes:
        calls = {"plain": plain, "vedit": lambda: passes.plain(latents, t, text)}
        for round_index in range(WARMUP + args.repeats):
            order = PATHS if round_index % 2 == 0 else PATHS[::-1]
            for path in order:
                sync()
                faults, start = _faults(), time.perf_counter()
                out = calls[path]()
                sync()
                seconds, faults = time.perf_counter() - start, _faults() - faults
                outputs[path] = out
                if round_index >= WARMUP:
                    samples[path]["seconds"].append(seconds)
                    samples[path]["faults"].append(faults)
    a, b = outputs["plain"], outputs["vedit"]
    return {
        "allocator": runtime.describe(),
        "allocator_settings": runtime.allocator_settings(),
        "device": str(device),
        "dtype": str(sd.dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "samples": samples,
        "same_output": bool(torch.equal(a, b)),
        "max_abs_diff": float((a.float() - b.float()).abs().max()),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _run_probe(mode: str, *, model, size, batch, repeats, device, dtype) -> dict:
    cmd = [
        sys.executable, "-m", "vedit_bench.calls", "--model", model, "--size", size, "--batch", str(batch),
        "--repeats", str(repeats), "--device", device, "--dtype", dtype,
    ]  # fmt: skip
    print(f"bench calls: VEDIT_ALLOCATOR={mode}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env={**os.environ, "VEDIT_ALLOCATOR": mode})
    if done.returncode != 0:
        raise SystemExit(f"bench calls: the VEDIT_ALLOCATOR={mode} process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_calls_suite(
    *, model: str, size: str, batch: int, repeats: int, device: str, dtype: str, save: str | None
) -> list[dict]:
    """Both paths' per-call time and page faults with ``VEDIT_ALLOCATOR=system`` and ``auto``,
    one fresh process each; returns the table's rows (see the module's docstring)."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    results = {mode: _run_probe(mode, model=model, size=size, batch=batch, repeats=repeats, device=device, dtype=dtype)
               for mode in MODES}  # fmt: skip
    median = {(m, p): statistics.median(results[m]["samples"][p]["seconds"]) for m in MODES for p in PATHS}
    rows = []
    for mode in MODES:
        result = results[mode]
        for path in PATHS:
            seconds, faults = result["samples"][path]["seconds"], result["samples"][path]["faults"]
            rows.append({
                "allocator": mode, "path": path,
                "median_ms": round(median[(mode, path)] * 1e3, 1),
                "min_ms": round(min(seconds) * 1e3, 1), "max_ms": round(max(seconds) * 1e3, 1),
                "faults_per_call": int(statistics.median(faults)),
                "vs_plain": round(median[(mode, path)] / median[(mode, "plain")], 3),
                "vs_system": round(median[(mode, path)] / median[("system", path)], 3),
                "same_output": result["same_output"], "max_abs_diff": result["max_abs_diff"],
                "peak_rss_mb": result["peak_rss_mb"], "settings": result["allocator"],
                "ms": [round(s * 1e3, 1) for s in seconds], "faults": faults,
            })  # fmt: skip
    first = results[MODES[0]]
    show(
        f"UNet call: {model} {size} batch {batch} {first['dtype']} on {first['device']} "
        f"({first['torch_threads']} threads), {repeats} calls each after {WARMUP} warm-up, plain and vedit alternating",
        ["VEDIT_ALLOCATOR", "path", "median ms (min–max)", "faults/call", "vedit/plain", "vs system", "same output"],
        [[r["allocator"], r["path"], f"{r['median_ms']} ({r['min_ms']}–{r['max_ms']})", r["faults_per_call"],
          f"{r['vs_plain']:.3f}", f"{r['vs_system']:.3f}",
          "yes" if r["same_output"] else f"no ({r['max_abs_diff']:.3g})"]
         for r in rows],
    )  # fmt: skip
    for mode in MODES:
        print(f"VEDIT_ALLOCATOR={mode}: {results[mode]['allocator']}")
    save_json(save, {"suite": "calls", "model": model, "size": size, "batch": batch, "repeats": repeats,
                     "warmup": WARMUP, "device": first["device"], "dtype": first["dtype"], "machine": machine(),
                     "allocators": {m: results[m]["allocator_settings"] for m in MODES}, "rows": rows})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="One process of `vedit bench calls` (prints one JSON line).")
    parser.add_argument("--model", default="random:sd21")
    parser.add_argument("--size", default="128x128")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)
    from vedit.runtime.allocator import configure_allocator

    configure_allocator()  # as vedit's command line does, before the model loads: $VEDIT_ALLOCATOR decides
    print(json.dumps(probe(args)))


if __name__ == "__main__":
    main()
