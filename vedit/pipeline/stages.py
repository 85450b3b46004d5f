"""The pipeline's stages, each callable alone with plain values between them: the clip read ahead
and encoded (:func:`encode_clip`), latents inverted into a trajectory through the engines and the
inversion cache (:func:`invert_latents`), the trajectory edited by the editor's plan and the
propagator's loop, with checkpoints (:func:`edit_latents`), and the edited latents decoded,
post-processed and written (:func:`write_frames`)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..cache.checkpoints import CheckpointStore, CheckpointWriter, checkpoint_key, inversion_file_identity
from ..cache.files import gb_to_bytes
from ..cache.inversions import InversionCache, cache_key
from ..config import RunConfig, option_label, option_value
from ..errors import ConfigError, InputError
from ..io.threads import ReadAhead, WriteBehind
from ..io.writer import VideoWriter
from ..method.ddim import invert
from ..method.denoise import EditJob, Step, denoise
from ..method.trajectory import Trajectory
from ..report import Reporter, open_task
from ..runtime import profiling
from ..runtime.batch_sizes import CPU_BATCH, choose_batches
from ..runtime.engine_cache import EngineCache
from ..runtime.runner import Passes, first_line
from ..runtime.transfer import to_device
from .plan import batches_of, branches, nearest_backend, pass_batches
from .preflight import Clip, Preflight, identity_mismatch, postprocess_context

if TYPE_CHECKING:
    from ..model.stable_diffusion import StableDiffusion

READ_AHEAD_BYTES = 256 * 2**20  # frames read ahead of the encoder while the model loads
WRITE_BEHIND_BATCHES = 3  # decoded batches waiting for the writer thread


def given_model(config: RunConfig, sd: Any, pipeline: Any) -> Any:
    """The model the caller handed over: ``sd`` (a loaded :class:`StableDiffusion`), or ``pipeline`` (a loaded
    diffusers pipeline, :func:`vedit.model.pipelines.from_pipeline`) on ``config``'s device and dtype; None."""
    if pipeline is None:
        return sd
    if sd is not None:
        raise ConfigError("pass either sd= or pipeline=, not both")
    from ..model.pipelines import from_pipeline

    return from_pipeline(pipeline, device=config.device, dtype=config.dtype)


def load_model_for(
    config: RunConfig, preflight: Preflight, sd: Any = None, reporter: Reporter | None = None
) -> StableDiffusion:
    """The model (loaded, with the run's LoRAs and embeddings, unless given)."""
    from ..model.loading import load_model

    if sd is not None:
        return sd
    return load_model(
        config.model, device=preflight.device, dtype=preflight.dtype, revision=config.revision,
        model_config=config.model_config, lora=config.lora, embeddings=config.embedding,
        warn=reporter.warning if reporter is not None else None,
    )  # fmt: skip


def make_passes(
    model: Any,
    config: RunConfig,
    checked: Preflight,
    reporter: Reporter,
    *,
    conv_layers: tuple[str, ...] = (),
    qk_layers: tuple[str, ...] = (),
    nearest: Any = None,
    batches: dict[str, list[int]] | None = None,
    controlnets: Sequence[Any] = (),
) -> Passes:
    """The run's UNet passes, through the engines chosen in preflight (use as a context manager)."""
    cache = EngineCache.for_options(config.engine_cache, config.cache_dir, message=reporter.message)
    return Passes(
        model, checked.engines, strict=checked.strict_engine, conv_layers=conv_layers, qk_layers=qk_layers,
        nearest=nearest, cache=cache, message=reporter.message, warn=reporter.warning, batches=batches,
        controlnets=controlnets,
    )  # fmt: skip


@dataclass
class Controls:
    """A run's structure guidance: its ControlNets and, for each, the control frames of the frames it edits."""

    sources: list[Any]  # vedit.control.sources.ControlSource, as --control gave them
    nets: list[Any]  # vedit.control.controlnets.LoadedControlNet, paired with the sources
    frames: list[Any]  # (N, H, W, 3) uint8 arrays, one per source
    window: tuple[float, float]  # --control-start, --control-end

    @cached_property
    def digest(self) -> str:
        """The frames, weights, scales and window: what checkpoint keys cover of the controls. Made when asked
        (a run that keeps checkpoints), since it reads every control frame."""
        digest = hashlib.sha256()
        for source, net, array in zip(self.sources, self.nets, self.frames):
            digest.update(f"{source.scale}\0{net.fingerprint}\0{array.shape}\n".encode())
            for start in range(0, len(array), 64):  # memory-mapped frames are read a few at a time
                digest.update(np.ascontiguousarray(array[start : start + 64]).tobytes())
        digest.update(f"{self.window[0]}\0{self.window[1]}".encode())
        return digest.hexdigest()

    def described(self, config: RunConfig) -> list[str]:
        """Each control as the run's summary names it: ``canny ×0.8 via ID, steps 0–0.8``."""
        window = (
            ""
            if (config.control_start, config.control_end) == (0.0, 1.0)
            else (f", steps {config.control_start:g}–{config.control_end:g}")
        )
        return [f"{s.label} ×{s.scale:g} via {n.source}{window}" for s, n in zip(self.sources, self.nets)]

    def feed(self, steps: int, config: RunConfig, device: torch.device) -> Any:
        """The loop's :class:`~vedit.method.control.ControlFeed` for ``steps`` steps run."""
        from ..control.sources import step_scales
        from ..method.control import ControlFeed

        scales = step_scales(steps, [s.scale for s in self.sources], config.control_start, config.control_end)
        return ControlFeed(self.frames, scales, device)


def load_controlnets(model: StableDiffusion, config: RunConfig, checked: Preflight) -> list[Any]:
    """The run's ControlNets (:class:`~vedit.control.controlnets.LoadedControlNet`, one per ``--control``), loaded
    and checked against the model: called as soon as the model is loaded, so that a ControlNet that does not fit
    ends the run before any frame is encoded or inverted.

    A model used for edit after edit (``vedit batch``'s workers) keeps the last run's ControlNets: the next run
    takes those it names again, unchanged on disk (:func:`~vedit.control.controlnets.controlnet_identity`), instead
    of loading and hashing them again, and lets the others go."""
    from .. import plugins
    from ..control.controlnets import controlnet_identity, load_controlnet

    kept = model.last_controlnets
    used: dict[Any, Any] = {}
    nets = []
    for source in getattr(checked, "controls", None) or []:
        spec = source.controlnet
        if spec is None:
            annotator = plugins.get("annotator", source.annotator, config=config)
            spec = annotator.controlnet_for(model.family.name)
            if spec is None:
                raise ConfigError(
                    f"{option_value('control', source.text)}: annotator {source.annotator!r} names no ControlNet "
                    f"for {model.family.name} models: pass "
                    f"{option_value('controlnet', 'ID_OR_PATH', placeholder=True)} in the same position"
                )
        identity = controlnet_identity(spec)
        if identity not in used:
            with profiling.stage("load"):
                used[identity] = kept.get(identity) or load_controlnet(spec, model)
        nets.append(used[identity])
    model.last_controlnets = used
    return nets


def load_controls(
    model: StableDiffusion,
    config: RunConfig,
    checked: Preflight,
    frames_sha: str,
    reporter: Reporter,
    *,
    frames: list[int] | None = None,
    nets: list[Any] | None = None,
) -> Controls | None:
    """The run's controls: its ControlNets (``nets``, else loaded now: :func:`load_controlnets`) and their control
    frames (read, or made by the annotators and cached); ``frames``: only those of the run's frames (a preview).
    None without controls."""
    sources = getattr(checked, "controls", None) or []
    if not sources:
        return None
    from ..control.frames import control_frames

    if nets is None:
        nets = load_controlnets(model, config, checked)
    made = control_frames(sources, config, checked.clip, frames_sha, reporter, frames=frames)
    return Controls(list(sources), nets, list(made), (config.control_start, config.control_end))


def pixel_size(clip: Clip) -> tuple[int, int]:
    """(height, width) in pixels of the frames the model sees: what a family's conditioning may depend on."""
    width, height = clip.reader.size
    return height, width


def warn_long_prompts(model: StableDiffusion, config: RunConfig, reporter: Reporter, keys: tuple[str, ...]) -> None:
    """Warn of each prompt option among ``keys`` that the text encoder cuts: where, and what it ignores."""
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
    model: StableDiffusion, clip: Clip, batch_size: int, reporter: Reporter, batches: Iterable[np.ndarray] | None = None
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


def reading_batch(config: RunConfig) -> int:
    """Frames per batch handed from the reader thread (before the model is loaded and the VAE's
    batch is known)."""
    return config.batch_size if isinstance(config.batch_size, int) else CPU_BATCH


def _with_batch_size(config: RunConfig, model: Any, latents: torch.Tensor, branches: int = 1) -> RunConfig:
    """``config`` with ``--batch-size auto`` resolved, for the stage functions called on their own."""
    if isinstance(config.batch_size, int):
        return config
    size = (latents.shape[-1] * model.vae_scale_factor, latents.shape[-2] * model.vae_scale_factor)
    return config.replace(batch_size=choose_batches(model, config.batch_size, len(latents), size, branches).unet)


def read_ahead(clip: Clip, batch_size: int, budget_bytes: int = READ_AHEAD_BYTES) -> ReadAhead[np.ndarray]:
    """Start reading the clip's frames on a thread, at most ``budget_bytes`` of them ahead of the
    encoder, so that reading overlaps loading the model."""
    width, height = clip.reader.size
    depth = max(2, budget_bytes // max(1, batch_size * width * height * 3))
    return ReadAhead(clip.reader.batches(batch_size), depth)


def plain_unet(passes: Passes, kind: str) -> Callable:
    """The plain pass as the ``unet(latents, t, text)`` that DDIM inversion and sampling call, its
    forwards counted as ``kind``."""

    def run(latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return passes.plain(latents, t.reshape(()), text, kind=kind)

    return run


def inversion_cache(config: RunConfig, reporter: Reporter) -> InversionCache:
    """The run's inversion cache (``--cache-dir``, kept within ``--cache-max-gb``)."""
    return InversionCache(config.cache_dir, max_bytes=gb_to_bytes(config.cache_max_gb), warn=reporter.warning)


def inversion_key(model: StableDiffusion, config: RunConfig, clip: Clip, frames_sha: str) -> str:
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


def trajectory_for(
    model: StableDiffusion,
    config: RunConfig,
    clip: Clip,
    latents: torch.Tensor,
    frames_sha: str,
    source_embeds: torch.Tensor,
    passes: Passes,
    reporter: Reporter,
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
            identity_mismatch(
                config,
                f"it was made with model {meta.get('model', '?')} ({meta['fingerprint']}), "
                f"this run uses {model.model_id} ({model.fingerprint})",
                reporter,
            )
        if meta.get("frames_sha256") and meta["frames_sha256"] != frames_sha:
            identity_mismatch(
                config,
                f"it was made from other frames ({meta.get('source', 'another clip')}, "
                f"content {meta['frames_sha256'][:12]}; these are {frames_sha[:12]})",
                reporter,
            )
        return trajectory, "file", Path(config.inversion)
    key = inversion_key(model, config, clip, frames_sha)
    cache = inversion_cache(config, reporter)
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
        plain_unet(passes, "inversion"),
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

    from ..method.trajectory import TrajectoryWriter

    def failed(reason: str) -> None:
        reporter.message(f"cannot write a temporary trajectory file ({reason}); holding it in memory")

    try:
        return TrajectoryWriter(None, metadata, folder=tempfile.gettempdir(), on_failure=failed)
    except OSError as error:
        failed(error.strerror or str(error))
        return None


def invert_latents(
    model: StableDiffusion,
    config: RunConfig,
    checked: Preflight,
    latents: torch.Tensor,
    frames_sha: str,
    source_embeds: torch.Tensor,
    reporter: Reporter,
) -> tuple[Trajectory, str, Path | None, dict[str, int], dict[str, str]]:
    """Stage latents → trajectory: from --inversion, the cache, or computed now through the
    engines (and cached). Returns the trajectory, how it was had, its file, UNet forwards and the
    engine that ran each pass."""
    config = _with_batch_size(config, model, latents)
    batches = {"plain": batches_of(len(latents), config.batch_size)}
    with make_passes(model, config, checked, reporter, batches=batches) as plain:
        trajectory, how, path = trajectory_for(
            model, config, checked.clip, latents, frames_sha, source_embeds, plain, reporter
        )
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


def checkpoints_for(
    model: StableDiffusion,
    config: RunConfig,
    checked: Preflight,
    frames_sha: str,
    inversion: str,
    reporter: Reporter,
    controls: Controls | None = None,
) -> Checkpointing | None:
    """The run's checkpoints, unless --checkpoint-every 0 or --no-cache turn them off. ``config``
    is the run's as given (``--batch-size auto`` unresolved: free memory must not change the key);
    ``controls`` enter the key by content."""
    if config.checkpoint_every == 0 or config.no_cache:
        return None
    if config.inversion:
        trajectory = inversion_file_identity(config.inversion)
    elif inversion != "none":
        trajectory = inversion_key(model, config, checked.clip, frames_sha)
    else:
        trajectory = ""
    key = checkpoint_key(
        config, frames_sha256=frames_sha, fingerprint=model.fingerprint, dtype=str(model.dtype).removeprefix("torch."),
        device=model.device.type, trajectory=trajectory, controls="" if controls is None else controls.digest,
    )  # fmt: skip
    width, height = checked.clip.reader.size
    metadata = {
        "source": str(Path(checked.clip.info.path).resolve()), "prompt": config.prompt or "", "model": model.model_id,
        "frames": str(len(checked.clip.reader)), "width": str(width), "height": str(height),
        "editor": f"{config.editor} + {config.propagator}", "seed": str(config.seed),
    }  # fmt: skip
    return Checkpointing(
        CheckpointStore(config.cache_dir, warn=reporter.warning), key, config.checkpoint_every, metadata
    )


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
        propagator.begin(job.for_plugin(propagator), plan)
        try:
            propagator.load_state_dict(found.state)
        except Exception as error:
            reporter.warning(
                f"checkpoint {checkpoints.path} holds a state propagator {propagator.name!r} cannot take "
                f"({first_line(error)}); starting from the first step"
            )
            checkpoints.store.remove(checkpoints.key)
            return None
    reporter.message(f"resuming from the checkpoint after step {found.step} of {found.steps} ({checkpoints.path})")
    return found


def edit_latents(
    model: StableDiffusion,
    config: RunConfig,
    checked: Preflight,
    latents: torch.Tensor,
    trajectory: Trajectory | None,
    embeds: dict[str, torch.Tensor],
    reporter: Reporter,
    *,
    checkpoints: Checkpointing | None = None,
    controls: Controls | None = None,
) -> tuple[torch.Tensor, dict[str, int], int, dict[str, str]]:
    """Stage trajectory → edited latents: the editor's plan and the propagator-coupled denoising
    loop, every UNet call through the engines. Returns the edited clean latents, UNet forwards by
    kind, the steps run and the engine that ran each pass.

    With ``checkpoints`` the loop resumes from the run's checkpoint when there is one (setting
    ``checkpoints.resumed_from``) and writes one every ``checkpoints.every`` steps and after the
    last; the caller removes it (:meth:`Checkpointing.finish`) once the output is written. ``controls`` guide
    every UNet call of the loop.
    """
    editor, propagator = checked.editor, checked.propagator
    config = _with_batch_size(config, model, latents, branches(editor, propagator, config))
    # A diffusers DDIMScheduler; typed Any since mypy reads `diffusers.DDIMScheduler` as diffusers' dummy class.
    scheduler: Any = model.new_scheduler()
    scheduler.set_timesteps(config.steps)
    job = EditJob(
        config=config, model=model, scheduler=scheduler, clean_latents=latents, trajectory=trajectory,
        generator=torch.Generator().manual_seed(config.seed),
    )  # fmt: skip
    job = job.for_plugin(editor)
    plan = editor.plan(job)
    # A Python search backend takes the propagation pass out of a compiled graph: auto may choose
    # one only when the passes run eagerly anyway.
    eager_only = all(getattr(engine, "name", "") == "eager" for engine in checked.engines)
    tokens = latents.shape[-2] * latents.shape[-1] if eager_only else None
    nearest = nearest_backend(propagator, config, model.device, tokens)
    batches = pass_batches(config, len(latents), editor, propagator)
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
            batches=batches, controlnets=controls.nets if controls is not None else (),
        ) as passes:  # fmt: skip
            edited = denoise(
                job, plan, propagator, passes, embeds, on_step=lambda step: task.advance(1), resume=resume,
                after_step=keep if writer is not None else None,
                control=controls.feed(steps, config, model.device) if controls is not None else None,
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
    model: StableDiffusion,
    config: RunConfig,
    checked: Preflight,
    edited: torch.Tensor,
    output: Path,
    size: tuple[int, int],
    reporter: Reporter,
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
    with Chain(checked.postprocessors, postprocess_context(config, clip, edited.shape[0])) as chain, VideoWriter(
        output, fps=clip.fps, size=size, audio_from=audio_from, audio_range=clip.audio_range(),
        color=clip.info.color, timestamps=timestamps, overwrite=config.overwrite,
    ) as writer:  # fmt: skip

        def finish(item: tuple[int, torch.Tensor] | None) -> None:
            with profiling.stage("postprocess", sync=False):
                if item is end:
                    frames = chain.finish()
                else:
                    start, images = item
                    frames = chain.push(to_uint8(images), start)
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


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(b, 3, H, W) in [0, 1] → (b, H, W, 3) uint8."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
