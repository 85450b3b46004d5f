"""Peak memory of whole edits at several frame counts, each in a fresh process.

On CUDA the figure is ``torch.cuda.max_memory_allocated`` during the edit (after the model is
loaded); on the CPU it is the process's peak resident set, with the peak after loading the model
given beside it so the edit's own share can be read off.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from ._common import (
    clip_format_checked,
    clip_path,
    device_peak_mb,
    document,
    finish,
    header,
    say,
    show,
    start_device_peak,
    synthetic_clip,
)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def probe(args: argparse.Namespace) -> dict:
    """One measurement, in this process."""

    from vedit.io.frames import parse_size
    from vedit.model.loading import load_model
    from vedit.pipeline.edit import edit

    size = parse_size(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        clip = synthetic_clip(clip_path(Path(tmp), "clip", args.clip_format), args.frames, size)
        sd = load_model(args.model, device=args.device, dtype=args.dtype)
        after_load = _peak_rss_mb()
        weights_mb = start_device_peak(sd.device)
        result = edit(
            clip,
            clip_path(Path(tmp), "out", args.clip_format),
            sd=sd,
            prompt="a painting",
            model=args.model,
            size=args.size,
            steps=args.steps,
            inversion_steps=args.steps,
            editor=args.editor,
            propagator=args.propagator,
            chunk_size=args.chunk_size,
            device=args.device,
            dtype=args.dtype,
            cache_dir=str(Path(tmp) / "cache"),
            max_joint_keyframes=args.max_joint_keyframes,
            profile=True,
        )
        row = {
            "frames": args.frames,
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "rss_after_load_mb": round(after_load, 1),
            "seconds": round(result.seconds, 3),
            "ms_per_frame": round(1000 * result.seconds / args.frames, 2),
            "denoise_ms_per_frame": round(1000 * result.stage_seconds.get("denoise", 0.0) / args.frames, 2),
            "keyframe_ms_per_frame": round(1000 * result.profile.get("keyframe", 0.0) / args.frames, 2),
            "forwards_per_frame_step": round(result.forwards_per_frame_step, 4),
        }
        if weights_mb is not None:
            row["cuda_peak_mb"] = device_peak_mb(sd.device)
            row["cuda_weights_mb"] = weights_mb
        return row


def run_memory_suite(
    frame_counts,
    *,
    model,
    size,
    steps,
    editor,
    propagator,
    chunk_size,
    device,
    dtype,
    save=None,
    json_out=False,
    max_joint_keyframes: int = 32,
    clip_format: str = "mp4",
) -> dict:
    from vedit.model.device import resolve_device, resolve_dtype

    clip_format_checked(clip_format)
    rows = []
    for frames in frame_counts:
        say(f"bench memory: {frames} frames (a fresh process)")
        cmd = [
            sys.executable,
            "-m",
            "vedit_bench.memory",
            "--frames",
            str(frames),
            "--model",
            model,
            "--size",
            size,
            "--steps",
            str(steps),
            "--editor",
            editor,
            "--propagator",
            propagator,
            "--chunk-size",
            str(chunk_size),
            "--device",
            device,
            "--dtype",
            dtype,
            "--max-joint-keyframes",
            str(max_joint_keyframes),
            "--clip-format",
            clip_format,
        ]
        # glibc keeps freed heap memory and fragments it, so a process's peak RSS grows with the
        # number of allocations as well as with what is live. Serving every allocation above
        # 64 KiB with mmap returns freed tensors to the system at once, so the peak RSS measures
        # live memory (at 256x256, SD 2.1, 8 vs 32 frames: +655 MB retained without this, +0.4 MB with).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise SystemExit(f"memory probe for {frames} frames failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    resolved = resolve_device(device)
    settings = {"model": model, "size": size, "steps": steps, "editor": editor, "propagator": propagator,
                "chunk_size": chunk_size, "frames": list(frame_counts), "malloc_mmap_threshold": 65536,
                "max_joint_keyframes": max_joint_keyframes, "clip_format": clip_format}  # fmt: skip
    head = header("memory", device=resolved, dtype=resolve_dtype(dtype, resolved), settings=settings)
    head["timing"] = {"clock": "none: peak memory of one edit per frame count, each in a fresh process"}
    doc = document("memory", head, rows, key_fields=("frames",), value_field="peak_rss_mb")
    return finish(doc, _render, json_out=json_out, save=save)


def _render(doc: dict) -> None:
    rows, s = doc["rows"], doc["header"]["settings"]
    columns = [
        "frames",
        "peak RSS MB",
        "RSS after load MB",
        "edit's share MB",
        "s",
        "ms/frame",
        "denoise ms/frame",
        "keyframe ms/frame",
        "UNet fwd/frame/step",
    ]
    table = [
        [
            r["frames"],
            r["peak_rss_mb"],
            r["rss_after_load_mb"],
            round(r["peak_rss_mb"] - r["rss_after_load_mb"], 1),
            r["seconds"],
            r.get("ms_per_frame", "-"),
            r.get("denoise_ms_per_frame", "-"),
            r.get("keyframe_ms_per_frame", "-"),
            r["forwards_per_frame_step"],
        ]
        for r in rows
    ]
    if rows and "cuda_peak_mb" in rows[0]:
        columns += ["CUDA peak MB", "CUDA weights MB"]
        for line, r in zip(table, rows):
            line += [r["cuda_peak_mb"], r["cuda_weights_mb"]]
    show(
        f"peak memory: {s['model']} {s['size']}, {s['steps']} step(s), {s['editor']}+{s['propagator']}, "
        f"B={s['chunk_size']}, M={s.get('max_joint_keyframes', '-')}",
        columns,
        table,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", default="64x64")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--editor", default="pnp")
    parser.add_argument("--propagator", default="tokenflow")
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-joint-keyframes", type=int, default=32)
    parser.add_argument("--clip-format", default="mp4")
    print(json.dumps(probe(parser.parse_args())))
