"""Warp error of real clips edited with and without each deflicker post-processor.

For every clip (``PATH`` or ``PATH:FRAMES``, the first FRAMES frames), every model (``tiny``, and
``consistency``: the consistency test's corrected tiny model, :func:`consistency_model`) and every
propagator (``none``, ``tokenflow``), one real :func:`vedit.pipeline.edit` per post-processing
variant (none, then each post-processor alone) writes the clip at the working size; all of them
are then scored in one pass over the source with :func:`vedit.quality.metrics.warp_errors`, the code
``vedit eval`` uses, along the source's own flow, which also gives the source's floor; as there,
pairs of a source frame that the constant-rate reading shows twice are not measured. Edits of a
clip share one cached inversion per model.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ._common import console, header, save_json, show

MODELS = ("tiny", "consistency")
PROPAGATORS = ("none", "tokenflow")
POSTPROCESSORS = ("deflicker-luma", "deflicker-flow")
PROMPT = "a watercolor painting"


def parse_clip(spec: str) -> tuple[Path, int | None]:
    """``PATH`` or ``PATH:FRAMES``."""
    from vedit.errors import ConfigError

    head, _, tail = spec.rpartition(":")
    path, count = (head, tail) if head and tail.isdigit() else (spec, "")
    if count and int(count) < 2:
        raise ConfigError(f"{spec}: a warp error needs at least 2 frames")
    return Path(path), int(count) if count else None


def _model(name: str, path: Path, frames: int | None, size: tuple[int, int]):
    """The model ``name``, its weights drawn from seed 0 whatever the edits' seed."""
    from vedit.io.frames import FrameRange
    from vedit.io.reader import FrameReader
    from vedit.model.loading import load_model

    if name == "tiny":
        return load_model("tiny", device="cpu", dtype="fp32")
    from .consistency import consistency_model

    sample = FrameReader(path, frames=FrameRange(max_frames=min(frames or 40, 40)), size=size).read_all()
    return consistency_model(0, sample)


def measure_clip(
    spec: str,
    workdir: Path,
    *,
    size: tuple[int, int],
    steps: int,
    seed: int,
    chunk_size: int,
    flow: str,
    models=MODELS,
    postprocessors=POSTPROCESSORS,
) -> list[dict[str, Any]]:
    """Edit one clip every way and score every output; one row per (model, propagator)."""
    from vedit.io.frames import FrameRange
    from vedit.io.reader import FrameReader
    from vedit.io.timing import resampling
    from vedit.pipeline.edit import edit
    from vedit.quality.flow import flow_backend
    from vedit.quality.metrics import warp_errors

    from .consistency import GUIDANCE

    path, frames = parse_clip(spec)
    backend = flow_backend(flow)
    outputs: list[tuple[str, str, str, Path, float]] = []
    for model_name in models:
        sd = _model(model_name, path, frames, size)
        guidance = GUIDANCE if model_name == "consistency" else 7.5
        for propagator in PROPAGATORS:
            for post in ("", *postprocessors):
                out = workdir / f"{model_name}-{propagator}-{post or 'plain'}.mp4"
                began = time.perf_counter()
                edit(
                    path, out, sd=sd, model="tiny", device="cpu", dtype="fp32", prompt=PROMPT, propagator=propagator,
                    postprocess=post or None, max_frames=frames, size=f"{size[0]}x{size[1]}", output_size="working",
                    steps=steps, inversion_steps=steps, guidance=guidance, seed=seed, chunk_size=chunk_size,
                    flow=flow, cache_dir=str(workdir / "cache"),
                )  # fmt: skip
                outputs.append((model_name, propagator, post, out, time.perf_counter() - began))
                console.print(f"{path.name}: {model_name} {propagator} {post or '-'}: {outputs[-1][4]:.1f} s")
    selection = FrameRange(max_frames=frames)
    source = FrameReader(path, frames=selection, size=size)
    edited = [FrameReader(out, size=size) for *_, out, _ in outputs]
    repeated = resampling(source.info, selection).repeated_pairs
    floor, errors = warp_errors(source, edited, backend=backend, repeated_pairs=repeated)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for (model_name, propagator, post, _, seconds), error in zip(outputs, errors):
        row = rows.setdefault((model_name, propagator), {
            "clip": path.name, "frames": len(floor.pairs) + 1, "measured_pairs": floor.measured,
            "size": f"{size[0]}x{size[1]}", "model": model_name, "propagator": propagator, "source": floor.value,
            "seconds": {},
        })  # fmt: skip
        row[post or "plain"] = error.value
        row["seconds"][post or "plain"] = seconds
    return list(rows.values())


def run_quality_suite(
    clips: list[str],
    *,
    size: str,
    steps: int,
    seed: int,
    chunk_size: int,
    flow: str,
    save: str | None,
) -> list[dict[str, Any]]:
    from vedit.io.frames import parse_size

    torch.set_num_threads(1)  # the tiny model is faster on one thread; the figures do not depend on it
    working = parse_size(size)
    for spec in clips:
        path, _ = parse_clip(spec)
        if not path.exists():
            from vedit.errors import InputError

            raise InputError(f"{path}: no such file")
    rows: list[dict[str, Any]] = []
    for spec in clips:
        with tempfile.TemporaryDirectory(prefix="vedit-quality-") as tmp:
            rows += measure_clip(
                spec, Path(tmp), size=working, steps=steps, seed=seed, chunk_size=chunk_size, flow=flow
            )
    show(
        f"Warp error ×10⁻³ (flow {flow} on the source), {size}, {steps} steps, B={chunk_size}, prompt {PROMPT!r}",
        ["clip", "frames", "pairs measured", "model", "propagator", "edit", *(f"+ {p}" for p in POSTPROCESSORS),
         "source (floor)"],
        [[r["clip"], r["frames"], r["measured_pairs"], r["model"], r["propagator"], f"{r['plain']:.2f}",
          *(f"{r[p]:.2f}" for p in POSTPROCESSORS), f"{r['source']:.3f}"] for r in rows],
    )  # fmt: skip
    settings = {
        "clips": clips,
        "size": size,
        "steps": steps,
        "seed": seed,
        "chunk_size": chunk_size,
        "flow": flow,
        "prompt": PROMPT,
        "models": list(MODELS),
        "postprocessors": list(POSTPROCESSORS),
    }
    save_json(save, {**header("quality", device="cpu", dtype="fp32", settings=settings), "rows": rows})
    return rows
