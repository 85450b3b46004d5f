"""Wall time of one job file (synthetic clips × prompts) run three ways, in one run: in this process
(serially, one model load), in a local pool of worker processes, and on a local Ray cluster.

Each way starts from an empty output folder and an empty inversion cache, so each inverts every
clip once and makes every edit: the same work, counted (edits, inversions computed, model loads,
UNet forwards). The time is the wall clock of :func:`vedit.batch.run.run_batch`, worker start-up and
model loading included; starting the Ray cluster itself is timed apart (``ray_start_s``). Outputs of
the pool and of Ray are compared with the serial ones byte for byte.

Every worker runs torch on ``cores / workers`` threads (Ray gives an actor of one CPU one thread),
and so does the serial run unless ``serial_threads`` says otherwise: the three ways then do the
same arithmetic (their outputs are byte-identical) and the times compare the scheduling alone.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from ._common import document, finish, header, say, show, synthetic_clip

MODES = ("serial", "pool", "ray")
PROMPTS = ("a watercolor painting", "an oil painting", "a pencil sketch", "a mosaic", "stained glass", "pixel art")


def _job_file(folder: Path, clips: list[Path], prompts: list[str], options: dict) -> Path:
    import json

    lines = ["[run]", *(f"{k} = {json.dumps(v)}" for k, v in options.items()), "", "[[job]]", 'name = "bench"',
             f"input = {json.dumps([str(c) for c in clips])}", f"prompts = {json.dumps(prompts)}",
             'output = "out/{clip}-{prompt_slug}.mp4"']  # fmt: skip
    path = folder / "jobs.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_batch_suite(
    *,
    clips: int = 2,
    prompts: int = 3,
    frames: int = 8,
    size: str = "64x64",
    steps: int = 4,
    model: str = "tiny",
    chunk_size: int = 4,
    workers: int = 2,
    modes: tuple[str, ...] = MODES,
    device: str = "cpu",
    serial_threads: int | None = None,
    save: str | None = None,
    json_out: bool = False,
) -> dict:
    import torch

    from vedit.batch.backends import _import_ray, _Ray, choose_backend
    from vedit.batch.plan import plan_batch
    from vedit.batch.run import run_batch
    from vedit.errors import ConfigError
    from vedit.io.frames import parse_size
    from vedit.model.device import resolve_device, resolve_dtype

    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ConfigError(f"--modes: unknown mode {unknown[0]!r} (known: {', '.join(MODES)})")
    if not 1 <= prompts <= len(PROMPTS):
        raise ConfigError(f"--prompts must be between 1 and {len(PROMPTS)}, got {prompts}")
    width, height = parse_size(size)
    per_worker = max(1, (os.cpu_count() or 1) // workers)
    serial_threads = serial_threads or per_worker
    options = {"model": model, "steps": steps, "inversion-steps": steps, "chunk-size": chunk_size, "device": device,
               "source-prompt": "a test pattern"}  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources = ("testsrc2", "mandelbrot", "smptebars", "rgbtestsrc", "life", "cellauto")
        made = []
        for i in range(clips):
            path = root / f"clip{i + 1}.mp4"
            if sources[i % len(sources)] == "testsrc2":
                synthetic_clip(path, frames, (width, height))
            else:
                _lavfi_clip(path, sources[i % len(sources)], frames, (width, height))
            made.append(path)
        serial_outputs: dict[str, bytes] = {}
        for mode in modes:
            folder = root / mode
            folder.mkdir()
            job = _job_file(folder, made, list(PROMPTS[:prompts]), {**options, "cache-dir": str(folder / "cache")})
            plan = plan_batch(job, force=True, device_here=mode != "ray")
            ray_start = None
            if mode == "ray":
                ray = _import_ray()  # one line, not a traceback, without the ray package
                mark = time.perf_counter()
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
                ray_start = time.perf_counter() - mark
            say(f"bench batch: {mode}, {len(plan.edits)} edits of {clips} clips")
            threads = torch.get_num_threads()
            if mode == "serial":
                torch.set_num_threads(serial_threads)
            try:
                mark = time.perf_counter()
                backend = (
                    _Ray("auto", workers)
                    if mode == "ray"
                    else choose_backend(plan, workers=1 if mode == "serial" else workers)
                )
                result = run_batch(plan, backend=backend, summary=folder / "summary.json")
                wall = time.perf_counter() - mark
            finally:
                torch.set_num_threads(threads)
                if mode == "ray":
                    ray.shutdown()
            outputs = {e.output.name: e.output.read_bytes() for e in plan.edits if e.status == "done"}
            if mode == "serial":
                serial_outputs = outputs
            computed = sum(1 for g in plan.groups if g.status == "computed") + sum(
                1 for e in plan.edits if e.result.get("inversion") == "computed")  # fmt: skip
            forwards = sum(sum((e.result.get("forwards") or {}).values()) for e in plan.edits)
            forwards += sum(sum((g.result.get("forwards") or {}).values()) for g in plan.groups)
            rows.append({
                "mode": mode, "workers": result.workers, "wall_s": round(wall, 3),
                "ray_start_s": None if ray_start is None else round(ray_start, 3),
                "edits": len(plan.edits), "done": len(outputs), "failed": len(result.failed),
                "inversions_computed": computed, "model_loads": result.model_loads, "unet_forwards": forwards,
                "same_as_serial": None if mode == "serial" or not serial_outputs else
                sum(outputs.get(k) == v for k, v in serial_outputs.items()),
                # Ray gives each worker (an actor of one CPU) OMP_NUM_THREADS=1
                "torch_threads": {"serial": serial_threads, "ray": 1}.get(mode, per_worker),
            })  # fmt: skip
    resolved = resolve_device(device)
    settings = {"model": model, "clips": clips, "prompts": prompts, "frames": frames, "size": size, "steps": steps,
                "chunk_size": chunk_size, "workers": workers, "modes": list(modes),
                "serial_threads": serial_threads}  # fmt: skip
    head = header("batch", device=resolved, dtype=resolve_dtype("auto", resolved), settings=settings)
    head["timing"] = {"clock": "wall clock of one run_batch per mode (worker start-up and model loads included)",
                      "statistic": "one measurement per mode"}  # fmt: skip
    doc = document("batch", head, rows, key_fields=("mode",), value_field="wall_s")
    return finish(doc, _render, json_out=json_out, save=save)


def _lavfi_clip(path: Path, source: str, frames: int, size: tuple[int, int]) -> Path:
    import subprocess

    from vedit.io.ffmpeg import find_ffmpeg

    cmd = [find_ffmpeg(), "-v", "error", "-y", "-f", "lavfi", "-i", f"{source}=size={size[0]}x{size[1]}:rate=24",
           "-frames:v", str(frames), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "10", str(path)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    return path


def _render(doc: dict) -> None:
    s, rows = doc["header"]["settings"], doc["rows"]
    serial = next((r["wall_s"] for r in rows if r["mode"] == "serial"), None)
    show(
        f"one job file: {s['clips']} clips x {s['prompts']} prompts, {s['model']} {s['size']}, {s['frames']} frames, "
        f"{s['steps']} steps",
        ["mode", "workers", "wall s", "vs serial", "Ray start s", "edits done", "failed", "inversions computed",
         "model loads", "UNet forwards", "outputs = serial's", "torch threads/worker"],
        [[r["mode"], r["workers"], r["wall_s"], f"{serial / r['wall_s']:.2f}x" if serial else "-", r["ray_start_s"],
          f"{r['done']}/{r['edits']}", r["failed"], r["inversions_computed"], r["model_loads"], r["unet_forwards"],
          "-" if r["same_as_serial"] is None else f"{r['same_as_serial']}/{r['edits']}", r["torch_threads"]]
         for r in rows],
    )  # fmt: skip


if __name__ == "__main__":  # python -m vedit_bench.batch
    run_batch_suite()
