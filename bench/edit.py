"""A whole edit, end to end, split into its parts: read, encode, invert, keyframe pass, propagation
pass, nearest-neighbour search, VAE decode, write.

Each run is :func:`vedit.pipeline.edit` on a synthetic clip (ffmpeg's ``testsrc2`` at the working
size, so nothing is resized) with the model loaded once beforehand and a fresh inversion cache, so
the inversion is computed every time (``--reuse-inversion`` shares one cache: the warm-up computes
it and the timed runs read it). Engines built in a run go to one engine cache for the whole suite
(a temporary folder unless ``--engine-cache``), as a user's second run finds them.

The parts come from ``EditResult.profile`` (seconds per component, measured by the pipeline with
device synchronisation when ``profile=True``); a pipeline without it gives only
``EditResult.stage_seconds`` (load, read, invert, denoise, write), and the table says so. Parts nest
(the search runs inside the propagation pass) and overlap (frames are read and written on their
own threads), so they do not add up to the total: a share is a part's seconds over the whole
edit's wall time.

UNet forwards come from the code's own counter (``EditResult.forwards``, by pass). FLOPs per
image of each pass are counted with ``FlopCounterMode`` over vedit's pass modules at the run's
shapes (inversion batches, K keyframes, chunks of B frames), so achieved TFLOP/s of a part is
its forwards × counted FLOP per image over its median seconds.
"""

from __future__ import annotations

import inspect
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from vedit.report import SilentReporter

from ._common import (
    PeakProbe,
    Stats,
    alternate,
    clip_format_checked,
    clip_path,
    describe_vs,
    device_peak_mb,
    document,
    finish,
    fmt,
    forwards_text,
    header,
    parse_vs,
    pass_flops,
    percent,
    remove_output,
    say,
    show,
    show_vs,
    start_device_peak,
    synthetic_clip,
    vs_rows,
)

STAGES = ("load", "read", "invert", "denoise", "write")  # EditResult.stage_seconds, without a profile
SETTINGS = (
    "model", "size", "frames", "steps", "inversion_steps", "engine", "dtype", "device", "chunk_size", "batch_size",
    "editor", "propagator", "seed", "reuse_inversion", "engine_cache", "clip_format",
)  # fmt: skip
PROMPT, SOURCE_PROMPT = "a watercolor painting", "a test pattern"


def parts() -> tuple[str, ...]:
    """The parts of a profiled edit, in the order they run: each registered pass is profiled as its kind
    (:attr:`vedit.PassSpec.kind`), the nearest-neighbour search inside the propagation pass as ``nn``."""
    from vedit.plugins.passes import pass_kinds

    return ("load", "read", "encode", "invert", *pass_kinds(), "nn", "decode", "postprocess", "write")


def profile_supported() -> bool:
    """Whether :func:`vedit.pipeline.edit` takes ``profile=True`` (per-component seconds)."""
    from vedit.pipeline.edit import edit

    return "profile" in inspect.signature(edit).parameters


class Collect(SilentReporter):
    """A reporter that shows nothing and keeps each warning once."""

    def __init__(self, notes: list[str]):
        self.notes = notes

    def warning(self, text: str) -> None:
        if f"warning: {text}" not in self.notes:
            self.notes.append(f"warning: {text}")


class _Config:
    """One configuration's model, clip and edit options; :meth:`run` makes one timed edit."""

    def __init__(
        self,
        settings: dict[str, Any],
        extra: dict[str, Any],
        label: str,
        workdir: Path,
        models: dict,
        clips: dict,
        notes: list[str],
    ):
        from vedit.config import RunConfig, validate
        from vedit.io.frames import parse_size
        from vedit.model.device import dtype_name
        from vedit.model.loading import load_model

        self.settings, self.label, self.workdir, self.notes = settings, label, workdir, notes
        width, height = parse_size(settings["size"])
        self.size = (width, height)
        options = {
            "prompt": PROMPT, "source_prompt": SOURCE_PROMPT, "model": settings["model"], "size": f"{width}x{height}",
            "steps": settings["steps"], "inversion_steps": settings["inversion_steps"], "engine": settings["engine"],
            "engine_cache": settings["engine_cache"], "chunk_size": settings["chunk_size"],
            "batch_size": settings["batch_size"], "editor": settings["editor"], "propagator": settings["propagator"],
            "seed": settings["seed"], "output_size": "working", **extra,
        }  # fmt: skip
        base = RunConfig(**validate(options))  # a bad option fails here, before anything loads
        key = (settings["model"], settings["device"], settings["dtype"])
        if key not in models:
            say(f"bench edit: loading {settings['model']}")
            models[key] = load_model(settings["model"], device=settings["device"], dtype=settings["dtype"])
        self.sd = models[key]
        self.config = base.replace(device=str(self.sd.device), dtype=dtype_name(self.sd.dtype))
        clip_key = (settings["frames"], self.size, settings["clip_format"])
        if clip_key not in clips:
            stem = f"clip-{settings['frames']}-{width}x{height}"
            clips[clip_key] = synthetic_clip(
                clip_path(workdir, stem, settings["clip_format"]), settings["frames"], self.size
            )
        self.clip = clips[clip_key]
        self.runs = 0
        self.profile = profile_supported()

    def run(self) -> tuple[dict[str, float], Any]:
        from vedit.pipeline.edit import edit

        self.runs += 1
        cache = "cache-shared" if self.settings["reuse_inversion"] else f"cache-{self.label}-{self.runs}"
        output = clip_path(self.workdir, f"out-{self.label}-{self.runs}", self.settings["clip_format"])
        config = self.config.replace(cache_dir=str(self.workdir / cache))
        extra = {"profile": True} if self.profile else {}
        result = edit(self.clip, output, config, sd=self.sd, reporter=Collect(self.notes), **extra)
        remove_output(output)
        if not self.settings["reuse_inversion"]:
            shutil.rmtree(self.workdir / cache, ignore_errors=True)
        parts = dict(getattr(result, "profile", None) or {}) if self.profile else {}
        if not parts:
            parts = dict(result.stage_seconds)
        figures = {k: float(v) for k, v in parts.items()}
        figures["total"] = float(result.seconds)
        return figures, result

    def flops_per_image(self, forwards: dict[str, int]) -> dict[str, float | None]:
        """Counted FLOPs per UNet image-forward of each kind of forward the run made: the inversion's plain
        pass at its batches, and each kind's pass at the batch sizes the run's plan gives it
        (:func:`vedit.pipeline.plan.pass_batches`, which asks the propagator), with the editor's injection
        layers."""
        from vedit import plugins
        from vedit.pipeline.plan import batches_of, editor_layers, own_options, pass_batches
        from vedit.plugins.passes import registered_passes

        n, batch = self.settings["frames"], self.settings["batch_size"]
        editor = plugins.get("editor", self.config.editor)
        propagator = plugins.get("propagator", self.config.propagator)
        config = self.config.replace(batch_size=batch)
        plan = pass_batches(config, n, editor, propagator)
        conv_layers, qk_layers = editor_layers(editor, self.sd.family)
        layers = {"conv_layers": conv_layers, "qk_layers": qk_layers}
        specs = registered_passes()
        h, w = self.size[1] // 8, self.size[0] // 8

        def per_image(name: str, rows: list[int], **more) -> float | None:
            frames = [r // specs[name].rows_per_frame for r in rows]
            options = own_options(propagator, config)
            counts = [pass_flops(self.sd, name, f, h, w, options=options, notes=self.notes, **more) for f in frames]
            if any(c is None for c in counts):
                return None
            return sum(counts) / sum(rows)  # type: ignore[arg-type]

        result: dict[str, float | None] = {}
        for kind in forwards:
            if kind in ("inversion", "reconstruction"):
                result[kind] = per_image("plain", batches_of(n, batch))
                continue
            ran = [name for name, spec in specs.items() if spec.kind == kind and name in plan]
            if ran:
                result[kind] = per_image(ran[0], plan[ran[0]], **layers)
            else:
                result[kind] = None
                self.notes.append(f"UNet forwards of kind {kind!r} have no FLOP count (no pass of the run's plan)")
        return result


def _kinds_of(part: str, forwards: dict[str, int]) -> list[str]:
    """The kinds of UNet forward (``EditResult.forwards`` keys) made inside a part of the edit: a pass's
    part is its kind."""
    edit_kinds = [k for k in forwards if k not in ("inversion", "reconstruction")]
    groups = {"invert": ["inversion"], "denoise": edit_kinds, "total": list(forwards)}
    return groups.get(part, [part] if part in edit_kinds else [])


def _rows(
    figures: list[dict[str, float]], result: Any, per_image: dict[str, float | None], peak: float | None, profiled: bool
) -> list[dict[str, Any]]:
    order = parts() if profiled else STAGES
    seen = [k for k in order if any(k in f for f in figures)]
    seen += [k for f in figures for k in f if k not in seen and k != "total"]
    totals = Stats.of([f["total"] for f in figures])
    rows = []
    forwards = dict(result.forwards)
    for part in [*seen, "total"]:
        if part == "total":
            stats = totals
        else:
            stats = Stats.of([f[part] for f in figures if part in f])
        kinds = [k for k in _kinds_of(part, forwards) if forwards.get(k)]
        count = sum(forwards[k] for k in kinds)
        flop = None
        if kinds and all(per_image.get(k) is not None for k in kinds):
            flop = sum(forwards[k] * per_image[k] for k in kinds)
        tflops = flop / stats.median / 1e12 if flop and stats.median > 0 else None
        rows.append({
            "stage": part, **stats.as_dict("s"),
            "share": round(stats.median / totals.median, 4) if totals.median else None,
            "forwards": count or None,
            "forwards_per_s": round(count / stats.median, 3) if count and stats.median > 0 else None,
            "tflop": round(flop / 1e12, 5) if flop else None,
            "tflops": round(tflops, 4) if tflops is not None else None,
            "of_peak": round(tflops / peak, 4) if tflops is not None and peak else None,
        })  # fmt: skip
    return rows


@torch.no_grad()
def run_edit_suite(
    *,
    model: str = "random:sd21",
    size: str = "512x512",
    frames: int = 40,
    steps: int = 50,
    inversion_steps: int = 50,
    engine: str = "auto",
    dtype: str = "auto",
    device: str = "auto",
    chunk_size: int = 8,
    batch_size: int = 8,
    editor: str = "pnp",
    propagator: str = "tokenflow",
    seed: int = 0,
    repeats: int = 3,
    warmup: int = 1,
    reuse_inversion: bool = False,
    engine_cache: str | None = None,
    clip_format: str = "mp4",
    vs: str | None = None,
    options: dict[str, Any] | None = None,
    peak: bool = True,
    json_out: bool = False,
    save: str | None = None,
) -> dict[str, Any]:
    """Time ``repeats`` whole edits (after ``warmup`` untimed ones), per part; with ``vs``, the
    base settings and the same with those overrides, alternately, and their ratio pair by pair.
    ``options`` are further :class:`vedit.config.RunConfig` fields for both configurations."""
    from vedit.errors import ConfigError
    from vedit.model.device import resolve_device

    if repeats < 1:
        raise ConfigError("--repeats must be 1 or more")
    if frames < 1:
        raise ConfigError("--frames must be 1 or more")
    clip_format_checked(clip_format)
    workdir = Path(tempfile.mkdtemp(prefix="vedit-bench-edit-"))
    settings = {
        "model": model, "size": size, "frames": frames, "steps": steps, "inversion_steps": inversion_steps,
        "engine": engine, "dtype": dtype, "device": str(resolve_device(device)), "chunk_size": chunk_size,
        "batch_size": batch_size, "editor": editor, "propagator": propagator, "seed": seed,
        "reuse_inversion": reuse_inversion, "engine_cache": engine_cache or str(workdir / "engines"),
        "clip_format": clip_format,
    }  # fmt: skip
    extra = dict(options or {})
    overrides = parse_vs(vs, settings)
    notes: list[str] = []
    models: dict = {}
    clips: dict = {}
    profiled = profile_supported()
    if not profiled:
        notes.append("vedit.pipeline.edit takes no profile=True here: the parts are EditResult.stage_seconds "
                     "(load, read, invert, denoise, write), not the per-component profile")  # fmt: skip
    try:
        base = _Config(settings, extra, "A", workdir, models, clips, notes)
        if overrides:
            b_settings = {**settings, **{k: v for k, v in overrides.items() if k in settings}}
            if "device" in overrides:
                b_settings["device"] = str(resolve_device(b_settings["device"]))
            b_extra = {**extra, **{k: v for k, v in overrides.items() if k not in settings}}
            other = _Config(b_settings, b_extra, "B", workdir, models, clips, notes)
            doc = _run_vs(base, other, overrides, repeats=repeats, warmup=warmup, peak=peak, notes=notes)
        else:
            doc = _run_plain(base, repeats=repeats, warmup=warmup, peak=peak, notes=notes, profiled=profiled)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    head_settings = doc["header"]["settings"]
    if engine_cache is None:
        head_settings["engine_cache"] = "(temporary, shared by the runs)"
    if extra:
        head_settings["options"] = extra
    return finish(doc, _render, json_out=json_out, save=save)


def _run_plain(
    config: _Config, *, repeats: int, warmup: int, peak: bool, notes: list[str], profiled: bool
) -> dict[str, Any]:
    sd = config.sd
    probe = PeakProbe(peak)
    probe.probe(sd.device, sd.dtype)
    for index in range(warmup):
        say(f"bench edit: warm-up {index + 1}/{warmup}")
        config.run()
    weights_mb = start_device_peak(sd.device)  # the timed runs' own peak, on CUDA
    figures, results = [], []
    for index in range(repeats):
        say(f"bench edit: run {index + 1}/{repeats}")
        measured, result = config.run()
        figures.append(measured)
        results.append(result)
    result = results[-1]
    peak_mb = device_peak_mb(sd.device)
    if any(r.forwards != result.forwards for r in results):
        notes.append("the runs made different numbers of UNet forwards: " + "; ".join(str(r.forwards) for r in results))
    say("bench edit: counting FLOPs")
    per_image = config.flops_per_image(dict(result.forwards))
    probe.probe(sd.device, sd.dtype)
    peak_tflops = probe.value
    used_profile = profiled and bool(getattr(result, "profile", None))
    if used_profile:
        notes.append("parts nest (nn runs inside propagation) and overlap (read and write run on their own threads): "
                     "shares are of the whole edit's wall time and do not add up to 100%")  # fmt: skip
    rows = _rows(figures, result, per_image, peak_tflops, used_profile)
    head = header("edit", device=sd.device, dtype=sd.dtype, settings=dict(config.settings), warmup=warmup,
                  repeats=repeats, matmul_peak=probe)  # fmt: skip
    return document(
        "edit", head, rows, key_fields=("stage",), parts="profile" if used_profile else "stage_seconds",
        forwards=result.forwards.by_name(),
        gflop_per_image={k: round(v / 1e9, 4) if v else None for k, v in per_image.items()},
        engines=dict(result.engines), inversion=result.inversion, steps_run=result.steps_run, frames=result.frames,
        device_memory_mb={"peak": peak_mb, "before": weights_mb} if peak_mb is not None else None, notes=notes,
    )  # fmt: skip


def _run_vs(
    a: _Config, b: _Config, overrides: dict[str, Any], *, repeats: int, warmup: int, peak: bool, notes: list[str]
) -> dict[str, Any]:
    last: dict[str, Any] = {}
    sd = a.sd
    probe = PeakProbe(peak)
    probe.probe(sd.device, sd.dtype)

    def run(config: _Config):
        def once() -> dict[str, float]:
            figures, result = config.run()
            last[config.label] = result
            return figures

        return once

    pairing = alternate(run(a), run(b), pairs=repeats, warmup=warmup,
                        on_call=lambda label, i, counted: say(
                            f"bench edit: {label} {'pair ' + str(i + 1) if counted else 'warm-up'}"))  # fmt: skip
    rows = vs_rows(pairing, ("stage",))
    order = {name: i for i, name in enumerate(dict.fromkeys([*parts(), *STAGES, "total"]))}
    rows.sort(key=lambda r: order.get(r["stage"], len(order) - 1))
    probe.probe(sd.device, sd.dtype)
    head = header("edit", device=sd.device, dtype=sd.dtype, settings=dict(a.settings), warmup=warmup, repeats=repeats,
                  matmul_peak=probe)  # fmt: skip
    return document(
        "edit", head, rows, key_fields=("stage",), value_field="ratio_median",
        vs={"overrides": describe_vs(overrides), "a": dict(a.settings), "b": dict(b.settings),
            "b_options": {k: v for k, v in overrides.items() if k not in a.settings}, "order": pairing.order,
            "forwards": {k: r.forwards.by_name() for k, r in last.items()},
            "engines": {k: dict(r.engines) for k, r in last.items()}},
        notes=notes,
    )  # fmt: skip


def _render(doc: dict[str, Any]) -> None:
    if "vs" in doc:
        vs = doc["vs"]
        show_vs(f"edit: A = base settings, B = {vs['overrides']}; ratio B/A of seconds (below 1: B is faster); "
                f"order {' '.join(o.split(' ')[0] for o in vs['order'])}", doc["rows"], ["stage"])  # fmt: skip
        for label, engines in vs.get("engines", {}).items():
            print(f"{label}: engines {', '.join(f'{k} {v}' for k, v in engines.items()) or '-'}; "
                  f"UNet forwards {forwards_text(vs['forwards'][label])}")  # fmt: skip
        return
    s = doc["header"]["settings"]
    what = (
        "per component (EditResult.profile)"
        if doc.get("parts") == "profile"
        else "per stage (EditResult.stage_seconds)"
    )
    show(
        f"edit {what}: {s['model']} {s['size']}, {s['frames']} frames, {s['steps']} steps, {s['inversion_steps']} "
        f"inversion steps, {s['editor']}+{s['propagator']}, B={s['chunk_size']}, engine {s['engine']}",
        ["stage", "s median (min–max)", "share", "UNet fwd", "fwd/s", "TFLOP", "TFLOP/s", "of peak"],
        [[r["stage"], f"{r['median_s']:.3f} ({r['min_s']:.3f}–{r['max_s']:.3f})", percent(r["share"]), r["forwards"],
          fmt(r["forwards_per_s"], 4), fmt(r["tflop"]), fmt(r["tflops"]), percent(r["of_peak"])] for r in doc["rows"]],
    )  # fmt: skip
    engines = ", ".join(f"{k} {v}" for k, v in doc.get("engines", {}).items()) or "-"
    per_image = ", ".join(f"{k} {v}" for k, v in doc.get("gflop_per_image", {}).items())
    print(f"engines: {engines}; GFLOP per image: {per_image}; inversion {doc.get('inversion')}")
    memory = doc.get("device_memory_mb")
    if memory:
        print(f"device memory: peak {memory['peak']} MiB over the timed runs, {memory['before']} MiB allocated before")
