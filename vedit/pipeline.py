"""The edit pipeline: read the clip → (invert, cached) → editor plan → propagator-coupled denoising
→ decode → post-processors → write. :func:`edit` is what ``vedit run`` does."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from . import plugins
from .attention import PlainAttention
from .config import RunConfig, load_config
from .denoise import EditJob, denoise
from .errors import ConfigError, InputError
from .inversion import InversionCache, Trajectory, cache_key, invert
from .unet import COND, SOURCE, UNCOND, CallContext, ControlledUNet
from .video import FrameRange, FrameReader, VideoWriter, check_output_path, parse_size, probe, working_size


class Task(Protocol):
    def advance(self, amount: int = 1) -> None: ...


class Reporter(Protocol):
    """Receives progress: the CLI shows rich bars, the Python API reports nothing by default."""

    def task(self, description: str, total: int | None) -> Task: ...

    def message(self, text: str) -> None: ...


class _Silent:
    def task(self, description: str, total: int | None) -> "_Silent":
        return self

    def advance(self, amount: int = 1) -> None:
        pass

    def message(self, text: str) -> None:
        pass


@dataclass
class EditResult:
    """What an edit produced, and what it cost."""

    output: Path
    frames: int
    size: tuple[int, int]  # working size (W, H)
    output_size: tuple[int, int]
    fps: Fraction
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    forwards: dict[str, int] = field(default_factory=dict)  # UNet image-forwards by pass
    steps_run: int = 0
    inversion: str = "none"  # "none", "computed", "cached" or "file"

    @property
    def forwards_per_frame_step(self) -> float:
        """UNet image-forwards per frame per denoising step (inversion excluded)."""
        edit = sum(v for k, v in self.forwards.items() if k != "inversion")
        return edit / max(1, self.frames * self.steps_run)


@dataclass
class _Clip:
    reader: FrameReader
    info: Any
    fps: Fraction
    audio_range: tuple[float, float]


def _parse_fps(text: str) -> Fraction:
    try:
        fps = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"--fps {text!r} is not a frame rate (e.g. 24, 30000/1001, 29.97)") from None
    if fps <= 0:
        raise ConfigError(f"--fps must be positive, got {text}")
    return fps


def open_clip(input_path: str | os.PathLike, config: RunConfig) -> _Clip:
    """Probe the input and set up the frame reader; fails before any heavy work."""
    info = probe(input_path)
    selection = FrameRange.parse(config.frames, config.max_frames)
    size = working_size(info.width, info.height, parse_size(config.size)) if config.size else None
    reader = FrameReader(input_path, frames=selection, size=size, info=info)
    if len(reader.indices) == 0:
        raise InputError(f"{input_path}: no frames selected (the clip has {info.num_frames}; check --frames/--max-frames)")
    source_fps = _parse_fps(config.fps) if config.fps else info.fps
    fps = source_fps / selection.step
    first = reader.indices[0]
    last = reader.indices[-1]
    audio_range = (float(first / info.fps), float((last + selection.step) / info.fps))
    return _Clip(reader=reader, info=info, fps=fps, audio_range=audio_range)


def _output_size(config: RunConfig, clip: _Clip) -> tuple[int, int]:
    if config.output_size == "source":
        return (clip.info.width, clip.info.height)
    if config.output_size == "working":
        return clip.reader.size
    return parse_size(config.output_size)


def _check_plugins(config: RunConfig) -> tuple[Any, Any]:
    editor = plugins.get("editor", config.editor)
    propagator = plugins.get("propagator", config.propagator)
    for name in _postprocessor_names(config):
        plugins.get("postprocessor", name)
    validate = getattr(propagator, "validate", None)
    if validate is not None:
        validate(config)
    return editor, propagator


def _postprocessor_names(config: RunConfig) -> list[str]:
    return [n.strip() for n in (config.postprocess or "").split(",") if n.strip()]


def _load(config: RunConfig, sd: Any = None):
    """The model (loaded unless given), prepared by the chosen engine."""
    from .models import load_model

    model = sd
    if model is None:
        model = load_model(config.model, device=config.device, dtype=config.dtype, revision=config.revision, seed=config.seed)
    engine = plugins.choose("engine", config.engine, model.device)
    engine.prepare(model, config)
    return model


def _read_latents(model, clip: _Clip, batch_size: int, reporter: Reporter) -> tuple[torch.Tensor, str]:
    """Stream the frames through the VAE encoder; returns (N, 4, h, w) latents and the frames' sha256."""
    digest = hashlib.sha256()
    latents = []
    task = reporter.task("read + encode", len(clip.reader))
    for batch in clip.reader.batches(batch_size):  # (b, H, W, 3) uint8
        digest.update(batch.tobytes())
        images = torch.from_numpy(batch).permute(0, 3, 1, 2).to(model.device, torch.float32) / 255.0
        latents.append(model.encode_images(images.to(model.dtype), batch_size=batch_size))
        task.advance(len(batch))
    if not latents:
        raise InputError(f"{clip.info.path}: no frame could be decoded")
    return torch.cat(latents), digest.hexdigest()


def _plain_unet(controlled: ControlledUNet, kind: str) -> Callable:
    def run(latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        ctx = CallContext(branches=(SOURCE,), frames=latents.shape[0], attention=PlainAttention())
        return controlled(latents, t, text, ctx, kind=kind)

    return run


def _trajectory(
    model, config: RunConfig, clip: _Clip, latents: torch.Tensor, frames_sha: str, source_embeds, controlled, reporter
) -> tuple[Trajectory, str]:
    if config.inversion:
        trajectory = Trajectory.load(config.inversion)
        if trajectory.clean.shape != latents.shape:
            raise InputError(
                f"inversion file {config.inversion} holds latents {tuple(trajectory.clean.shape)}, "
                f"but the selected frames give {tuple(latents.shape)}: use the same --frames and --size"
            )
        return trajectory, "file"
    key = cache_key(
        frames_sha256=frames_sha,
        fingerprint=model.fingerprint,
        size=clip.reader.size,
        inversion_steps=config.inversion_steps,
        steps=config.steps,
        source_prompt=config.source_prompt,
        dtype=str(model.dtype).removeprefix("torch."),
    )
    cache = InversionCache(config.cache_dir)
    if not config.no_cache:
        cached = cache.get(key)
        if cached is not None:
            reporter.message(f"reusing cached inversion {cache.path(key)}")
            return cached, "cached"
    task = reporter.task("invert", config.inversion_steps)
    trajectory = invert(
        _plain_unet(controlled, "inversion"),
        model.new_scheduler(),
        latents,
        source_embeds,
        inversion_steps=config.inversion_steps,
        steps=config.steps,
        batch_size=config.batch_size,
        on_step=lambda done, total: task.advance(1),
    )
    trajectory.metadata.update(
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
        source=str(clip.info.path),
    )
    if not config.no_cache:
        cache.put(key, trajectory)
    return trajectory, "computed"


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(b, 3, H, W) in [0, 1] → (b, H, W, 3) uint8."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _resolve(config: RunConfig | None, options: dict[str, Any]) -> RunConfig:
    if config is None:
        return load_config(**options)
    return config.replace(**options) if options else config


@torch.no_grad()
def edit(
    input: str | os.PathLike,
    output: str | os.PathLike,
    config: RunConfig | None = None,
    *,
    reporter: Reporter | None = None,
    sd: Any = None,
    **options: Any,
) -> EditResult:
    """Edit ``input`` into ``output``; options are :class:`~vedit.config.RunConfig` fields.

    Example: ``vedit.edit("clip.mp4", "out.mp4", prompt="a watercolor painting", model="tiny")``.
    Without ``config``, ``vedit.toml`` in the working directory supplies defaults. ``sd`` is an
    already loaded :class:`~vedit.models.StableDiffusion`, to reuse one model across edits.
    """
    config = _resolve(config, options)
    reporter = reporter or _Silent()
    began = time.perf_counter()
    stages: dict[str, float] = {}
    if not config.prompt:
        raise ConfigError("a target prompt is required: pass --prompt TEXT")

    # 1. Check everything a user can get wrong before any heavy work.
    clip = open_clip(input, config)
    output = check_output_path(output, input)
    editor, propagator = _check_plugins(config)
    output_size = _output_size(config, clip)

    # 2. Model and prompts.
    mark = time.perf_counter()
    model = _load(config, sd)
    embeds = dict(zip((SOURCE, UNCOND, COND), model.encode_prompt([config.source_prompt, config.negative_prompt, config.prompt]).split(1)))
    stages["load"] = time.perf_counter() - mark

    # 3. Frames → latents.
    mark = time.perf_counter()
    latents, frames_sha = _read_latents(model, clip, config.batch_size, reporter)
    stages["read"] = time.perf_counter() - mark

    # 4. Inversion (cached), then the editor's plan and the coupled denoising loop.
    forwards: dict[str, int] = {}
    inversion = "none"
    trajectory = None
    if editor.needs_inversion:
        mark = time.perf_counter()
        with ControlledUNet(model.unet) as plain:
            trajectory, inversion = _trajectory(model, config, clip, latents, frames_sha, embeds[SOURCE], plain, reporter)
        forwards.update(plain.forwards)
        stages["invert"] = time.perf_counter() - mark
    mark = time.perf_counter()
    scheduler = model.new_scheduler()
    scheduler.set_timesteps(config.steps)
    job = EditJob(
        config=config,
        model=model,
        scheduler=scheduler,
        clean_latents=latents,
        trajectory=trajectory,
        generator=torch.Generator().manual_seed(config.seed),
    )
    plan = editor.plan(job)
    task = reporter.task("denoise", len(plan.timesteps))
    with ControlledUNet(model.unet, conv_layers=plan.conv_layers, qk_layers=plan.qk_layers) as controlled:
        edited = denoise(job, plan, propagator, controlled, embeds, on_step=lambda step: task.advance(1))
        for kind, count in controlled.forwards.items():
            forwards[kind] = forwards.get(kind, 0) + count
    stages["denoise"] = time.perf_counter() - mark

    # 5. Decode, post-process and write (atomically).
    mark = time.perf_counter()
    postprocessors = [plugins.get("postprocessor", name) for name in _postprocessor_names(config)]
    audio_from = clip.info if clip.info.has_audio else None
    task = reporter.task("decode + write", edited.shape[0])
    with VideoWriter(output, fps=clip.fps, size=output_size, audio_from=audio_from, audio_range=clip.audio_range) as writer:
        for start in range(0, edited.shape[0], config.batch_size):
            frames = _to_uint8(model.decode_latents(edited[start : start + config.batch_size], batch_size=config.batch_size))
            for post in postprocessors:
                frames = post.process(frames, start)
            writer.write(frames)
            task.advance(len(frames))
    stages["write"] = time.perf_counter() - mark

    return EditResult(
        output=Path(output),
        frames=edited.shape[0],
        size=clip.reader.size,
        output_size=output_size,
        fps=clip.fps,
        seconds=time.perf_counter() - began,
        stage_seconds=stages,
        forwards=forwards,
        steps_run=len(plan.timesteps),
        inversion=inversion,
    )


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
    config = _resolve(config, options)
    reporter = reporter or _Silent()
    clip = open_clip(input, config)
    if output is not None:
        output = Path(output)
        if output.suffix != ".safetensors":
            raise ConfigError(f"{output}: an inversion file must end in .safetensors")
        if not output.parent.is_dir():
            raise ConfigError(f"{output}: folder {output.parent} does not exist")
    model = _load(config, sd)
    (source_embeds,) = model.encode_prompt([config.source_prompt]).split(1)
    latents, frames_sha = _read_latents(model, clip, config.batch_size, reporter)
    reconstruction = None
    with ControlledUNet(model.unet) as plain:
        trajectory, how = _trajectory(model, config.replace(inversion=None), clip, latents, frames_sha, source_embeds, plain, reporter)
        if check:
            reconstruction = reconstruction_psnr(model, config, clip, trajectory, source_embeds, plain, reporter)
    written = trajectory.save(output) if output is not None else None
    return InversionResult(trajectory=trajectory, how=how, path=written, reconstruction=reconstruction)


@dataclass
class InversionResult:
    """What :func:`invert_clip` produced."""

    trajectory: Trajectory
    how: str  # "computed" or "cached"
    path: Path | None  # the file written with ``output``
    reconstruction: "Reconstruction | None" = None  # with ``check``


@dataclass
class Reconstruction:
    """How well the inversion reproduces the clip: PSNR against the input frames, in dB."""

    psnr: float  # decode(DDIM sampling from z_T with the source prompt) vs the frames
    vae_psnr: float  # decode(z_0) vs the frames: the autoencoder's own loss, a ceiling for the above


def reconstruction_psnr(model, config, clip, trajectory, source_embeds, controlled, reporter) -> Reconstruction:
    """Sample back from the inverted noise and compare the decoded frames with the clip's."""
    from .inversion import reconstruct

    task = reporter.task("reconstruct", 1)
    z0 = reconstruct(
        _plain_unet(controlled, "reconstruction"), model.new_scheduler(), trajectory, source_embeds,
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


__all__ = ["edit", "invert_clip", "EditResult", "InversionResult", "Reconstruction", "Reporter", "open_clip"]
