"""The edit pipeline: read the clip → (invert, cached) → editor plan → propagator-coupled denoising
→ decode → post-processors → write. :func:`edit` is what ``vedit run`` does."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from diffusers import DDIMScheduler

from .. import plugins
from ..runtime import profiling
from ..runtime.allocator import configure_allocator
from ..runtime.batch_sizes import CPU_BATCH, choose_batches
from ..cache.checkpoints import CheckpointStore, CheckpointWriter, checkpoint_key, inversion_file_identity
from ..config import RunConfig, check_numbers, load_config, option_label, option_value, validate
from ..method.denoise import EditJob, RunShape, Step, denoise
from ..runtime.engine import EngineCache, Passes, _first_line, engine_chain
from ..method.passes import joint_partners, select_keyframes
from ..errors import ConfigError, InputError, OutputError
from ..method.inversion import (
    RUN_FIELDS,
    InversionCache,
    Trajectory,
    cache_key,
    check_schedules,
    gb_to_bytes,
    invert,
    read_metadata,
    sampling_timesteps,
)
from ..model.models import SD_SCHEDULER_CONFIG
from ..report import Reporter, SilentReporter, Task, VeditWarning, open_task
from ..io.threads import ReadAhead, WriteBehind
from ..runtime.transfer import to_device
from ..method.unet import COND, SOURCE, UNCOND
from ..io.video import (
    FrameRange,
    FrameReader,
    VideoWriter,
    check_encoders,
    check_output_path,
    check_replaceable,
    frame_timing,
    lost_in_writing,
    no_audio_track,
    output_format,
    parse_size,
    probe,
    resampling,
    working_size,
    written_size,
)


READ_AHEAD_BYTES = 256 * 2**20  # frames read ahead of the encoder while the model loads
WRITE_BEHIND_BATCHES = 3  # decoded batches waiting for the writer thread


class _Recording:
    """Passes everything on to ``reporter`` and keeps the warnings for the result."""

    def __init__(self, reporter: Reporter):
        self.reporter = reporter
        self.warnings: list[str] = []

    def task(self, description: str, total: int | None, frames_per_unit: int | None = None, done: int = 0) -> Task:
        return open_task(self.reporter, description, total, frames_per_unit, done)

    def message(self, text: str) -> None:
        self.reporter.message(text)

    def warning(self, text: str) -> None:
        self.warnings.append(text)
        warn = getattr(self.reporter, "warning", None)  # reporters written before warnings existed
        (warn or self.reporter.message)(text)


@dataclass
class EditResult:
    """What an edit produced, and what it cost."""

    output: Path
    frames: int
    size: tuple[int, int]  # working size (W, H)
    output_size: tuple[int, int]  # what was written (W, H)
    fps: Fraction
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    forwards: dict[str, int] = field(default_factory=dict)  # UNet image-forwards by pass
    steps_run: int = 0
    inversion: str = "none"  # "none", "computed", "cached" or "file"
    inversion_path: Path | None = None  # the cache entry or file the trajectory came from or went to
    model: str = ""  # model id, with its fingerprint where that says more
    seed: int = 0
    short_read: tuple[int, int] | None = None  # (frames read, frames promised) with --allow-short
    size_note: str = ""  # why the written size differs from the one asked for
    timing_note: str = ""  # how a variable-rate source was resampled, or that its times were kept
    aspect_note: str = ""  # how a source of non-square pixels was read and written
    dropped: list[str] = field(default_factory=list)  # what of the source the output does not hold
    warnings: list[str] = field(default_factory=list)
    engines: dict[str, str] = field(default_factory=dict)  # pass -> the engine that ran it
    profile: dict[str, float] = field(default_factory=dict)  # seconds per component, with profile=True
    evaluation: Any = None  # the quality report (vedit.quality.evaluate.Report) with eval=True
    resumed_from: int | None = None  # steps a checkpoint had done when this run resumed from it

    @property
    def forwards_per_frame_step(self) -> float:
        """UNet image-forwards per frame per denoising step run in this process (inversion excluded)."""
        edit = sum(v for k, v in self.forwards.items() if k != "inversion")
        return edit / max(1, self.frames * (self.steps_run - (self.resumed_from or 0)))


@dataclass
class _Clip:
    reader: FrameReader
    info: Any
    fps: Fraction

    def audio_range(self) -> tuple[float, float]:
        """The source audio that goes with the frames read, in seconds from the first video frame.

        With ``--keep-timestamps`` the frames' own times decide, since a variable-rate clip's
        frame n is not at n / fps; the writer also cuts the audio where the last frame ends.
        """
        reader, step = self.reader, self.reader.indices.step
        if self.reader.keep_timestamps and reader.timestamps:
            return (reader.timestamps[0], reader.timestamps[-1] + float(step / self.info.fps))
        first, last = reader.indices[0], reader.indices[-1]
        return (float(first / self.info.fps), float((last + step) / self.info.fps))


def _parse_fps(text: str) -> Fraction:
    try:
        fps = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{option_label('fps')} {text!r} is not a frame rate (e.g. 24, 30000/1001, 29.97)") from None
    if fps <= 0:
        raise ConfigError(f"{option_label('fps')} must be positive, got {text}")
    return fps


def open_clip(input_path: str | os.PathLike, config: RunConfig) -> _Clip:
    """Probe the input and set up the frame reader; fails before any heavy work."""
    info = probe(input_path)
    selection = FrameRange.parse(config.frames, config.max_frames)
    size = working_size(info.width, info.height, parse_size(config.size)) if config.size else None
    source_fps = _parse_fps(config.fps) if config.fps else info.fps
    reader = FrameReader(
        input_path, frames=selection, size=size, info=info, allow_short=config.allow_short,
        keep_timestamps=config.keep_timestamps,
    )  # fmt: skip
    return _Clip(reader=reader, info=info, fps=source_fps / selection.step)


def _output_size(config: RunConfig, clip: _Clip) -> tuple[int | Fraction, int | Fraction]:
    if config.output_size == "source":
        return clip.info.exact_size  # non-square pixels are written square, at the size they show
    if config.output_size == "working":
        return clip.reader.size
    return parse_size(config.output_size, option_label("output_size"))


def _postprocess_context(config: RunConfig, clip: _Clip, frames: int | None = None) -> Any:
    """The :class:`vedit.quality.postprocess.Context` of a run: post-processors see the decoded frames at
    the working size, so the source frames they may ask for are read again at that size."""
    from ..quality.postprocess import Context

    def source() -> FrameReader:
        return FrameReader(
            clip.info.path, frames=clip.reader.frames, size=clip.reader.size, info=clip.info,
            allow_short=config.allow_short, keep_timestamps=config.keep_timestamps,
        )  # fmt: skip

    count = len(clip.reader) if frames is None else frames
    return Context(fps=clip.fps, size=clip.reader.size, frames=count, flow=config.flow, source=source)


def _resolve_postprocessors(config: RunConfig, clip: _Clip) -> list[Any]:
    """``--postprocess`` found, parsed and checked (one-line errors): vedit.quality.postprocess.Step each."""
    from ..quality.postprocess import resolve

    return resolve(config.postprocess, _postprocess_context(config, clip))


@dataclass
class Preflight:
    """Everything checked, resolved and opened before any heavy work."""

    clip: _Clip
    editor: Any
    propagator: Any
    postprocessors: list[Any]  # vedit.quality.postprocess.Step: found, settings parsed and checked
    engines: list[Any]  # to try in order, ending at eager unless strict
    strict_engine: bool  # one engine named alone: its failure is an error
    device: torch.device
    dtype: torch.dtype
    steps_run: int
    inversion_metadata: dict[str, str] | None  # of the --inversion file


def preflight(
    input: str | os.PathLike, config: RunConfig, reporter: Reporter, *, sd: Any = None, editing: bool = True
) -> Preflight:
    """Check every option and option combination that can be checked from the options and the
    clip's probe, so that a mistake ends in one line before the model loads or a frame is read.

    Public: tools that drive many edits (``vedit batch``) check each with it before any work.
    ``editing=False`` checks an inversion only (no editor, propagator or post-processors)."""
    from ..model.models import peek_scheduler, resolve_device, resolve_dtype

    check_numbers(config)  # a RunConfig built by hand has not been validated
    clip = open_clip(input, config)
    if sd is not None:
        device, dtype = sd.device, sd.dtype
    else:
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
    engines, strict_engine, notes = engine_chain(config.engine, device)
    for note in notes:
        reporter.warning(note)
    editor = plugins.get("editor", config.editor) if editing else None
    propagator = plugins.get("propagator", config.propagator) if editing else None
    postprocessors = _resolve_postprocessors(config, clip) if editing else []
    if editing:
        _output_size(config, clip)
        if config.eval:
            from ..quality.evaluate import check_eval

            check_eval(config, reporter)
    # The model's own schedule when its config is at hand, else SD's: checked again after loading.
    scheduler = sd.new_scheduler() if sd is not None else peek_scheduler(config.model, config.revision)
    if scheduler is None:
        scheduler = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    needs_inversion = not editing or editor.needs_inversion
    inverting = needs_inversion and not config.inversion
    check_schedules(scheduler, config.steps, config.inversion_steps if inverting else None)
    steps_run = config.steps
    if editing:
        timesteps = getattr(editor, "timesteps", None)
        steps_run = len(timesteps(scheduler, config)) if timesteps is not None else config.steps
        shape = RunShape(frames=len(clip.reader), steps=steps_run, device=device)
        for plugin in (editor, propagator):
            validate = getattr(plugin, "validate", None)
            if validate is not None:
                validate(config, shape)
    metadata = None
    if config.inversion:
        if not needs_inversion:
            raise ConfigError(
                f"{option_label('inversion')} {config.inversion}: editor {config.editor!r} uses no inversion; "
                "leave it out"
            )
        metadata = read_metadata(config.inversion, needs=RUN_FIELDS)
        _check_inversion_file(config, metadata, clip, sampling_timesteps(scheduler, config.steps), reporter)
    return Preflight(clip, editor, propagator, postprocessors, engines, strict_engine, device, dtype, steps_run, metadata)


def _check_inversion_file(
    config: RunConfig, metadata: dict[str, str], clip: _Clip, timesteps: list[int], reporter: Reporter
) -> None:
    """Refuse a trajectory file that cannot fit this run, or (unless forced) came from another one."""
    path = config.inversion
    stored = [int(t) for t in json.loads(metadata.get("timesteps", "[]"))]
    if stored != timesteps:
        raise ConfigError(
            f"inversion file {path} was stored for a {len(stored)}-step schedule, this run uses "
            f"{len(timesteps)} steps: pass {option_value('steps', len(stored))} or invert again"
        )
    size = (metadata.get("width"), metadata.get("height"))
    if size != tuple(str(side) for side in clip.reader.size):
        raise ConfigError(
            f"inversion file {path} was made at {size[0]}x{size[1]}, this run works at "
            f"{clip.reader.size[0]}x{clip.reader.size[1]}: pass {option_value('size', f'{size[0]}x{size[1]}')}"
        )
    frames = metadata.get("frames")
    if frames is not None and int(frames) != len(clip.reader):
        raise ConfigError(
            f"inversion file {path} holds {frames} frames, {len(clip.reader)} are selected from the clip: "
            f"use the {option_label('frames')} and {option_label('max_frames')} it was made with"
        )
    made_with = metadata.get("inversion_steps")
    if "inversion_steps" in config.given and made_with is not None and int(made_with) != config.inversion_steps:
        reporter.warning(
            f"{option_value('inversion_steps', config.inversion_steps)} is not used: inversion file {path} was "
            f"made with {made_with} inversion steps, and its trajectory is used as it is"
        )
    if metadata.get("source_prompt", "") != config.source_prompt:
        _identity_mismatch(
            config,
            f"it was made with {option_label('source_prompt')} {metadata.get('source_prompt', '')!r}, "
            f"this run's is {config.source_prompt!r}",
            reporter,
        )


def _identity_mismatch(config: RunConfig, what: str, reporter: Reporter) -> None:
    """A trajectory made from another clip, model or prompt: refused, or used with a warning when forced."""
    if config.force_inversion:
        forced = option_value("force_inversion", True)
        reporter.warning(f"inversion file {config.inversion}: {what}; using it anyway ({forced})")
        return
    raise ConfigError(
        f"inversion file {config.inversion} does not fit this run: {what}; "
        f"pass {option_value('force_inversion', True)} to use it anyway"
    )


def _load(config: RunConfig, preflight: Preflight, sd: Any = None):
    """The model (loaded unless given)."""
    from ..model.models import load_model

    if sd is not None:
        return sd
    return load_model(config.model, device=preflight.device, dtype=preflight.dtype, revision=config.revision)


def make_passes(
    model: Any,
    config: RunConfig,
    checked: "Preflight",
    reporter: Reporter,
    *,
    conv_layers: tuple[str, ...] = (),
    qk_layers: tuple[str, ...] = (),
    nearest: Any = None,
    batches: dict[str, list[int]] | None = None,
) -> Passes:
    """The run's UNet passes, through the engines chosen in preflight (use as a context manager)."""
    cache = EngineCache.for_options(config.engine_cache, config.cache_dir, message=reporter.message)
    return Passes(
        model, checked.engines, strict=checked.strict_engine, conv_layers=conv_layers, qk_layers=qk_layers,
        nearest=nearest, cache=cache, message=reporter.message, warn=reporter.warning, batches=batches,
    )  # fmt: skip


def _split(total: int, size: int) -> list[int]:
    """The batch sizes of ``total`` items taken ``size`` at a time: [size] and the remainder."""
    return sorted({min(size, total)} | ({total % size} if total % size else set()))


def _warn_long_prompts(model, config: RunConfig, reporter: Reporter, keys: tuple[str, ...]) -> None:
    for key in keys:
        text = getattr(config, key) or ""
        overflow = model.prompt_overflow(text)
        if overflow is None:
            continue
        count, kept, dropped = overflow
        limit = model.tokenizer.model_max_length
        tail = kept[-40:] if len(kept) > 40 else kept
        cut = f'after "...{tail}"' if kept else "from its start"
        reporter.warning(
            f"{option_label(key)} is {count} tokens, the text encoder reads {limit}: it is cut {cut}, "
            f'so "{dropped[:60]}{"..." if len(dropped) > 60 else ""}" is ignored'
        )


def encode_clip(
    model, clip: _Clip, batch_size: int, reporter: Reporter, batches: Iterable[np.ndarray] | None = None
) -> tuple[torch.Tensor, str]:
    """Stage clip → latents: stream the frames through the VAE encoder; returns (N, 4, h, w) latents
    and the frames' sha256. ``batches`` are the clip's frames already being read (a
    :class:`~vedit.io.threads.ReadAhead` started before the model loaded); by default they are read here."""
    digest = hashlib.sha256()
    latents = []
    task = open_task(reporter, "read + encode", len(clip.reader), 1)
    for batch in batches if batches is not None else clip.reader.batches(batch_size):  # (b, H, W, 3) uint8
        digest.update(batch.tobytes())
        with profiling.stage("encode"):
            # sent as uint8 (a quarter of the bytes) without waiting, converted on the device
            images = to_device(torch.from_numpy(batch), model.device).permute(0, 3, 1, 2).to(torch.float32) / 255.0
            latents.append(model.encode_images(images.to(model.dtype), batch_size=batch_size))
        task.advance(len(batch))
    if not latents:
        raise InputError(f"{clip.info.path}: no frame could be decoded")
    if clip.reader.short_read is not None:
        got, promised = clip.reader.short_read
        reporter.warning(
            f"{clip.info.path}: read {got} of {promised} frames, the clip ends early; "
            f"editing the {got} that were read ({option_value('allow_short', True)})"
        )
    return torch.cat(latents), digest.hexdigest()


def _reading_batch(config: RunConfig) -> int:
    """Frames per batch handed from the reader thread (before the model is loaded and the VAE's
    batch is known)."""
    return config.batch_size if isinstance(config.batch_size, int) else CPU_BATCH


def _per_frame_with_source(editor: Any, propagator: Any) -> bool:
    """Whether per-frame UNet calls carry the source branch (PnP injection or a propagator that needs it)."""
    return bool(propagator.needs_source_branch or getattr(editor, "conv_layers", ()) or getattr(editor, "qk_layers", ()))


def _branches(editor: Any, propagator: Any) -> int:
    """Images per frame in a ``--batch-size`` UNet call: 1 with tokenflow (only inversion is batched
    so), else the per-frame calls' 3 branches with the source, 2 without."""
    if propagator.name == "tokenflow":
        return 1
    return 3 if _per_frame_with_source(editor, propagator) else 2


def _with_batch_size(config: RunConfig, model: Any, latents: torch.Tensor, branches: int = 1) -> RunConfig:
    """``config`` with ``--batch-size auto`` resolved, for the stage functions called on their own."""
    if isinstance(config.batch_size, int):
        return config
    size = (latents.shape[-1] * model.vae_scale_factor, latents.shape[-2] * model.vae_scale_factor)
    return config.replace(batch_size=choose_batches(model, config.batch_size, len(latents), size, branches).unet)


def read_ahead(clip: _Clip, batch_size: int, budget_bytes: int = READ_AHEAD_BYTES) -> ReadAhead[np.ndarray]:
    """Start reading the clip's frames on a thread, at most ``budget_bytes`` of them ahead of the
    encoder, so that reading overlaps loading the model."""
    width, height = clip.reader.size
    depth = max(2, budget_bytes // max(1, batch_size * width * height * 3))
    return ReadAhead(clip.reader.batches(batch_size), depth)


def _plain_unet(passes: Passes, kind: str) -> Callable:
    def run(latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return passes.plain(latents, t.reshape(()), text, kind=kind)

    return run


def _cache(config: RunConfig, reporter: Reporter) -> InversionCache:
    return InversionCache(config.cache_dir, max_bytes=gb_to_bytes(config.cache_max_gb), warn=reporter.warning)


def _inversion_key(model, config: RunConfig, clip: _Clip, frames_sha: str) -> str:
    """The inversion cache's key for this clip's frames, model and schedules."""
    return cache_key(
        frames_sha256=frames_sha,
        fingerprint=model.fingerprint,
        size=clip.reader.size,
        inversion_steps=config.inversion_steps,
        steps=config.steps,
        source_prompt=config.source_prompt,
        dtype=str(model.dtype).removeprefix("torch."),
    )


def _trajectory(
    model, config: RunConfig, clip: _Clip, latents: torch.Tensor, frames_sha: str, source_embeds, passes, reporter
) -> tuple[Trajectory, str, Path | None]:
    """The inverted clip: from --inversion, the cache, or computed now (and cached)."""
    if config.inversion:
        trajectory = Trajectory.load(config.inversion)
        if trajectory.clean.shape != latents.shape:
            raise ConfigError(
                f"inversion file {config.inversion} holds latents {tuple(trajectory.clean.shape)}, "
                f"but the selected frames give {tuple(latents.shape)}: "
                f"use the same {option_label('frames')} and {option_label('size')}"
            )
        meta = trajectory.metadata
        if meta.get("fingerprint") and meta["fingerprint"] != model.fingerprint:
            _identity_mismatch(config, f"it was made with model {meta.get('model', '?')} ({meta['fingerprint']}), "
                                       f"this run uses {model.model_id} ({model.fingerprint})", reporter)
        if meta.get("frames_sha256") and meta["frames_sha256"] != frames_sha:
            _identity_mismatch(config, f"it was made from other frames ({meta.get('source', 'another clip')}, "
                                       f"content {meta['frames_sha256'][:12]}; these are {frames_sha[:12]})", reporter)
        return trajectory, "file", Path(config.inversion)
    key = _inversion_key(model, config, clip, frames_sha)
    cache = _cache(config, reporter)
    if not config.no_cache:
        cached = cache.get(key)
        if cached is not None:
            reporter.message(f"reusing cached inversion {cache.path(key)}")
            return cached, "cached", cache.path(key)
    metadata = dict(
        model=model.model_id,
        fingerprint=model.fingerprint,
        revision=model.revision or "",
        source_prompt=config.source_prompt,
        inversion_steps=str(config.inversion_steps),
        steps=str(config.steps),
        dtype=str(model.dtype).removeprefix("torch."),
        frames_sha256=frames_sha,
        width=str(clip.reader.size[0]),
        height=str(clip.reader.size[1]),
        source=str(Path(clip.info.path).resolve()),
    )
    # Written to its file step by step as the inversion goes (the cache entry, or a temporary file
    # with --no-cache), so that a long clip's trajectory is never held whole in memory.
    writer = None if config.no_cache else cache.writer(key, metadata)
    if writer is None:
        writer = _spool(metadata, reporter)
    task = open_task(reporter, "invert", config.inversion_steps, len(latents))
    trajectory = invert(
        _plain_unet(passes, "inversion"),
        model.new_scheduler(),
        latents,
        source_embeds,
        inversion_steps=config.inversion_steps,
        steps=config.steps,
        batch_size=config.batch_size,
        on_step=lambda done, total: task.advance(1),
        writer=writer,
    )
    trajectory.metadata.update(metadata)
    written = None
    if writer is not None and writer.path is not None and writer.failed is None:
        written = cache.adopt(key, note=reporter.message)
    return trajectory, "computed", written


def _spool(metadata: dict[str, str], reporter: Reporter) -> Any:
    """A temporary trajectory file outside the cache; None (the trajectory is then held in memory)
    when the temporary folder cannot be written."""
    import tempfile

    from ..method.inversion import TrajectoryWriter

    def failed(reason: str) -> None:
        reporter.message(f"cannot write a temporary trajectory file ({reason}); holding it in memory")

    try:
        return TrajectoryWriter(None, metadata, folder=tempfile.gettempdir(), on_failure=failed)
    except OSError as error:
        failed(error.strerror or str(error))
        return None


def invert_latents(
    model, config: RunConfig, checked: Preflight, latents: torch.Tensor, frames_sha: str, source_embeds, reporter
) -> tuple[Trajectory, str, Path | None, dict[str, int], dict[str, str]]:
    """Stage latents → trajectory: from --inversion, the cache, or computed now through the
    engines (and cached). Returns the trajectory, how it was had, its file, UNet forwards and the
    engine that ran each pass."""
    config = _with_batch_size(config, model, latents)
    batches = {"plain": _split(len(latents), config.batch_size)}
    with make_passes(model, config, checked, reporter, batches=batches) as plain:
        trajectory, how, path = _trajectory(model, config, checked.clip, latents, frames_sha, source_embeds, plain, reporter)
    return trajectory, how, path, dict(plain.forwards), dict(plain.used)


@dataclass
class Checkpointing:
    """Where and how often :func:`edit_latents` keeps checkpoints, and what it found."""

    store: CheckpointStore
    key: str  # vedit.cache.checkpoints.checkpoint_key of the run
    every: int  # steps between checkpoints
    metadata: dict[str, str] = field(default_factory=dict)  # shown by 'vedit cache list'
    resumed_from: int | None = None  # set by edit_latents: the steps the checkpoint it resumed from had done

    @property
    def path(self) -> Path:
        return self.store.path(self.key)

    def finish(self) -> None:
        """The output is written: the checkpoint is no longer needed."""
        self.store.remove(self.key)


def _checkpointing(
    model, config: RunConfig, checked: Preflight, frames_sha: str, inversion: str, reporter: Reporter
) -> Checkpointing | None:
    """The run's checkpoints, unless --checkpoint-every 0 or --no-cache turn them off. ``config``
    is the run's as given (``--batch-size auto`` unresolved: free memory must not change the key)."""
    if config.checkpoint_every == 0 or config.no_cache:
        return None
    if config.inversion:
        trajectory = inversion_file_identity(config.inversion)
    elif inversion != "none":
        trajectory = _inversion_key(model, config, checked.clip, frames_sha)
    else:
        trajectory = ""
    key = checkpoint_key(
        config, frames_sha256=frames_sha, fingerprint=model.fingerprint, dtype=str(model.dtype).removeprefix("torch."),
        device=model.device.type, trajectory=trajectory,
    )  # fmt: skip
    width, height = checked.clip.reader.size
    metadata = {
        "source": str(Path(checked.clip.info.path).resolve()), "prompt": config.prompt or "", "model": model.model_id,
        "frames": str(len(checked.clip.reader)), "width": str(width), "height": str(height),
        "editor": f"{config.editor} + {config.propagator}", "seed": str(config.seed),
    }  # fmt: skip
    return Checkpointing(CheckpointStore(config.cache_dir, warn=reporter.warning), key, config.checkpoint_every, metadata)


def _resume_point(checkpoints: Checkpointing, job: EditJob, plan: Any, propagator: Any, reporter: Reporter) -> Any:
    """The checkpoint to resume from, if there is one that fits this run's loop and whose state
    the propagator takes."""
    found = checkpoints.store.load(checkpoints.key)
    if found is None:
        return None
    start = plan.start_latents
    fits = (
        found.steps == len(plan.timesteps) and 0 < found.step <= found.steps
        and tuple(found.latents.shape) == tuple(start.shape) and found.latents.dtype == start.dtype
    )  # fmt: skip
    if not fits:
        reporter.warning(f"checkpoint {checkpoints.path} does not fit this run's loop; starting from the first step")
        checkpoints.store.remove(checkpoints.key)
        return None
    if found.state:  # tried now, on the propagator begun as the loop begins it: a state it refuses is a fresh start
        propagator.begin(job, plan)
        try:
            propagator.load_state_dict(found.state)
        except Exception as error:
            reporter.warning(
                f"checkpoint {checkpoints.path} holds a state propagator {propagator.name!r} cannot take "
                f"({_first_line(error)}); starting from the first step"
            )
            checkpoints.store.remove(checkpoints.key)
            return None
    reporter.message(f"resuming from the checkpoint after step {found.step} of {found.steps} ({checkpoints.path})")
    return found


def edit_latents(
    model, config: RunConfig, checked: Preflight, latents: torch.Tensor, trajectory: Trajectory | None, embeds, reporter,
    *, checkpoints: Checkpointing | None = None,
) -> tuple[torch.Tensor, dict[str, int], int, dict[str, str]]:
    """Stage trajectory → edited latents: the editor's plan and the propagator-coupled denoising
    loop, every UNet call through the engines. Returns the edited clean latents, UNet forwards by
    kind, the steps run and the engine that ran each pass.

    With ``checkpoints`` the loop resumes from the run's checkpoint when there is one (setting
    ``checkpoints.resumed_from``) and writes one every ``checkpoints.every`` steps and after the
    last; the caller removes it (:meth:`Checkpointing.finish`) once the output is written.
    """
    editor, propagator = checked.editor, checked.propagator
    config = _with_batch_size(config, model, latents, _branches(editor, propagator))
    scheduler = model.new_scheduler()
    scheduler.set_timesteps(config.steps)
    job = EditJob(
        config=config, model=model, scheduler=scheduler, clean_latents=latents, trajectory=trajectory,
        generator=torch.Generator().manual_seed(config.seed),
    )  # fmt: skip
    plan = editor.plan(job)
    # A Python search backend takes the propagation pass out of a compiled graph: auto may choose
    # one only when the passes run eagerly anyway.
    eager_only = all(getattr(engine, "name", "") == "eager" for engine in checked.engines)
    tokens = latents.shape[-2] * latents.shape[-1] if eager_only else None
    nearest = plugins.choose("nn_backend", config.nn_backend, model.device, tokens=tokens)
    batches = _pass_batches(config, len(latents), editor, propagator)
    steps = len(plan.timesteps)
    resume = writer = None
    if checkpoints is not None and not (hasattr(propagator, "state_dict") and hasattr(propagator, "load_state_dict")):
        reporter.message(f"propagator {propagator.name!r} has no state_dict: this run keeps no checkpoints")
        checkpoints = None
    if checkpoints is not None:
        resume = _resume_point(checkpoints, job, plan, propagator, reporter)
        checkpoints.resumed_from = None if resume is None else resume.step
        writer = CheckpointWriter(checkpoints.store, checkpoints.key, checkpoints.metadata)

    def keep(step: Step, latents: torch.Tensor) -> None:
        done = step.index + 1
        if done % checkpoints.every == 0 or done == steps:
            writer.put(done, steps, latents, propagator.state_dict())

    task = open_task(reporter, "denoise", steps, len(latents), done=0 if resume is None else resume.step)
    try:
        with make_passes(
            model, config, checked, reporter, conv_layers=plan.conv_layers, qk_layers=plan.qk_layers, nearest=nearest,
            batches=batches,
        ) as passes:  # fmt: skip
            edited = denoise(
                job, plan, propagator, passes, embeds, on_step=lambda step: task.advance(1), resume=resume,
                after_step=keep if writer is not None else None,
            )  # fmt: skip
    except BaseException:
        kept = writer.close() if writer is not None else None
        if kept is not None and kept.step < steps:
            reporter.message(
                f"the checkpoint after step {kept.step} of {steps} is kept: the same command resumes from it"
            )
        raise
    if writer is not None:
        writer.close()
    return edited, dict(passes.forwards), steps, dict(passes.used)


def write_frames(
    model, config: RunConfig, checked: Preflight, edited: torch.Tensor, output: Path, size: tuple[int, int], reporter,
    vae_batch_size: int | None = None,
) -> None:
    """Stage edited latents → frames → file: decode, post-process and write atomically.

    The VAE decodes on this thread while a writer thread converts, post-processes and hands the
    previous batches to ffmpeg (which encodes in its own process), a few batches behind. The
    post-processors (:class:`vedit.quality.postprocess.Chain`) see the batches in order and may hold some
    frames back; what they still hold is written at the end, before the file is finished, so a
    failure there too leaves no output.
    """
    from ..quality.postprocess import Chain

    clip = checked.clip
    audio_from = clip.info if clip.info.has_audio else None
    timestamps = clip.reader.timestamps if config.keep_timestamps else None
    task = open_task(reporter, "decode + write", edited.shape[0], 1)
    end = None  # put after the last batch: the post-processors give up what they hold
    with Chain(checked.postprocessors, _postprocess_context(config, clip, edited.shape[0])) as chain, VideoWriter(
        output, fps=clip.fps, size=size, audio_from=audio_from, audio_range=clip.audio_range(),
        color=clip.info.color, timestamps=timestamps, overwrite=config.overwrite,
    ) as writer:  # fmt: skip

        def finish(item: tuple[int, torch.Tensor] | None) -> None:
            with profiling.stage("postprocess", sync=False):
                if item is end:
                    frames = chain.finish()
                else:
                    start, images = item
                    frames = chain.push(_to_uint8(images), start)
            if len(frames):
                with profiling.stage("write", sync=False):
                    writer.write(frames)
                task.advance(len(frames))

        with WriteBehind(finish, WRITE_BEHIND_BATCHES) as behind:
            step = vae_batch_size or config.batch_size
            for start in range(0, edited.shape[0], step):
                with profiling.stage("decode"):
                    images = model.decode_latents(edited[start : start + step], batch_size=step)
                behind.put((start, images))
            behind.put(end)


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(b, 3, H, W) in [0, 1] → (b, H, W, 3) uint8."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _resolve(config: RunConfig | None, options: dict[str, Any]) -> RunConfig:
    if config is None:
        return load_config(**options)
    return config.replace(**validate(options)).giving(options) if options else config


def _size_note(config: RunConfig, clip: _Clip, output: Path, written: tuple[int, int]) -> str:
    """Why the written size is not the one asked for (empty when it is)."""
    source = config.output_size == "source"
    asked = (clip.info.width, clip.info.height) if source else _output_size(config, clip)
    if asked == written:
        return ""
    whose = "the source is" if source else "asked for"
    return f"{whose} {asked[0]}x{asked[1]}; {output_format(output).name} 4:2:0 video needs even sides"


def _aspect_note(clip: _Clip, written: tuple[int, int]) -> str:
    """How a clip of non-square pixels was read and written (empty for square ones)."""
    info = clip.info
    if info.pixel_aspect == 1 or info.stored_size is None:
        return ""
    aspect, (stored_width, stored_height) = info.pixel_aspect, info.stored_size
    turned = f", turned {info.rotation} degrees" if info.rotation else ""
    return (
        f"{stored_width}x{stored_height} stored with pixel aspect {aspect.numerator}:{aspect.denominator}{turned} "
        f"({info.width}x{info.height} displayed): read and written with square pixels at {written[0]}x{written[1]}"
    )


def _dropped(clip: _Clip, output: Path, reporter: Reporter) -> list[str]:
    """What of the source the output will not hold; audio the output cannot carry is a warning."""
    no_audio = no_audio_track(output)
    if clip.info.has_audio and no_audio:
        reporter.warning(f"{output}: {no_audio}, so the audio of {clip.info.path} is dropped")
    return lost_in_writing(clip.info, output)


def _timing_note(config: RunConfig, clip: _Clip, output: Path, reporter: Reporter) -> str:
    """Say how a variable-rate source is timed in the output, and where the output's format
    cannot time frames exactly; warn when frames are dropped or will not play at their pace."""
    kept, too_fast = frame_timing(output, clip.fps, keep_timestamps=config.keep_timestamps)
    if too_fast:
        reporter.warning(too_fast)
    source = _source_timing_note(config, clip, reporter)
    return "; ".join(note for note in (source, kept) if note)


def _source_timing_note(config: RunConfig, clip: _Clip, reporter: Reporter) -> str:
    """How a variable-rate source is read: resampled (frames dropped are a warning) or kept."""
    if config.keep_timestamps:
        return f"source frame times kept ({option_value('keep_timestamps', True)})"
    change = resampling(clip.info, clip.reader.frames)
    if not change.dropped and not change.repeated:
        return ""
    note = f"{change.summary(clip.info.fps)} ({option_value('keep_timestamps', True)} keeps its own times)"
    if change.dropped:
        reporter.warning(f"{clip.info.path}: {note}")
    return note


@torch.no_grad()
def edit(
    input: str | os.PathLike,
    output: str | os.PathLike,
    config: RunConfig | None = None,
    *,
    reporter: Reporter | None = None,
    sd: Any = None,
    profile: bool = False,
    **options: Any,
) -> EditResult:
    """Edit ``input`` into ``output``; options are :class:`~vedit.config.RunConfig` fields.

    Example: ``vedit.edit("clip.mp4", "out.mp4", prompt="a watercolor painting", model="tiny")``.
    Without ``config``, ``vedit.toml`` in the working directory supplies defaults. ``sd`` is an
    already loaded :class:`~vedit.model.models.StableDiffusion`, to reuse one model across edits.
    ``profile`` times each component with device synchronisation (``EditResult.profile``); it
    slows the run a little.
    """
    configure_allocator()  # once per process: importing vedit leaves the C allocator alone
    config = _resolve(config, options)
    reporter = _Recording(reporter or SilentReporter())
    if not config.prompt:
        raise ConfigError(f"a target prompt is required: pass {option_value('prompt', 'TEXT', placeholder=True)}")
    began = time.perf_counter()
    checked = preflight(input, config, reporter, sd=sd)
    timer = profiling.Profile(checked.device) if profile else None
    with profiling.profiling(timer):
        result = _edit(input, output, config, checked, reporter, sd, began)
    if timer is not None:
        result.profile = timer.as_dict()
    return result


def load_for_edit(config: RunConfig, checked: Preflight, reporter: Reporter, sd: Any = None) -> tuple[Any, Any, dict]:
    """The model (loaded unless ``sd``), the run's batch sizes for the whole clip
    (:class:`vedit.runtime.batch_sizes.Batches`; ``--batch-size auto`` resolved), and the prompts' embeddings
    by branch; the schedules are checked against the loaded model and long prompts warned of."""
    editor, propagator, clip = checked.editor, checked.propagator, checked.clip
    model = _load(config, checked, sd)
    batches = choose_batches(model, config.batch_size, len(clip.reader), clip.reader.size, _branches(editor, propagator))
    inverting = not config.inversion and editor.needs_inversion
    check_schedules(model.new_scheduler(), config.steps, config.inversion_steps if inverting else None)
    _warn_long_prompts(model, config, reporter, ("prompt", "source_prompt", "negative_prompt"))
    texts = [config.source_prompt, config.negative_prompt, config.prompt]
    embeds = dict(zip((SOURCE, UNCOND, COND), model.encode_prompt(texts).split(1)))
    return model, batches, embeds


def _edit(input, output, config: RunConfig, checked: Preflight, reporter: _Recording, sd: Any, began: float) -> EditResult:
    stages: dict[str, float] = {}

    # 1. Everything a user can get wrong was checked in preflight, before any heavy work.
    output = check_output_path(output, input, overwrite=config.overwrite)
    if config.eval:
        from ..quality.evaluate import check_report_path, report_path

        check_report_path(report_path(output), input, overwrite=config.overwrite)
    clip, editor = checked.clip, checked.editor
    check_encoders(output, audio=clip.info.has_audio)
    output_size = written_size(output, _output_size(config, clip))
    timing_note = _timing_note(config, clip, output, reporter)
    dropped = _dropped(clip, output, reporter)

    with read_ahead(clip, _reading_batch(config)) as frames:  # reading overlaps loading the model
        # 2. Model, batch sizes and prompts.
        mark = time.perf_counter()
        with profiling.stage("load"):
            model, batches, embeds = load_for_edit(config, checked, reporter, sd)
        given_batch = config.batch_size
        config = config.replace(batch_size=batches.unet)
        stages["load"] = time.perf_counter() - mark

        # 3. Frames → latents.
        mark = time.perf_counter()
        latents, frames_sha = encode_clip(model, clip, batches.vae, reporter, batches=frames)
        stages["read"] = time.perf_counter() - mark

    # 4. Latents → trajectory (cached), then → edited latents.
    forwards: dict[str, int] = {}
    inversion, inversion_path, trajectory, inversion_engines = "none", None, None, {}
    if editor.needs_inversion:
        mark = time.perf_counter()
        with profiling.stage("invert"):
            trajectory, inversion, inversion_path, used, inversion_engines = invert_latents(
                model, config, checked, latents, frames_sha, embeds[SOURCE], reporter
            )
        forwards.update(used)
        stages["invert"] = time.perf_counter() - mark
    mark = time.perf_counter()
    checkpoints = _checkpointing(model, config.replace(batch_size=given_batch), checked, frames_sha, inversion, reporter)
    edited, used, steps_run, engines = edit_latents(
        model, config, checked, latents, trajectory, embeds, reporter, checkpoints=checkpoints
    )
    for kind, count in used.items():
        forwards[kind] = forwards.get(kind, 0) + count
    stages["denoise"] = time.perf_counter() - mark

    # 5. Edited latents → frames: decode, post-process and write (atomically).
    mark = time.perf_counter()
    write_frames(model, config, checked, edited, output, output_size, reporter, vae_batch_size=batches.vae)
    stages["write"] = time.perf_counter() - mark
    if checkpoints is not None:
        checkpoints.finish()

    # 6. With --eval: the quality report of what was written, beside it.
    evaluation = None
    if config.eval:
        from ..quality.evaluate import evaluate_run

        mark = time.perf_counter()
        with profiling.stage("eval", sync=False):
            evaluation = evaluate_run(Path(output), clip, config, reporter)
        stages["eval"] = time.perf_counter() - mark

    model_name = model.model_id if model.fingerprint == model.model_id else f"{model.model_id} ({model.fingerprint})"
    return EditResult(
        output=Path(output),
        frames=edited.shape[0],
        size=clip.reader.size,
        output_size=output_size,
        fps=clip.fps,
        seconds=time.perf_counter() - began,
        stage_seconds=stages,
        forwards=forwards,
        steps_run=steps_run,
        engines={**inversion_engines, **engines},
        inversion=inversion,
        inversion_path=inversion_path,
        model=model_name,
        seed=config.seed,
        short_read=clip.reader.short_read,
        size_note=_size_note(config, clip, output, output_size),
        timing_note=timing_note,
        aspect_note=_aspect_note(clip, output_size),
        dropped=dropped,
        warnings=list(reporter.warnings),
        evaluation=evaluation,
        resumed_from=None if checkpoints is None else checkpoints.resumed_from,
    )


@dataclass
class BuiltEngine:
    """One pass built (or found in the engine cache) by :func:`build_engines`."""

    pass_name: str
    batch: int
    engine: str
    seconds: float


def _pass_batches(config: RunConfig, frames: int, editor: Any, propagator: Any) -> dict[str, list[int]]:
    """The batch sizes each pass runs at in a run of ``frames`` frames with these plugins."""
    n, b, size = frames, config.chunk_size, config.batch_size
    batches: dict[str, list[int]] = {}
    if editor.needs_inversion:
        batches["plain"] = _split(n, size)
    if propagator.name == "tokenflow":
        keys = -(-n // b)
        batches["keyframe" if keys <= config.max_joint_keyframes else "keyframe_bounded"] = [3 * keys]
        batches["propagation"] = [3 * x for x in _split(n, b)]
    elif _per_frame_with_source(editor, propagator):
        batches["frames"] = [3 * x for x in _split(n, size)]
    else:
        batches.setdefault("plain", [])
        batches["plain"] = sorted(set(batches["plain"]) | {2 * x for x in _split(n, size)})
    return batches


def planned_forwards(
    config: RunConfig, frames: int, editor: Any, propagator: Any, steps_run: int, *, inverting: bool = True
) -> dict[str, int]:
    """The UNet image-forwards a run of ``frames`` frames will make, by kind (the keys of
    :attr:`EditResult.forwards`), known before any heavy work. ``inverting``: the trajectory is
    computed in this run (not cached or given). A propagator other than the built-in ones may say
    with ``planned_forwards(frames, steps_run, config)``; without it, one per-frame call per frame
    and step is assumed."""
    forwards: dict[str, int] = {}
    if editor.needs_inversion and inverting:
        forwards["inversion"] = frames * config.inversion_steps
    own = getattr(propagator, "planned_forwards", None)
    if own is not None:
        forwards.update(own(frames, steps_run, config))
    elif propagator.name == "tokenflow":
        keys = -(-frames // config.chunk_size)
        forwards["keyframes"] = 3 * keys * steps_run
        forwards["propagation"] = 3 * frames * steps_run
    else:
        forwards["frames"] = (3 if _per_frame_with_source(editor, propagator) else 2) * frames * steps_run
    return forwards


@torch.no_grad()
def build_engines(
    config: RunConfig, frames: int, *, size: tuple[int, int], reporter: Reporter | None = None, sd: Any = None
) -> list[BuiltEngine]:
    """Build (or find in the engine cache) every pass a run of ``frames`` frames at ``size`` (W, H)
    would use, so that the run itself starts at once. What ``vedit engines build`` does."""
    from ..model.models import load_model, resolve_device, resolve_dtype

    reporter = _Recording(reporter or SilentReporter())
    editor = plugins.get("editor", config.editor)
    propagator = plugins.get("propagator", config.propagator)
    device = sd.device if sd is not None else resolve_device(config.device)
    dtype = sd.dtype if sd is not None else resolve_dtype(config.dtype, device)
    engines, strict, notes = engine_chain(config.engine, device)
    for note in notes:
        reporter.warning(note)
    if size[0] % 8 or size[1] % 8:
        raise ConfigError(f"{option_value('size', f'{size[0]}x{size[1]}')}: both sides must be multiples of 8")
    model = sd or load_model(config.model, device=device, dtype=dtype, revision=config.revision)
    config = config.replace(batch_size=choose_batches(model, config.batch_size, frames, size, _branches(editor, propagator)).unet)
    checked = Preflight(None, editor, propagator, [], engines, strict, device, dtype, config.steps, None)  # type: ignore[arg-type]
    batches = _pass_batches(config, frames, editor, propagator)
    h, w = size[1] // 8, size[0] // 8
    gen = torch.Generator().manual_seed(0)
    text_len, text_dim = model.tokenizer.model_max_length, model.text_encoder.config.hidden_size

    def example(batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latents = torch.randn(batch, 4, h, w, generator=gen).to(device, dtype)
        text = torch.randn(batch, text_len, text_dim, generator=gen).to(device, dtype)
        return latents, torch.tensor(501, device=device), text

    flags = torch.tensor([True, True], device=device)
    layers = (getattr(editor, "conv_layers", ()), getattr(editor, "qk_layers", ()))
    built: list[BuiltEngine] = []
    task = reporter.task("build engines", sum(len(v) for v in batches.values()))
    nearest = plugins.choose("nn_backend", config.nn_backend, device)
    with make_passes(model, config, checked, reporter, conv_layers=layers[0], qk_layers=layers[1], nearest=nearest,
                     batches=batches) as passes:  # fmt: skip
        records: list[torch.Tensor] = []
        for name in ("plain", "frames", "keyframe", "keyframe_bounded", "propagation"):
            for batch in batches.get(name, []):
                mark = time.perf_counter()
                inputs: tuple[torch.Tensor, ...] = example(batch)
                if name != "plain":
                    inputs += (flags,)
                if name == "keyframe_bounded":
                    inputs += (to_device(joint_partners(batch // 3, config.max_joint_keyframes, gen), device),)
                if name == "propagation":
                    slots = torch.tensor([0, 0], device=device)
                    inputs += (torch.ones(batch // 3, device=device), *select_keyframes(records, slots))
                out = passes.prepare(name, inputs)(*inputs)
                if passes.module(name).returns_records:
                    records = list(out[1:])
                built.append(BuiltEngine(name, batch, passes.used[name], time.perf_counter() - mark))
                task.advance(1)
    return built


def _check_trajectory_output(output: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an inversion file path that cannot be written, before any work: an existing file
    that is not a vedit trajectory is replaced only with ``overwrite``."""
    from ..method.inversion import is_trajectory

    output = Path(output)
    if output.suffix != ".safetensors":
        raise ConfigError(f"{output}: an inversion file must end in .safetensors")
    if output.is_dir():
        raise OutputError(f"{output}: is a folder; give a file name ending in .safetensors")
    if not output.parent.is_dir():
        raise OutputError(f"{output}: folder {output.parent} does not exist; create it or choose another path")
    if not os.access(output.parent, os.W_OK | os.X_OK):
        raise OutputError(f"{output}: folder {output.parent} is not writable; choose another path")
    check_replaceable(output, overwrite, is_trajectory)
    return output


@torch.no_grad()
def invert_clip(
    input: str | os.PathLike,
    output: str | os.PathLike | None = None,
    config: RunConfig | None = None,
    *,
    reporter: Reporter | None = None,
    sd: Any = None,
    check: bool = False,
    **options: Any,
) -> "InversionResult":
    """Invert ``input`` (or reuse the cached inversion); optionally also write it to ``output``.

    With ``check``, also sample back from the inverted noise and measure the reconstruction.
    """
    configure_allocator()  # once per process: importing vedit leaves the C allocator alone
    config = _resolve(config, options).replace(inversion=None)
    reporter = _Recording(reporter or SilentReporter())
    if output is not None:
        output = _check_trajectory_output(output, config.overwrite)
    checked = preflight(input, config, reporter, sd=sd, editing=False)
    clip = checked.clip
    with read_ahead(clip, _reading_batch(config)) as frames:  # reading overlaps loading the model
        model = _load(config, checked, sd)
        batches = choose_batches(model, config.batch_size, len(clip.reader), clip.reader.size)
        config = config.replace(batch_size=batches.unet)
        check_schedules(model.new_scheduler(), config.steps, config.inversion_steps)
        _warn_long_prompts(model, config, reporter, ("source_prompt",))
        (source_embeds,) = model.encode_prompt([config.source_prompt]).split(1)
        latents, frames_sha = encode_clip(model, clip, batches.vae, reporter, batches=frames)
    reconstruction = None
    batches = {"plain": _split(len(latents), config.batch_size)}
    with make_passes(model, config, checked, reporter, batches=batches) as plain:
        trajectory, how, cache_path = _trajectory(model, config, clip, latents, frames_sha, source_embeds, plain, reporter)
        if check:
            reconstruction = reconstruction_psnr(model, config, clip, trajectory, source_embeds, plain, reporter)
    written = None
    if output is not None:
        try:
            written = trajectory.save(output)
        except OSError as error:
            raise OutputError(f"{output}: cannot write the inversion file: {error.strerror or error}") from None
    return InversionResult(
        trajectory=trajectory, how=how, path=written, reconstruction=reconstruction, cache_path=cache_path,
        warnings=list(reporter.warnings),
    )  # fmt: skip


@dataclass
class InversionResult:
    """What :func:`invert_clip` produced."""

    trajectory: Trajectory
    how: str  # "computed" or "cached"
    path: Path | None  # the file written with ``output``
    reconstruction: "Reconstruction | None" = None  # with ``check``
    cache_path: Path | None = None  # the cache entry read or written
    warnings: list[str] = field(default_factory=list)


@dataclass
class Reconstruction:
    """How well the inversion reproduces the clip: PSNR against the input frames, in dB."""

    psnr: float  # decode(DDIM sampling from z_T with the source prompt) vs the frames
    vae_psnr: float  # decode(z_0) vs the frames: the autoencoder's own loss, a ceiling for the above


def reconstruction_psnr(model, config, clip, trajectory, source_embeds, passes, reporter) -> Reconstruction:
    """Sample back from the inverted noise and compare the decoded frames with the clip's."""
    from ..method.inversion import reconstruct

    task = reporter.task("reconstruct", 1)
    z0 = reconstruct(
        _plain_unet(passes, "reconstruction"), model.new_scheduler(), trajectory, source_embeds,
        inversion_steps=config.inversion_steps, batch_size=config.batch_size, device=model.device,
    )
    task.advance(1)
    errors = {"sampled": 0.0, "vae": 0.0}
    count = 0
    start = 0
    for frames in clip.reader.batches(config.batch_size):  # (b, H, W, 3) uint8
        end = start + len(frames)
        reference = frames.astype(np.float64)
        for key, latents in (("sampled", z0[start:end]), ("vae", trajectory.clean[start:end])):
            decoded = _to_uint8(model.decode_latents(latents.to(model.device, model.dtype), batch_size=config.batch_size))
            errors[key] += float(((decoded.astype(np.float64) - reference) ** 2).sum())
        count += frames.size
        start = end
    to_db = lambda total: float("inf") if total == 0 else float(10 * np.log10(255.0**2 * count / total))  # noqa: E731
    return Reconstruction(psnr=to_db(errors["sampled"]), vae_psnr=to_db(errors["vae"]))


__all__ = ["edit", "invert_clip", "preflight", "Preflight", "encode_clip", "invert_latents", "edit_latents", "write_frames", "build_engines", "planned_forwards", "EditResult", "InversionResult", "Reconstruction", "Reporter", "VeditWarning", "open_clip"]
