"""What ``vedit run`` does: :func:`edit` checks everything, runs the stages in order and returns an
:class:`EditResult`, with the notes its summary shows (why the written size or timing differs, how
non-square pixels were read, what of the source the output does not hold)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import torch

from ..config import RunConfig, option_value
from ..errors import ConfigError
from ..io.files import check_output_path
from ..io.timing import resampling
from ..io.writer import check_encoders, frame_timing, lost_in_writing, no_audio_track, output_format, written_size
from ..method.ddim import check_schedules
from ..method.unet import COND, SOURCE, UNCOND
from ..report import Reporter, SilentReporter
from ..runtime import profiling
from ..runtime.allocator import configure_allocator
from ..runtime.batch_sizes import choose_batches
from ..runtime.runner import Forwards
from .plan import branches
from .preflight import Clip, Preflight, Recording, preflight, requested_output_size, resolve_config
from .stages import (
    checkpoints_for,
    edit_latents,
    encode_clip,
    given_model,
    invert_latents,
    load_controlnets,
    load_controls,
    load_model_for,
    pixel_size,
    read_ahead,
    reading_batch,
    warn_long_prompts,
    write_frames,
)


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
    forwards: Forwards = field(default_factory=Forwards)  # UNet image-forwards by kind (vedit.runtime.runner)
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
    controls: list[str] = field(default_factory=list)  # each control: its source, scale and ControlNet

    @property
    def forwards_per_frame_step(self) -> float:
        """UNet image-forwards per frame per denoising step run in this process (inversion excluded)."""
        edit = sum(v for k, v in self.forwards.items() if k != "inversion")
        return edit / max(1, self.frames * (self.steps_run - (self.resumed_from or 0)))


@torch.no_grad()
def edit(
    input: str | os.PathLike,
    output: str | os.PathLike,
    config: RunConfig | None = None,
    *,
    reporter: Reporter | None = None,
    sd: Any = None,
    pipeline: Any = None,
    profile: bool = False,
    **options: Any,
) -> EditResult:
    """Edit ``input`` into ``output``; options are :class:`~vedit.config.RunConfig` fields.

    Example: ``vedit.edit("clip.mp4", "out.mp4", prompt="a watercolor painting", model="tiny")``.
    Without ``config``, ``vedit.toml`` in the working directory supplies defaults. ``sd`` is an
    already loaded :class:`~vedit.model.stable_diffusion.StableDiffusion`, to reuse one model across edits;
    ``pipeline`` an already loaded diffusers ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``
    (with whatever was loaded into it), edited with instead of ``--model``.
    ``profile`` times each component with device synchronisation (``EditResult.profile``); it
    slows the run a little.
    """
    configure_allocator()  # once per process: importing vedit leaves the C allocator alone
    config = resolve_config(config, options)
    reporter = Recording(reporter or SilentReporter())
    if not config.prompt:
        raise ConfigError(f"a target prompt is required: pass {option_value('prompt', 'TEXT', placeholder=True)}")
    began = time.perf_counter()
    sd = given_model(config, sd, pipeline)
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
    model = load_model_for(config, checked, sd, reporter)
    batches = choose_batches(
        model, config.batch_size, len(clip.reader), clip.reader.size, branches(editor, propagator, config)
    )
    inverting = not config.inversion and editor.needs_inversion
    check_schedules(model.new_scheduler(), config.steps, config.inversion_steps if inverting else None)
    warn_long_prompts(model, config, reporter, ("prompt", "source_prompt", "negative_prompt"))
    texts = [config.source_prompt, config.negative_prompt, cast(str, config.prompt)]  # given: the callers check it
    embeds = dict(zip((SOURCE, UNCOND, COND), model.encode_prompt(texts, pixel_size(clip)).split(1)))
    return model, batches, embeds


def _edit(
    input: Any, output: Any, config: RunConfig, checked: Preflight, reporter: Recording, sd: Any, began: float
) -> EditResult:
    stages: dict[str, float] = {}

    # 1. Everything a user can get wrong was checked in preflight, before any heavy work.
    output = check_output_path(output, input, overwrite=config.overwrite)
    if config.eval:
        from ..quality.evaluate import check_report_path, report_path

        check_report_path(report_path(output), input, overwrite=config.overwrite)
    clip, editor = checked.clip, checked.editor
    check_encoders(output, audio=clip.info.has_audio)
    output_size = written_size(output, requested_output_size(config, clip))
    timing_note = _timing_note(config, clip, output, reporter)
    dropped = _dropped(clip, output, reporter)

    with read_ahead(clip, reading_batch(config)) as frames:  # reading overlaps loading the model
        # 2. Model, batch sizes and prompts.
        mark = time.perf_counter()
        with profiling.stage("load"):
            model, batches, embeds = load_for_edit(config, checked, reporter, sd)
            controlnets = load_controlnets(model, config, checked)
        given_batch = config.batch_size
        config = config.replace(batch_size=batches.unet)
        stages["load"] = time.perf_counter() - mark

        # 3. Frames → latents.
        mark = time.perf_counter()
        latents, frames_sha = encode_clip(model, clip, batches.vae, reporter, batches=frames)
        stages["read"] = time.perf_counter() - mark

    # 4. Latents → trajectory (cached), then → edited latents.
    forwards: dict[str, int] = {}
    inversion, inversion_path, trajectory = "none", None, None
    inversion_engines: dict[str, str] = {}
    if editor.needs_inversion:
        mark = time.perf_counter()
        with profiling.stage("invert"):
            trajectory, inversion, inversion_path, used, inversion_engines = invert_latents(
                model, config, checked, latents, frames_sha, embeds[SOURCE], reporter
            )
        forwards.update(used)
        stages["invert"] = time.perf_counter() - mark
    mark = time.perf_counter()
    controls = load_controls(model, config, checked, frames_sha, reporter, nets=controlnets)
    checkpoints = checkpoints_for(
        model, config.replace(batch_size=given_batch), checked, frames_sha, inversion, reporter, controls
    )
    edited, used, steps_run, engines = edit_latents(
        model, config, checked, latents, trajectory, embeds, reporter, checkpoints=checkpoints, controls=controls
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
        forwards=Forwards(forwards),
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
        controls=[] if controls is None else controls.described(config),
    )


def _size_note(config: RunConfig, clip: Clip, output: Path, written: tuple[int, int]) -> str:
    """Why the written size is not the one asked for (empty when it is)."""
    source = config.output_size == "source"
    asked = (clip.info.width, clip.info.height) if source else requested_output_size(config, clip)
    if asked == written:
        return ""
    whose = "the source is" if source else "asked for"
    kind = output_format(output)
    return f"{whose} {asked[0]}x{asked[1]}; {kind.name if kind else 'this'} 4:2:0 video needs even sides"


def _aspect_note(clip: Clip, written: tuple[int, int]) -> str:
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


def _dropped(clip: Clip, output: Path, reporter: Reporter) -> list[str]:
    """What of the source the output will not hold; audio the output cannot carry is a warning."""
    no_audio = no_audio_track(output)
    if clip.info.has_audio and no_audio:
        reporter.warning(f"{output}: {no_audio}, so the audio of {clip.info.path} is dropped")
    return lost_in_writing(clip.info, output)


def _timing_note(config: RunConfig, clip: Clip, output: Path, reporter: Reporter) -> str:
    """Say how a variable-rate source is timed in the output, and where the output's format
    cannot time frames exactly; warn when frames are dropped or will not play at their pace."""
    kept, too_fast = frame_timing(output, clip.fps, keep_timestamps=config.keep_timestamps)
    if too_fast:
        reporter.warning(too_fast)
    source = _source_timing_note(config, clip, reporter)
    return "; ".join(note for note in (source, kept) if note)


def _source_timing_note(config: RunConfig, clip: Clip, reporter: Reporter) -> str:
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
