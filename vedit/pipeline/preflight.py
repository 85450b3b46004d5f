"""Everything a run checks and opens before any heavy work: the options resolved, the input clip
opened (:class:`Clip`), output size and frame rate parsed, the plugins and engines found and an
``--inversion`` file checked against the run (:func:`preflight`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
from diffusers import DDIMScheduler

from .. import plugins
from ..config import RunConfig, check_numbers, given_names, load_config, merge, option_label, option_value, validate
from ..errors import ConfigError
from ..io.frames import FrameRange, parse_size, working_size
from ..io.probe import probe
from ..io.reader import FrameReader
from ..method.ddim import check_schedules, sampling_timesteps
from ..method.denoise import RunShape
from ..method.trajectory import RUN_FIELDS, read_metadata
from ..model.builders import SD_SCHEDULER_CONFIG
from ..plugins.options import configure, unused_options
from ..report import Reporter, Task, open_task
from ..runtime.runner import engine_chain


class Recording:
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


def resolve_config(config: RunConfig | None, options: dict[str, Any]) -> RunConfig:
    """A run's options: ``config`` with the keyword ``options`` checked and set over it (recorded as
    given), or ``vedit.toml``'s and the defaults with them when there is no ``config``."""
    if config is None:
        return load_config(**options)
    if not options:
        return config
    given = validate(options)
    return config.replace(**merge({"options": config.options}, given)).giving(given_names(given))


@dataclass
class Clip:
    """The opened input: its frame reader, its probe, and the frame rate of the frames selected."""

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


def open_clip(input_path: str | os.PathLike, config: RunConfig) -> Clip:
    """Probe the input and set up the frame reader; fails before any heavy work."""
    info = probe(input_path)
    selection = FrameRange.parse(config.frames, config.max_frames)
    size = working_size(info.width, info.height, parse_size(config.size)) if config.size else None
    source_fps = _parse_fps(config.fps) if config.fps else info.fps
    reader = FrameReader(
        input_path, frames=selection, size=size, info=info, allow_short=config.allow_short,
        keep_timestamps=config.keep_timestamps,
    )  # fmt: skip
    return Clip(reader=reader, info=info, fps=source_fps / selection.step)


def requested_output_size(config: RunConfig, clip: Clip) -> tuple[int | Fraction, int | Fraction]:
    """The (W, H) that ``--output-size`` asks for (``source``: exact, for non-square pixels), before it is
    fitted to what the output's format holds (:func:`vedit.io.video.written_size`)."""
    if config.output_size == "source":
        return clip.info.exact_size  # non-square pixels are written square, at the size they show
    if config.output_size == "working":
        return clip.reader.size
    return parse_size(config.output_size, option_label("output_size"))


def postprocess_context(config: RunConfig, clip: Clip, frames: int | None = None) -> Any:
    """The :class:`vedit.quality.postprocess.Context` of a run: post-processors see the decoded frames at
    the working size, so the source frames they may ask for are read again at that size."""
    from ..quality.postprocess import Context

    count = len(clip.reader) if frames is None else frames
    return Context(
        fps=clip.fps, size=clip.reader.size, frames=count, flow=config.flow, source=clip.reader.matching,
        config=config,
    )  # fmt: skip


def _resolve_postprocessors(config: RunConfig, clip: Clip) -> list[Any]:
    """``--postprocess`` found, parsed and checked (one-line errors): vedit.quality.postprocess.Step each."""
    from ..quality.postprocess import resolve

    return resolve(config.postprocess, postprocess_context(config, clip), config)


@dataclass
class Preflight:
    """Everything checked, resolved and opened before any heavy work."""

    clip: Clip
    editor: Any
    propagator: Any
    postprocessors: list[Any]  # vedit.quality.postprocess.Step: found, settings parsed and checked
    engines: list[Any]  # to try in order, ending at eager unless strict
    strict_engine: bool  # one engine named alone: its failure is an error
    device: torch.device
    dtype: torch.dtype
    steps_run: int
    inversion_metadata: dict[str, str] | None  # of the --inversion file
    controls: list[Any] = field(default_factory=list)  # vedit.control.sources.ControlSource, checked


def preflight(
    input: str | os.PathLike, config: RunConfig, reporter: Reporter, *, sd: Any = None, editing: bool = True
) -> Preflight:
    """Check every option and option combination that can be checked from the options and the
    clip's probe, so that a mistake ends in one line before the model loads or a frame is read.

    Public: tools that drive many edits (``vedit batch``) check each with it before any work.
    ``editing=False`` checks an inversion only (no editor, propagator or post-processors)."""
    from ..control.frames import check_controls
    from ..model.device import resolve_device, resolve_dtype
    from ..model.loading import peek_scheduler
    from ..model.single_file import check_checkpoint_file

    check_numbers(config)  # a RunConfig built by hand has not been validated
    _check_adapters(config, sd)
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
    configure([*engines, editor, propagator], config)
    if editing:
        for note in unused_options(config, {"editor": editor.name, "propagator": propagator.name}):
            reporter.warning(note)
    postprocessors = _resolve_postprocessors(config, clip) if editing else []
    controls = check_controls(config, clip, reporter=reporter) if editing else []
    if editing:
        requested_output_size(config, clip)
        if config.eval:
            from ..quality.evaluate import check_eval

            check_eval(config, reporter)
    if sd is None:
        for note in check_checkpoint_file(config.model, config.model_config):
            reporter.warning(note)
    # The model's own schedule when its config is at hand, else SD's: checked again after loading.
    scheduler = (
        sd.new_scheduler() if sd is not None else peek_scheduler(config.model, config.revision, config.model_config)
    )
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
    return Preflight(
        clip, editor, propagator, postprocessors, engines, strict_engine, device, dtype, steps_run, metadata, controls
    )


def _check_inversion_file(
    config: RunConfig, metadata: dict[str, str], clip: Clip, timesteps: list[int], reporter: Reporter
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
        identity_mismatch(
            config,
            f"it was made with {option_label('source_prompt')} {metadata.get('source_prompt', '')!r}, "
            f"this run's is {config.source_prompt!r}",
            reporter,
        )


def _check_adapters(config: RunConfig, sd: Any) -> None:
    """LoRAs and embeddings that can be checked before the model loads: their values and files. A model passed
    in (``sd``, as batch's workers pass the one they hold) must have been loaded with them."""
    from ..model.adapters import adapters_fingerprint, check_adapters, check_embedding_tokens
    from ..model.loading import peek_tokenizer

    if not (config.lora or config.embedding):
        return
    check_adapters(config.lora, config.embedding)
    if config.embedding and sd is None:
        tokenizer = peek_tokenizer(config.model, config.revision, config.model_config)
        if tokenizer is not None:
            check_embedding_tokens(config.embedding, tokenizer.get_vocab())
    if sd is not None and not sd.fingerprint.endswith(adapters_fingerprint(config.lora, config.embedding)):
        raise ConfigError(
            f"{option_label('lora')} and {option_label('embedding')} apply when vedit loads the model, and the model "
            "passed in was loaded without them: load it with vedit.model.loading.load_model(..., lora=[...], "
            "embeddings=[...]) and pass that"
        )


def identity_mismatch(config: RunConfig, what: str, reporter: Reporter) -> None:
    """A trajectory made from another clip, model or prompt: refused, or used with a warning when forced."""
    if config.force_inversion:
        forced = option_value("force_inversion", True)
        reporter.warning(f"inversion file {config.inversion}: {what}; using it anyway ({forced})")
        return
    raise ConfigError(
        f"inversion file {config.inversion} does not fit this run: {what}; "
        f"pass {option_value('force_inversion', True)} to use it anyway"
    )
