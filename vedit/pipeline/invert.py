"""What ``vedit invert`` does: :func:`invert_clip` inverts a clip (or finds its cached inversion),
optionally writes the trajectory to a file, and measures how well it reconstructs the clip."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import RunConfig
from ..errors import ConfigError, OutputError
from ..io.files import check_replaceable
from ..method.ddim import check_schedules
from ..method.trajectory import Trajectory
from ..report import Reporter, SilentReporter
from ..runtime.allocator import configure_allocator
from ..runtime.batch_sizes import choose_batches
from .plan import batches_of
from .preflight import Recording, preflight, resolve_config
from .stages import (
    encode_clip,
    given_model,
    load_model_for,
    make_passes,
    pixel_size,
    plain_unet,
    read_ahead,
    reading_batch,
    to_uint8,
    trajectory_for,
    warn_long_prompts,
)


def _check_trajectory_output(output: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an inversion file path that cannot be written, before any work: an existing file
    that is not a vedit trajectory is replaced only with ``overwrite``."""
    from ..method.trajectory import is_trajectory

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
    pipeline: Any = None,
    check: bool = False,
    **options: Any,
) -> InversionResult:
    """Invert ``input`` (or reuse the cached inversion); optionally also write it to ``output``.

    With ``check``, also sample back from the inverted noise and measure the reconstruction. ``sd`` and
    ``pipeline`` are as :func:`vedit.pipeline.edit.edit` takes them.
    """
    configure_allocator()  # once per process: importing vedit leaves the C allocator alone
    config = resolve_config(config, options).replace(inversion=None)
    reporter = Recording(reporter or SilentReporter())
    if output is not None:
        output = _check_trajectory_output(output, config.overwrite)
    sd = given_model(config, sd, pipeline)
    checked = preflight(input, config, reporter, sd=sd, editing=False)
    clip = checked.clip
    with read_ahead(clip, reading_batch(config)) as frames:  # reading overlaps loading the model
        model = load_model_for(config, checked, sd, reporter)
        batches = choose_batches(model, config.batch_size, len(clip.reader), clip.reader.size)
        config = config.replace(batch_size=batches.unet)
        check_schedules(model.new_scheduler(), config.steps, config.inversion_steps)
        warn_long_prompts(model, config, reporter, ("source_prompt",))
        (source_embeds,) = model.encode_prompt([config.source_prompt], pixel_size(clip)).split(1)
        latents, frames_sha = encode_clip(model, clip, batches.vae, reporter, batches=frames)
    reconstruction = None
    pass_batches = {"plain": batches_of(len(latents), batches.unet)}
    with make_passes(model, config, checked, reporter, batches=pass_batches) as plain:
        trajectory, how, cache_path = trajectory_for(
            model, config, clip, latents, frames_sha, source_embeds, plain, reporter
        )
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
    reconstruction: Reconstruction | None = None  # with ``check``
    cache_path: Path | None = None  # the cache entry read or written
    warnings: list[str] = field(default_factory=list)


@dataclass
class Reconstruction:
    """How well the inversion reproduces the clip: PSNR against the input frames, in dB."""

    psnr: float  # decode(DDIM sampling from z_T with the source prompt) vs the frames
    vae_psnr: float  # decode(z_0) vs the frames: the autoencoder's own loss, a ceiling for the above


def reconstruction_psnr(
    model: Any,
    config: RunConfig,
    clip: Any,
    trajectory: Trajectory,
    source_embeds: torch.Tensor,
    passes: Any,
    reporter: Reporter,
) -> Reconstruction:
    """Sample back from the inverted noise and compare the decoded frames with the clip's."""
    from ..method.ddim import reconstruct

    task = reporter.task("reconstruct", 1)
    z0 = reconstruct(
        plain_unet(passes, "reconstruction"),
        model.new_scheduler(),
        trajectory,
        source_embeds,
        inversion_steps=config.inversion_steps,
        batch_size=int(config.batch_size),  # a number by now: the caller chose it
        device=model.device,
    )
    task.advance(1)
    errors = {"sampled": 0.0, "vae": 0.0}
    count = 0
    start = 0
    for frames in clip.reader.batches(config.batch_size):  # (b, H, W, 3) uint8
        end = start + len(frames)
        reference = frames.astype(np.float64)
        for key, latents in (("sampled", z0[start:end]), ("vae", trajectory.clean[start:end])):
            decoded = to_uint8(
                model.decode_latents(latents.to(model.device, model.dtype), batch_size=config.batch_size)
            )
            errors[key] += float(((decoded.astype(np.float64) - reference) ** 2).sum())
        count += frames.size
        start = end
    to_db = lambda total: float("inf") if total == 0 else float(10 * np.log10(255.0**2 * count / total))  # noqa: E731
    return Reconstruction(psnr=to_db(errors["sampled"]), vae_psnr=to_db(errors["vae"]))
