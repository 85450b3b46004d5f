"""DDIM inversion speed: frames per second of :func:`vedit.method.ddim.invert` through each engine.

This is the inversion stage of an edit alone, run the way the pipeline runs it
(:func:`vedit.pipeline.invert_latents`): the plain pass through a :class:`vedit.runtime.runner.Passes`,
batches of ``batch`` frames, the source prompt, ``inversion_steps`` steps keeping the latents at
the ``steps``-step schedule. The latents are random (the UNet's cost does not depend on their
values), so no clip is read or encoded. One call of the timed function is one whole inversion of
``frames`` frames; its first call (the engine's build) is reported apart.

Figures per engine and batch: median seconds per inversion (min, max), frames/s (frames over
that), UNet forwards/s (frames × inversion steps over that), and achieved TFLOP/s from the plain
pass's counted FLOPs, with its fraction of the matmul peak measured in the same run.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
from typing import Any

import torch

from ._common import (
    PeakProbe,
    Stats,
    alternate,
    describe_vs,
    document,
    finish,
    fmt,
    header,
    pass_flops,
    percent,
    say,
    show,
    show_vs,
    timed,
    vs_rows,
)

SETTINGS = ("model", "size", "frames", "steps", "inversion_steps", "batch_size", "engines", "device", "dtype", "seed")


def _split(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


class _Session:
    """One configuration: its model and, per engine, the runner of its plain pass."""

    def __init__(self, settings: dict[str, Any], models: dict, cache, notes: list[str], *, own_model: bool = False):
        from vedit.io.frames import parse_size
        from vedit.model.loading import load_model

        self.settings = settings
        width, height = parse_size(settings["size"])
        self.h, self.w = height // 8, width // 8
        key = (settings["model"], settings["device"], settings["dtype"])
        if own_model or key not in models:
            say(f"bench invert: loading {settings['model']}")
            models.setdefault(key, []).append(
                load_model(settings["model"], device=settings["device"], dtype=settings["dtype"])
            )
        self.sd = models[key][-1]
        self.cache = cache
        self.notes = notes
        generator = torch.Generator().manual_seed(settings["seed"])
        self.latents = torch.randn(settings["frames"], 4, self.h, self.w, generator=generator).to(
            self.sd.device, self.sd.dtype
        )
        self.embeds = self.sd.encode_prompt(["a test pattern"])
        self.batches = sorted(set(int(b) for b in settings["batch_size"]))
        self.engines = list(settings["engines"])

    def runner(self, engine: str):
        from vedit import plugins
        from vedit.runtime.runner import Passes

        batches = {"plain": sorted({b for size in self.batches for b in _split(self.settings["frames"], size)})}
        return Passes(
            self.sd,
            [plugins.get("engine", engine)],
            strict=True,
            cache=self.cache,
            message=self.notes.append,
            batches=batches,
        )

    def invert_once(self, passes, batch: int):
        from vedit.method.ddim import invert

        def unet(latents, t, text):
            return passes.plain(latents, t.reshape(()), text, kind="inversion")

        return invert(unet, self.sd.new_scheduler(), self.latents, self.embeds,
                      inversion_steps=self.settings["inversion_steps"], steps=self.settings["steps"],
                      batch_size=batch)  # fmt: skip

    def flops_per_inversion(self) -> dict[int, int | None]:
        """Counted FLOPs of one whole inversion, per batch size (the last batch may be smaller)."""
        result = {}
        for batch in self.batches:
            counts = [
                pass_flops(self.sd, "plain", n, self.h, self.w, notes=self.notes)
                for n in _split(self.settings["frames"], batch)
            ]
            result[batch] = None if any(c is None for c in counts) else sum(counts) * self.settings["inversion_steps"]
        return result


def _row(
    engine: str,
    batch: int,
    stats: Stats,
    settings: dict[str, Any],
    flops: int | None,
    peak: float | None,
    first_s: float | None,
) -> dict[str, Any]:
    frames, steps = settings["frames"], settings["inversion_steps"]
    tflops = flops / stats.median / 1e12 if flops else None
    return {
        "engine": engine, "batch": batch, "frames": frames, "inversion_steps": steps, **stats.as_dict("s"),
        "frames_per_s": round(frames / stats.median, 4), "forwards_per_s": round(frames * steps / stats.median, 3),
        "tflops": round(tflops, 4) if tflops is not None else None,
        "of_peak": round(tflops / peak, 4) if tflops is not None and peak else None,
        "first_s": round(first_s, 3) if first_s is not None else None,
    }  # fmt: skip


@torch.no_grad()
def run_invert_suite(
    *,
    model: str = "random:sd21",
    size: str = "512x512",
    frames: int = 16,
    inversion_steps: int = 10,
    steps: int | None = None,
    batch_size: list[int] | str = (8,),
    engines: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    seed: int = 0,
    repeats: int = 3,
    warmup: int = 1,
    engine_cache: str | None = None,
    vs: str | None = None,
    peak: bool = True,
    json_out: bool = False,
    save: str | None = None,
) -> dict[str, Any]:
    from vedit import plugins
    from vedit.errors import ConfigError
    from vedit.model.device import resolve_device
    from vedit.runtime.engine_cache import EngineCache

    from ._common import parse_vs

    if isinstance(batch_size, str):
        batch_size = [int(b) for b in batch_size.split(",") if b.strip()]
    if repeats < 1:
        raise ConfigError("--repeats must be 1 or more")
    registered = plugins.registered("engine")
    if engines:
        names = [n.strip() for n in engines.split(",") if n.strip()]
    else:
        names = ["eager"] if vs else ["eager"] + sorted(n for n in registered if n != "eager")
    not_run = {n: "no such engine" for n in names if n not in registered}
    not_run.update(
        {n: registered[n].unavailable_reason() for n in names if n in registered and registered[n].unavailable_reason()}
    )
    names = [n for n in names if n not in not_run]
    base = {
        "model": model, "size": size, "frames": frames, "steps": steps or inversion_steps,
        "inversion_steps": inversion_steps, "batch_size": list(batch_size), "engines": names,
        "device": str(resolve_device(device)), "dtype": dtype, "seed": seed,
    }  # fmt: skip
    overrides = parse_vs(
        vs, {k: base[k] for k in SETTINGS}, aliases={"engine": "engines", "batch": "batch_size"}, run_options=False
    )
    for key in ("engines", "batch_size"):
        if isinstance(overrides.get(key), str):
            overrides[key] = [n.strip() if key == "engines" else int(n) for n in overrides[key].split(",") if n.strip()]
        elif isinstance(overrides.get(key), int):
            overrides[key] = [overrides[key]]
    if overrides and (len(base["engines"]) != 1 or len(overrides.get("engines", base["engines"])) != 1):
        raise ConfigError(
            "with --vs, each configuration runs one engine: give --engines NAME (and engine=NAME in --vs)"
        )
    cache_root = engine_cache or tempfile.mkdtemp(prefix="vedit-bench-engines-")
    notes: list[str] = []
    cache = EngineCache(cache_root, message=notes.append)
    models: dict = {}
    try:
        if overrides:
            doc = _run_vs(
                base, overrides, models, cache, notes, repeats=repeats, warmup=warmup, peak=peak, not_run=not_run
            )
        else:
            doc = _run_plain(base, models, cache, notes, repeats=repeats, warmup=warmup, peak=peak, not_run=not_run)
    finally:
        if engine_cache is None:
            shutil.rmtree(cache_root, ignore_errors=True)
    doc["header"]["settings"]["engine_cache"] = engine_cache or "(temporary)"
    return finish(doc, _render, json_out=json_out, save=save)


def _run_plain(base, models, cache, notes, *, repeats, warmup, peak, not_run) -> dict[str, Any]:
    session = _Session(base, models, cache, notes)
    say("bench invert: counting FLOPs")
    flops = session.flops_per_inversion()
    probe = PeakProbe(peak)
    probe.probe(session.sd.device, session.sd.dtype)
    measured: list[tuple[str, int, Stats, float]] = []
    for engine in session.engines:
        with session.runner(engine) as passes:
            for batch in session.batches:
                say(f"bench invert: {engine}, batch {batch}")
                try:
                    first_s, _ = timed(lambda b=batch: session.invert_once(passes, b), session.sd.device)
                except Exception as error:
                    text = str(error).strip().splitlines()
                    not_run[engine] = text[0] if text else type(error).__name__
                    break
                for _ in range(warmup):
                    session.invert_once(passes, batch)
                samples = [
                    timed(lambda b=batch: session.invert_once(passes, b), session.sd.device)[0] for _ in range(repeats)
                ]
                measured.append((engine, batch, Stats.of(samples), first_s))
        gc.collect()
    probe.probe(session.sd.device, session.sd.dtype)
    rows = [_row(e, b, s, base, flops[b], probe.value, first) for e, b, s, first in measured]
    head = header("invert", device=session.sd.device, dtype=session.sd.dtype, settings=dict(base), warmup=warmup,
                  repeats=repeats, matmul_peak=probe)  # fmt: skip
    return document("invert", head, rows, key_fields=("engine", "batch"), not_run=not_run, notes=notes)


def _run_vs(base, overrides, models, cache, notes, *, repeats, warmup, peak, not_run) -> dict[str, Any]:
    other = {**base, **overrides}
    if "device" in overrides:
        from vedit.model.device import resolve_device

        other["device"] = str(resolve_device(other["device"]))
    sessions = {"A": _Session(base, models, cache, notes), "B": _Session(other, models, cache, notes, own_model=True)}
    # Each configuration keeps its own model, so both sets of method hooks stay installed and
    # neither rebuilds its engines between the alternating calls.
    varied = [k for k in ("engines", "batch_size") if k in overrides]
    runners = {}
    for label, session in sessions.items():
        for engine in session.engines:
            runners[(label, engine)] = session.runner(engine).__enter__()

    def measure_config(label: str):
        session = sessions[label]
        figures = {}
        for engine in session.engines:
            for batch in session.batches:
                key = tuple(v for k, v in (("engine", engine), ("batch", batch)) if
                            {"engine": "engines", "batch": "batch_size"}[k] not in varied)  # fmt: skip
                seconds, _ = timed(
                    lambda e=engine, b=batch: session.invert_once(runners[(label, e)], b), session.sd.device
                )
                figures[key if key else ("all",)] = seconds
        return figures

    probe = PeakProbe(peak)
    probe.probe(sessions["A"].sd.device, sessions["A"].sd.dtype)
    key_fields = [k for k in ("engine", "batch") if {"engine": "engines", "batch": "batch_size"}[k] not in varied] or [
        "config"
    ]
    try:
        pairing = alternate(lambda: measure_config("A"), lambda: measure_config("B"), pairs=repeats,
                            warmup=max(1, warmup),
                            on_call=lambda label, i, counted: say(
                                f"bench invert: {label} {'pair ' + str(i + 1) if counted else 'warm-up'}"))  # fmt: skip
    finally:
        for runner in runners.values():
            runner.__exit__(None, None, None)
    rows = vs_rows(pairing, key_fields)
    sd = sessions["A"].sd
    probe.probe(sd.device, sd.dtype)
    settings = dict(base)
    head = header(
        "invert",
        device=sd.device,
        dtype=sd.dtype,
        settings=settings,
        warmup=max(1, warmup),
        repeats=repeats,
        matmul_peak=probe,
    )
    return document("invert", head, rows, key_fields=key_fields, value_field="ratio_median",
                    vs={"a": base, "b": other, "overrides": describe_vs(overrides), "order": pairing.order},
                    not_run=not_run, notes=notes)  # fmt: skip


def _render(doc: dict[str, Any]) -> None:
    if "vs" in doc:
        show_vs(f"inversion: A = base settings, B = {doc['vs']['overrides']}; ratio B/A of seconds per inversion "
                f"(below 1: B is faster); order {' '.join(o.split(' ')[0] for o in doc['vs']['order'])}",
                doc["rows"], doc["key_fields"])  # fmt: skip
    else:
        s = doc["header"]["settings"]
        show(
            f"DDIM inversion of {s['frames']} frames, {s['inversion_steps']} steps, {s['model']} {s['size']}",
            ["engine", "batch", "s median (min–max)", "frames/s", "UNet fwd/s", "TFLOP/s", "of peak", "first call s"],
            [[r["engine"], r["batch"], f"{r['median_s']:.3f} ({r['min_s']:.3f}–{r['max_s']:.3f})",
              fmt(r["frames_per_s"], 4), fmt(r["forwards_per_s"], 4), fmt(r["tflops"]), percent(r["of_peak"]),
              r["first_s"]] for r in doc["rows"]],
        )  # fmt: skip
    for name, reason in doc.get("not_run", {}).items():
        print(f"engine {name}: not measured ({reason})")
