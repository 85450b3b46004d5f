"""UNet image-forwards per frame per step, counted by the code for each propagator (tiny model), beside
what the propagator plans (:func:`vedit.pipeline.plan.planned_forwards`, which asks it).

TokenFlow costs a keyframe pass of 3K images and a propagation pass of 3N images per step, with
K = ceil(N / B): 3·(1 + K/N) forwards per frame per step, 3·(1 + 1/B) when B divides N.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ._common import document, finish, forwards_text, header, show, synthetic_clip


def run_work_suite(
    frame_counts, *, chunk_size: int, steps: int, save: str | None = None, json_out: bool = False
) -> dict:
    from vedit import plugins
    from vedit.config import load_config
    from vedit.model.loading import load_model
    from vedit.pipeline.edit import edit
    from vedit.pipeline.plan import planned_forwards

    sd = load_model("tiny", device="cpu", dtype="fp32")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for frames in frame_counts:
            clip = synthetic_clip(Path(tmp) / f"clip{frames}.mp4", frames, (64, 64))
            for propagator in ("tokenflow", "none"):
                # vedit.toml, then these: the options edit() itself would resolve from them
                config = load_config(
                    prompt="a painting", model="tiny", steps=steps, inversion_steps=steps, propagator=propagator,
                    chunk_size=chunk_size, device="cpu", dtype="fp32",
                    cache_dir=str(Path(tmp) / f"cache-{frames}-{propagator}"),  # inverted (and counted) every time
                )  # fmt: skip
                result = edit(clip, Path(tmp) / "out.mp4", config, sd=sd)
                editor, plugin = plugins.get("editor", config.editor), plugins.get("propagator", propagator)
                planned = planned_forwards(config, frames, editor, plugin, steps, inverting=False)
                expected = sum(planned.values()) / (frames * steps)
                rows.append(
                    {
                        "frames": frames,
                        "propagator": propagator,
                        "forwards": result.forwards.by_name(),
                        "per_frame_step": round(result.forwards_per_frame_step, 4),
                        "expected": round(expected, 4),
                        "inversion_per_frame_step": result.forwards.get("inversion", 0) / (frames * steps),
                    }
                )
    settings = {
        "model": "tiny",
        "size": "64x64",
        "chunk_size": chunk_size,
        "steps": steps,
        "frames": list(frame_counts),
    }
    head = header("work", device=sd.device, dtype=sd.dtype, settings=settings)
    head["timing"] = {"clock": "none: UNet image-forwards counted by the code"}
    doc = document("work", head, rows, key_fields=("frames", "propagator"), value_field="per_frame_step")
    return finish(doc, _render, json_out=json_out, save=save)


def _render(doc: dict) -> None:
    s = doc["header"]["settings"]
    show(
        f"UNet image-forwards, B={s['chunk_size']}, {s['steps']} steps",
        ["frames", "propagator", "per frame per step", "planned", "inversion per frame per step", "by pass"],
        [
            [
                r["frames"],
                r["propagator"],
                r["per_frame_step"],
                r["expected"],
                r["inversion_per_frame_step"],
                forwards_text(r["forwards"]),
            ]
            for r in doc["rows"]
        ],
    )
