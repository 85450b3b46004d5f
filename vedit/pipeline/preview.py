"""``vedit run --preview``: edit only the keyframes of a run and show them beside their sources.

A TokenFlow run edits K = ⌈N/B⌉ keyframes jointly and propagates them to the other frames. The
preview edits just those K frames (the ones the propagator's ``preview_frames`` names, or the ones
``--preview-frames`` names), jointly, with extended attention, for the run's full number of steps,
and writes a contact sheet PNG: each frame's source beside its edit. Only the preview frames are
VAE-encoded, inverted and denoised, so it costs about K/N of the run (the clip is still read and
hashed whole, which is cheap, so that a cached inversion of the full run is found and sliced
instead of inverting again).

Everything here is the pipeline's own stages (:mod:`vedit.pipeline.stages`) on a sub-clip: the run's
preflight, model, inversion (or its cache entry or ``--inversion`` file, sliced), the run's editor
and the propagator's preview form (``propagator.preview()``, see :class:`vedit.method.denoise.Propagator`;
TokenFlow's is :class:`vedit_plugins.propagators.tokenflow.JointKeyframes`).

    >>> from vedit.pipeline.preview import preview, summary_rows
    >>> result = preview("clip.mp4", "clip.preview.png", prompt="a watercolor painting", model="tiny")
    >>> for label, text in summary_rows(result): print(label, text)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import RunConfig, option_label, option_value
from ..errors import ConfigError, InputError, OutputError
from ..io.files import check_output_folder, check_replaceable, same_location, write_atomically
from ..io.writer import save_png
from ..method.trajectory import Trajectory
from ..method.unet import SOURCE
from ..report import Reporter, SilentReporter, Task, duration, open_task
from ..runtime.allocator import configure_allocator
from ..runtime.runner import Forwards
from .edit import load_for_edit
from .plan import own_options, planned_forwards
from .preflight import Recording, preflight, resolve_config
from .stages import (
    edit_latents,
    encode_clip,
    inversion_cache,
    inversion_key,
    invert_latents,
    load_controlnets,
    load_controls,
    read_ahead,
    reading_batch,
    to_uint8,
    trajectory_for,
)

PREVIEW_SPACING = 8  # without the propagator's preview_frames: the centre of every 8 frames
GAP = 4  # pixels between the pairs of the sheet
BACKGROUND = 24  # grey of the sheet's background and caption strips
INK = 235  # grey of the captions


@dataclass
class PreviewResult:
    """What a preview produced and measured, and what the full run it previews will cost."""

    output: Path  # the contact sheet PNG
    frames: list[int]  # the previewed frames: indices among the run's N selected frames, sorted
    total_frames: int  # N, the run's selected frames (as many as were read)
    size: tuple[int, int]  # working size (W, H): each half of a pair
    seconds: float  # the whole preview, model loading included
    stage_seconds: dict[str, float] = field(default_factory=dict)  # load, read, encode, invert, denoise, decode, write
    forwards: Forwards = field(default_factory=Forwards)  # UNet image-forwards measured, by kind
    full_forwards: Forwards = field(default_factory=Forwards)  # what the full run will make, by kind
    estimated_seconds: float = 0.0  # the full run, at this preview's measured speed (see estimate_full_run)
    estimate: dict[str, float] = field(default_factory=dict)  # estimated_seconds by stage
    steps_run: int = 0
    inversion: str = "none"  # "computed" (for the preview frames only), "cached", "file" or "none"
    inversion_path: Path | None = None  # the cache entry or file that was sliced
    source_frames: list[int] = field(default_factory=list)  # the previewed frames' indices in the source clip
    tiles: list[tuple[int, int]] = field(default_factory=list)  # per frame: (x, y) of its source image on the sheet
    latents: torch.Tensor | None = None  # the edited latents (P, 4, h, w), on the CPU
    engines: dict[str, str] = field(default_factory=dict)  # pass -> the engine that ran it
    model: str = ""
    seed: int = 0
    warnings: list[str] = field(default_factory=list)


def preview_path(output: str | os.PathLike) -> Path:
    """Where ``--preview`` writes its sheet for a run whose planned output is ``output``: a path
    ending in ``.png`` as it is, else ``<stem>.preview.png`` beside it (``out.mp4`` →
    ``out.preview.png``, a frames folder ``out/`` → ``out.preview.png``)."""
    path = Path(output)
    if path.suffix.lower() == ".png":
        return path
    return path.with_name(f"{path.stem if path.suffix else path.name}.preview.png")


def default_frames(total: int, spacing: int = PREVIEW_SPACING) -> list[int]:
    """One frame per run of ``spacing`` frames, its centre: with the chunk size, the K keyframes of a TokenFlow run."""
    return [start + (min(start + spacing, total) - start) // 2 for start in range(0, total, spacing)]


def frames_to_preview(propagator: Any, total: int, options: Any) -> list[int]:
    """The frames a preview edits by default: the propagator's ``preview_frames(total, options)``, else
    :func:`default_frames` (the centre of every :data:`PREVIEW_SPACING` frames)."""
    own = getattr(propagator, "preview_frames", None)
    return sorted(own(total, options)) if own is not None else default_frames(total)


def parse_frames(frames: Sequence[int] | str | None, total: int, spacing: int = PREVIEW_SPACING) -> list[int]:
    """The preview's frames, sorted: ``frames`` as ``"0,40,80"`` or a list of indices among the
    run's ``total`` selected frames, or None for :func:`default_frames` every ``spacing`` frames. A
    one-line ConfigError names a value that is not an integer, out of range, given twice, or an empty list."""
    if frames is None:
        return default_frames(total, spacing)
    flag = option_label("preview_frames")
    if isinstance(frames, str):
        items: list[Any] = [part.strip() for part in frames.split(",")]
        if all(not part for part in items):
            items = []
        elif any(not part for part in items):
            raise ConfigError(f"{flag} {frames!r}: an empty entry between commas; give indices such as 0,40,80")
    else:
        items = list(frames)
    if not items:
        raise ConfigError(f"{flag} is empty: give frame indices such as 0,40,80")
    chosen: list[int] = []
    for item in items:
        try:
            if isinstance(item, (bool, np.bool_)):
                raise TypeError
            index = int(item) if isinstance(item, str) else item.__index__()
        except (TypeError, ValueError, AttributeError):
            raise ConfigError(f"{flag}: {item!r} is not a frame index (whole numbers such as 0,40,80)") from None
        if not 0 <= index < total:
            raise ConfigError(f"{flag}: frame {index} is out of range; the run has {total} frames (0..{total - 1})")
        if index in chosen:
            raise ConfigError(f"{flag}: frame {index} is given twice")
        chosen.append(index)
    return sorted(chosen)


def check_preview_output(
    output: str | os.PathLike, input_path: str | os.PathLike | None = None, *, overwrite: bool = False
) -> Path:
    """Refuse a sheet path that cannot or must not be written, before any work: an existing file
    that vedit did not write is replaced only with ``overwrite``."""
    out = Path(os.path.abspath(output))
    if out.suffix.lower() != ".png":
        raise ConfigError(f"{output}: a preview is a PNG image; give a path ending in .png")
    if out.is_dir():
        raise OutputError(f"{out}: is a folder; give a file name ending in .png")
    if out.exists() and not out.is_file():
        raise OutputError(f"{out}: exists and is not a regular file; choose another output path")
    parent = check_output_folder(out)
    if input_path is not None:
        source = Path(os.path.abspath(input_path))
        if same_location(out, source):
            raise OutputError(f"{out}: this is the input; choose a different output path")
        if source.is_dir() and same_location(parent, source):
            raise OutputError(f"{out}: is inside the input's folder of frames; choose another output path")
    check_replaceable(out, overwrite)
    return out


class _Renamed:
    """The reporter of a stage function run for the preview: its tasks under the preview's names."""

    def __init__(self, reporter: Reporter, names: dict[str, str]):
        self.reporter = reporter
        self.names = names

    def task(self, description: str, total: int | None, frames_per_unit: int | None = None, done: int = 0) -> Task:
        return open_task(self.reporter, self.names.get(description, description), total, frames_per_unit, done)

    def message(self, text: str) -> None:
        self.reporter.message(text)

    def warning(self, text: str) -> None:
        self.reporter.warning(text)


def _slice(trajectory: Trajectory, frames: list[int]) -> Trajectory:
    """The trajectory of ``frames`` alone (copies: a mapped file's pages are let go)."""
    index = torch.tensor(frames)
    latents = {
        t: trajectory.latents[t][index].clone() for t in dict.fromkeys([*trajectory.timesteps, trajectory.noisiest])
    }
    return Trajectory(
        clean=trajectory.clean[index].clone(), latents=latents, timesteps=list(trajectory.timesteps),
        noisiest=trajectory.noisiest, metadata=dict(trajectory.metadata),
    )  # fmt: skip


@torch.no_grad()
def preview(
    input: str | os.PathLike,
    output: str | os.PathLike,
    config: RunConfig | None = None,
    *,
    reporter: Reporter | None = None,
    sd: Any = None,
    preview_frames: Sequence[int] | str | None = None,
    **options: Any,
) -> PreviewResult:
    """Edit only ``preview_frames`` of the run ``config`` describes and write them, beside their
    source frames, as a contact sheet PNG at ``output``; options are :class:`~vedit.config.RunConfig`
    fields (``frames`` among them is the run's ``--frames`` selection, as for :func:`vedit.edit`).

    ``preview_frames`` (``--preview-frames``): indices among the run's selected frames (after
    ``frames``/``max_frames``), as ``"0,40,80"`` or a list; default, the frames the propagator names
    (:func:`frames_to_preview`; TokenFlow: the centre frame of every chunk of ``chunk_size``, its K
    keyframes). The frames are edited by the run's
    editor and the run's propagator's preview form (TokenFlow: all of them jointly with extended
    attention, bounded beyond ``max_joint_keyframes``), for the run's full number of steps.
    Post-processors and ``eval`` are not applied. Nothing is cached; an inversion already cached
    for the full run (or an ``inversion`` file) is sliced instead of inverting. ``sd`` is an
    already loaded model.
    """
    configure_allocator()  # once per process: importing vedit leaves the C allocator alone
    began = time.perf_counter()
    config = resolve_config(config, options)
    reporter = Recording(reporter or SilentReporter())
    if not config.prompt:
        raise ConfigError(f"a target prompt is required: pass {option_value('prompt', 'TEXT', placeholder=True)}")
    output = check_preview_output(output, input, overwrite=config.overwrite)
    checked = preflight(input, config.replace(eval=False), reporter, sd=sd)
    clip, editor, propagator = checked.clip, checked.editor, checked.propagator
    total = len(clip.reader)
    if preview_frames is None:
        chosen = frames_to_preview(propagator, total, own_options(propagator, config))
    else:
        chosen = parse_frames(preview_frames, total)
    shown = getattr(propagator, "preview", None)
    shown = shown() if shown is not None else propagator
    if config.postprocess:
        reporter.message(
            f"the preview shows the frames before post-processing ({option_label('postprocess')} is not applied)"
        )
    stages: dict[str, float] = {}

    with read_ahead(clip, reading_batch(config)) as reading:  # reading overlaps loading the model
        mark = time.perf_counter()
        model, batches, embeds = load_for_edit(config, checked, reporter, sd)  # the full run's batch sizes
        controlnets = load_controlnets(model, config, checked)
        config = config.replace(batch_size=batches.unet)
        stages["load"] = time.perf_counter() - mark

        # Every frame is read and hashed as encode_clip hashes them (the cache key of the full
        # run's inversion); only the preview's frames are kept.
        mark = time.perf_counter()
        digest = hashlib.sha256()
        wanted, kept, last = set(chosen), {}, None
        position = 0
        task = open_task(reporter, "read + encode", total, 1)
        for batch in reading:  # (b, H, W, 3) uint8
            digest.update(batch.tobytes())
            for offset in range(len(batch)):
                if position + offset in wanted:
                    kept[position + offset] = batch[offset].copy()
            position += len(batch)
            last = batch[-1]
            task.advance(len(batch))
        frames_sha = digest.hexdigest()
        if position == 0:
            raise InputError(f"{clip.info.path}: no frame could be decoded")
        if position < total:  # a clip that ended early, read with --allow-short
            past = [k for k in chosen if k >= position]
            if preview_frames is not None and past:
                raise InputError(
                    f"{clip.info.path}: read {position} of {total} frames, the clip ends early; "
                    f"{option_label('preview_frames')} {past[0]} is past its end"
                )
            chosen = [k for k in chosen if k < position]
            # The frames read end before the last one the propagator would preview for them: its last
            # frame stands in for it (the last chunk's centre, for TokenFlow, was never read).
            if not any(
                k >= frames_to_preview(propagator, position, own_options(propagator, config))[-1] for k in chosen
            ):
                kept[position - 1] = last.copy()
                chosen.append(position - 1)
            total = position
        source = np.stack([kept[k] for k in chosen])  # (P, H, W, 3) uint8
        stages["read"] = time.perf_counter() - mark

    mark = time.perf_counter()
    # encode_clip's own conversion and VAE call (and its warning for a clip that ended early)
    latents, _ = encode_clip(model, clip, batches.vae, _NoTasks(reporter), batches=[source])
    stages["encode"] = time.perf_counter() - mark

    # Latents → trajectory of the preview frames: sliced from the file or the cache, else computed.
    forwards: dict[str, int] = {}
    engines: dict[str, str] = {}
    inversion, inversion_path, trajectory = "none", None, None
    if editor.needs_inversion:
        mark = time.perf_counter()
        if config.inversion:
            shape = (total, *latents.shape[1:])
            full, inversion, inversion_path = trajectory_for(
                model, config, clip, torch.empty(shape, device="meta"), frames_sha, embeds[SOURCE], None, reporter
            )  # fmt: skip
            trajectory = _slice(full, chosen)
            reporter.message(f"preview: the frames' inversion is sliced from {inversion_path}")
        else:
            cached = None
            if not config.no_cache:
                cache = inversion_cache(config, reporter)
                key = inversion_key(model, config, clip, frames_sha)
                cached = cache.get(key)
            if cached is not None:
                trajectory, inversion, inversion_path = _slice(cached, chosen), "cached", cache.path(key)
                reporter.message(f"preview: the frames' inversion is sliced from the cached inversion {inversion_path}")
            else:
                # Only the preview frames, and never into the cache (it is not the clip's inversion).
                trajectory, inversion, _, used, engines = invert_latents(
                    model, config.replace(no_cache=True, inversion=None), checked, latents, frames_sha,
                    embeds[SOURCE], reporter,
                )  # fmt: skip
                forwards.update(used)
        stages["invert"] = time.perf_counter() - mark

    # The preview frames' edit: the run's editor, the propagator's preview form, the run's controls.
    mark = time.perf_counter()
    controls = load_controls(model, config, checked, frames_sha, reporter, frames=chosen, nets=controlnets)
    edited, used, steps_run, denoise_engines = edit_latents(
        model, config, dataclasses.replace(checked, propagator=shown), latents, trajectory, embeds,
        _Renamed(reporter, {"denoise": "preview"}), controls=controls,
    )  # fmt: skip
    for kind, count in used.items():
        forwards[kind] = forwards.get(kind, 0) + count
    engines.update(denoise_engines)
    stages["denoise"] = time.perf_counter() - mark

    mark = time.perf_counter()
    task = open_task(reporter, "write", len(chosen), 1)
    pictures = []
    for start in range(0, len(edited), batches.vae):
        pictures.append(to_uint8(model.decode_latents(edited[start : start + batches.vae], batch_size=batches.vae)))
        task.advance(len(pictures[-1]))
    stages["decode"] = time.perf_counter() - mark
    mark = time.perf_counter()
    indices = list(clip.reader.indices)
    source_frames = [int(indices[k]) for k in chosen]
    shown_controls = None if controls is None else [np.asarray(frames) for frames in controls.frames]
    sheet, tiles = contact_sheet(
        source, np.concatenate(pictures), captions=_captions(chosen, source_frames), controls=shown_controls
    )
    write_png(sheet, output)
    stages["write"] = time.perf_counter() - mark

    full_forwards = planned_forwards(
        config, total, editor, propagator, checked.steps_run, inverting=inversion in ("computed", "none")
    )
    estimate = estimate_full_run(stages, forwards, full_forwards, len(chosen), total)
    model_name = model.model_id if model.fingerprint == model.model_id else f"{model.model_id} ({model.fingerprint})"
    return PreviewResult(
        output=output, frames=chosen, total_frames=total, size=clip.reader.size, seconds=time.perf_counter() - began,
        stage_seconds=stages, forwards=Forwards(forwards), full_forwards=full_forwards,
        estimated_seconds=sum(estimate.values()), estimate=estimate, steps_run=steps_run, inversion=inversion,
        inversion_path=inversion_path, source_frames=source_frames, tiles=tiles, latents=edited.detach().cpu(),
        engines=engines, model=model_name, seed=config.seed, warnings=list(reporter.warnings),
    )  # fmt: skip


class _NoTasks:
    """Messages and warnings passed on, progress dropped (the preview shows its own)."""

    def __init__(self, reporter: Reporter):
        self.reporter = reporter

    def task(self, description: str, total: int | None, frames_per_unit: int | None = None, done: int = 0) -> Task:
        return SilentReporter()

    def message(self, text: str) -> None:
        self.reporter.message(text)

    def warning(self, text: str) -> None:
        self.reporter.warning(text)


def estimate_full_run(
    stages: dict[str, float], forwards: dict[str, int], full_forwards: dict[str, int], previewed: int, total: int
) -> dict[str, float]:
    """The full run's seconds by stage, at the preview's measured speed.

    - load: as measured (the full run loads the same model; about 0 with an already loaded one);
    - read: the preview's reading as measured (it read and hashed every frame too), plus its VAE
      encoding scaled by N/P;
    - invert: the preview's seconds per inversion image-forward times the full run's inversion
      forwards (none when the preview sliced a cached or given inversion: the full run will too);
    - denoise: the preview's seconds per denoising image-forward times the full run's;
    - decode + write: the preview's VAE decoding scaled by N/P.

    Left out: encoding and writing the video (ffmpeg), post-processors and ``--eval``; that a
    keyframe-pass forward with extended attention costs a little more than a propagation-pass
    forward (the preview runs only the former, so the denoising figure leans high); the nearest-
    neighbour search of the propagation pass; batch sizes (the preview's inversion batches hold at
    most P frames, the run's fill ``--batch-size``, which is faster per frame on a GPU); one-off
    costs that the preview pays once and scales up (first-call warm-up, engine builds); the
    inversion cache write and checkpoints; and memory effects of a long clip (a trajectory paged
    from disk). It is a rough figure, most useful on the machine and settings of the full run.
    """
    scale = total / max(1, previewed)
    estimate = {"load": stages.get("load", 0.0), "read": stages.get("read", 0.0) + stages.get("encode", 0.0) * scale}
    measured_inversion = forwards.get("inversion", 0)
    if full_forwards.get("inversion") and measured_inversion:
        estimate["invert"] = stages.get("invert", 0.0) / measured_inversion * full_forwards["inversion"]
    measured = sum(v for k, v in forwards.items() if k != "inversion")
    planned = sum(v for k, v in full_forwards.items() if k != "inversion")
    if measured:
        estimate["denoise"] = stages.get("denoise", 0.0) / measured * planned
    estimate["decode + write"] = stages.get("decode", 0.0) * scale
    return estimate


def _captions(frames: list[int], source_frames: list[int]) -> list[str]:
    return [f"frame {k}" if k == s else f"frame {k} (source {s})" for k, s in zip(frames, source_frames)]


def _font(width: int) -> tuple[float, int]:
    """cv2 font scale and thickness for captions over a pair of frames ``width`` pixels wide each."""
    scale = min(1.0, max(0.35, width / 640))
    return scale, 1 if scale < 0.8 else 2


def contact_sheet(
    sources: np.ndarray,
    edited: np.ndarray,
    captions: Sequence[str] | None = None,
    controls: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Each frame as a row of images, source | its control frames … | edited ((P, H, W, 3) uint8 each; ``controls``
    holds one such array per control, in order), on a grid of about square aspect, each row under a small
    caption strip; returns the sheet (H', W', 3) uint8 RGB and, per frame, the (x, y) of its source image (its
    control frames are at x + W, x + 2W, …, its edit at x + (1 + len(controls))·W). The frames' own pixels are
    copied unchanged."""
    import cv2

    count, height, width, _ = sources.shape
    if edited.shape != sources.shape:
        raise ValueError(f"source frames {sources.shape} and edited frames {edited.shape} differ in shape")
    panels = [sources, *(controls or ()), edited]  # left to right
    for control in panels[1:-1]:
        if control.shape != sources.shape:
            raise ValueError(f"source frames {sources.shape} and control frames {control.shape} differ in shape")
    captions = list(captions) if captions is not None else [""] * count
    scale, thickness = _font(width)
    font = cv2.FONT_HERSHEY_SIMPLEX
    (_, text_height), baseline = cv2.getTextSize("0", font, scale, thickness)
    strip = text_height + baseline + 4
    tile_w, tile_h = len(panels) * width, height + strip
    columns = min(
        range(1, count + 1),
        key=lambda c: abs(
            math.log((c * tile_w + (c + 1) * GAP) / (math.ceil(count / c) * tile_h + (math.ceil(count / c) + 1) * GAP))
        ),
    )
    rows = math.ceil(count / columns)
    sheet = np.full((rows * tile_h + (rows + 1) * GAP, columns * tile_w + (columns + 1) * GAP, 3), BACKGROUND, np.uint8)
    tiles = []
    for i in range(count):
        row, column = divmod(i, columns)
        x = GAP + column * (tile_w + GAP)
        y = GAP + row * (tile_h + GAP) + strip
        text, size = captions[i], scale
        while size > 0.2 and cv2.getTextSize(text, font, size, thickness)[0][0] > tile_w - 4:
            size -= 0.05  # a long caption over a narrow tile: smaller
        cv2.putText(sheet, text, (x + 2, y - baseline - 2), font, size, (INK, INK, INK), thickness, cv2.LINE_AA)
        # pasted after the caption, so that nothing of it reaches into the frames
        for position, panel in enumerate(panels):
            sheet[y : y + height, x + position * width : x + (position + 1) * width] = panel[i]
        tiles.append((x, y))
    return sheet, tiles


def write_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write ``image`` (H, W, 3) uint8 RGB as a PNG signed by vedit, atomically: a temporary
    sibling, then a rename; nothing is left behind on any failure (Ctrl-C included)."""
    from PIL import Image

    path = Path(path)
    encoded = io.BytesIO()
    save_png(Image.fromarray(np.ascontiguousarray(image)), encoded)
    try:
        return write_atomically(path, encoded.getvalue())
    except OSError as error:
        raise OutputError(f"{path}: cannot write the preview: {error.strerror or error}") from None


def _frame_list(frames: list[int], limit: int = 12) -> str:
    if len(frames) <= limit:
        return ", ".join(map(str, frames))
    return f"{', '.join(map(str, frames[: limit - 2]))}, ..., {', '.join(map(str, frames[-2:]))} ({len(frames)} frames)"


def summary_rows(result: PreviewResult) -> list[tuple[str, str]]:
    """The preview's lines of the CLI summary, as (label, text): literal text, no markup."""
    rows = [("preview", f"{result.output}: frames {_frame_list(result.frames)} of {result.total_frames}")]
    spent = sum(result.forwards.values())
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.stage_seconds.items())
    rows.append(("preview cost", f"{spent} UNet image-forwards, {result.seconds:.1f}s ({stages})"))
    how = {
        "computed": f"computed for the {len(result.frames)} preview frames only (not cached)",
        "cached": f"sliced from the cached inversion of the whole clip ({result.inversion_path})",
        "file": f"sliced from {result.inversion_path}",
        "none": "none (the editor needs none)",
    }[result.inversion]
    rows.append(("inversion", how))
    planned = sum(result.full_forwards.values())
    parts = ", ".join(f"{kind} {count}" for kind, count in result.full_forwards.items())
    rows.append((
        "full run",
        f"about {planned} UNet image-forwards ({parts}), about {duration(result.estimated_seconds)} at this "
        f"preview's speed (without writing the video)",
    ))  # fmt: skip
    if result.warnings:
        rows.append(("warnings", f"{len(result.warnings)} (printed above)"))
    return rows


__all__ = [
    "PreviewResult", "preview", "preview_path", "summary_rows", "parse_frames", "default_frames", "frames_to_preview",
    "check_preview_output", "contact_sheet", "write_png", "estimate_full_run",
]  # fmt: skip
