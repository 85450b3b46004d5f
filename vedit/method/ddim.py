"""DDIM inversion and sampling with η = 0 (Song et al. 2021, eq. 12): the inversion and sampling
schedules and the check that the one passes through the other, the inversion of every frame of a
clip with the source prompt, and its exact reverse; for ε-, v- and x0-predicting models alike, on
the model's own schedule (leading, trailing or linspace spacing, zero terminal SNR or not)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..config import option_value
from ..errors import ConfigError, ModelError
from ..runtime.transfer import to_device, to_host, wait
from .prediction import check_prediction_type, clean_and_noise
from .trajectory import Trajectory, TrajectoryWriter


def inversion_timesteps(scheduler: Any, inversion_steps: int) -> list[int]:
    """The inversion schedule, least noisy first; timesteps the model was not trained on are dropped.

    (With ``steps_offset`` 1 and 1000 steps the schedule would reach t = 1000.)
    """
    scheduler.set_timesteps(inversion_steps)
    limit = scheduler.config.num_train_timesteps
    return sorted(int(t) for t in scheduler.timesteps if int(t) < limit)


def sampling_timesteps(scheduler: Any, steps: int) -> list[int]:
    """The ``steps``-step sampling schedule, noisiest first."""
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]


def check_schedules(scheduler: Any, steps: int, inversion_steps: int | None = None) -> None:
    """ConfigError unless ``steps`` fit the model's schedule and the inversion passes through them.

    The stored trajectory holds latents at the sampling schedule's timesteps, so every one of
    them must be visited by the inversion schedule (with SD's "leading" spacing, 3 inversion
    steps never visit the 2-step schedule's t=501; 500 always visit the 50-step one's). Being a
    multiple of ``steps`` is not enough (6 never visit the 3-step schedule's t=667); the error
    names the multiple of ``steps`` nearest to ``inversion_steps`` that passes through. Any spacing
    works ("trailing" starts at t=999: 999, 979, ... with 50 steps).

    ModelError for a prediction type vedit does not know, and for an ε model whose schedule
    reaches ᾱ_t = 0 (zero terminal SNR), where its prediction says nothing of the clean latent.
    """
    prediction = check_prediction_type(scheduler)
    limit = scheduler.config.num_train_timesteps
    sampling = sampling_timesteps(scheduler, steps)
    if max(sampling) >= limit:
        raise ConfigError(
            f"{option_value('steps', steps)}: that schedule reaches t={max(sampling)}, past the model's {limit} "
            f"training timesteps; use at most {limit - 1} steps"
        )
    if prediction == "epsilon" and float(scheduler.alphas_cumprod[max(sampling)]) == 0:
        raise ModelError(
            f"the model predicts the noise ('epsilon') but its schedule reaches t={max(sampling)}, where zero "
            "terminal SNR leaves no signal (ᾱ=0) to recover the clean latent from: set rescale_betas_zero_snr to "
            "false in its scheduler_config.json, or use a v-prediction model"
        )
    if inversion_steps is None:
        return
    missing = sorted(set(sampling) - set(inversion_timesteps(scheduler, inversion_steps)), reverse=True)
    if missing:
        fitting = [
            n for n in range(steps, limit + 1, steps) if not set(sampling) - set(inversion_timesteps(scheduler, n))
        ]
        nearest = min(fitting, key=lambda n: (abs(n - inversion_steps), -n))  # a tie: the finer schedule
        raise ConfigError(
            f"{option_value('inversion_steps', inversion_steps)} does not pass through the {steps}-step sampling "
            f"schedule (it never visits t={missing[0]}); use {option_value('inversion_steps', nearest)}"
        )


@torch.no_grad()
def invert(
    unet: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler: Any,
    clean_latents: torch.Tensor,
    source_embeds: torch.Tensor,
    *,
    inversion_steps: int,
    steps: int,
    batch_size: int = 8,
    on_step: Callable[[int, int], None] | None = None,
    writer: TrajectoryWriter | None = None,
) -> Trajectory:
    """DDIM inversion (Song et al. 2021, eq. 12 run backwards) with the source prompt, guidance 1.

    ``unet(latents, t, text)`` returns the model's output: ε, v or x0, as the scheduler's prediction type
    says (:mod:`vedit.method.prediction`). Keeps every frame's latent at each timestep of the
    ``steps``-step sampling schedule and at the noisiest inversion timestep: in memory, or with
    ``writer`` in its file as each is reached (the trajectory returned is then read from it).
    On a failure the writer's temporary file is removed.
    """
    if writer is None:
        return _invert(unet, scheduler, clean_latents, source_embeds, inversion_steps, steps, batch_size, on_step, None)
    try:
        return _invert(
            unet, scheduler, clean_latents, source_embeds, inversion_steps, steps, batch_size, on_step, writer
        )
    except BaseException:
        writer.abort()
        raise


def _invert(
    unet, scheduler, clean_latents, source_embeds, inversion_steps, steps, batch_size, on_step, writer
) -> Trajectory:
    check_schedules(scheduler, steps, inversion_steps)
    scheduler.set_timesteps(steps)
    keep = [int(t) for t in scheduler.timesteps]
    schedule = inversion_timesteps(scheduler, inversion_steps)
    prediction = check_prediction_type(scheduler)
    x = clean_latents.clone()
    device = x.device
    # Every timestep and DDIM coefficient is sent to the device once, before the loop: inside it,
    # nothing waits for the device (the kept latents are copied back without blocking).
    steps_on_device = to_device(torch.tensor(schedule, dtype=torch.int64), device)
    coefficients = _coefficients(scheduler, schedule, x.dtype, device)
    stored: dict[int, torch.Tensor] = {}
    if writer is not None:
        writer.begin(clean_latents.detach(), keep, schedule[-1])
    for i, t in enumerate(schedule):
        signal_prev, noise_prev, signal_t, noise_t = coefficients[i]
        for b in range(0, x.shape[0], batch_size):
            x_b = x[b : b + batch_size]
            text = source_embeds.expand(x_b.shape[0], -1, -1)
            # the output at t taken at t', the level x is at: DDIM inversion's one approximation
            x0, eps = clean_and_noise(prediction, unet(x_b, steps_on_device[i], text), x_b, signal_prev, noise_prev)
            x[b : b + batch_size] = signal_t * x0 + noise_t * eps
        if t in keep or i == len(schedule) - 1:
            if writer is not None:
                writer.put(t, x)
            else:
                stored[t] = to_host(x)
        if on_step is not None:
            on_step(i + 1, len(schedule))
    if writer is not None:
        return writer.finish()
    wait(device)
    return Trajectory(
        clean=clean_latents.detach().cpu().clone(),
        latents=stored,
        timesteps=keep,
        noisiest=schedule[-1],
    )


@torch.no_grad()
def reconstruct(
    unet: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler: Any,
    trajectory: Trajectory,
    source_embeds: torch.Tensor,
    *,
    inversion_steps: int,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """DDIM sampling (η = 0, guidance 1, source prompt) from z_T back down the inversion schedule.

    The exact reverse of :func:`invert`; with a faithful inversion it returns z_0 (N, 4, h, w).
    """
    schedule = inversion_timesteps(scheduler, inversion_steps)
    prediction = check_prediction_type(scheduler)
    x = trajectory.latents[trajectory.noisiest].to(device=device, dtype=source_embeds.dtype).clone()
    steps_on_device = to_device(torch.tensor(schedule, dtype=torch.int64), x.device)
    coefficients = _coefficients(scheduler, schedule, x.dtype, x.device)
    for i in reversed(range(len(schedule))):
        signal_prev, noise_prev, signal_t, noise_t = coefficients[i]
        for b in range(0, x.shape[0], batch_size):
            x_b = x[b : b + batch_size]
            output = unet(x_b, steps_on_device[i], source_embeds.expand(x_b.shape[0], -1, -1))
            x0, eps = clean_and_noise(prediction, output, x_b, signal_t, noise_t)
            x[b : b + batch_size] = signal_prev * x0 + noise_prev * eps
    return x


def _coefficients(scheduler: Any, schedule: list[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(steps, 4): √ᾱ_t', √(1−ᾱ_t'), √ᾱ_t, √(1−ᾱ_t) of each timestep t of ``schedule`` (least noisy first) and
    the one before it, t' (the scheduler's final alpha for the first), on ``device`` in ``dtype``.

    Taken in float64 and cast after: 1 − ᾱ near 1 loses its digits in half precision."""
    alphas = scheduler.alphas_cumprod.to(torch.float64)
    final_alpha = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64)
    previous = [alphas[schedule[i - 1]] if i > 0 else final_alpha for i in range(len(schedule))]
    rows = [
        torch.stack([prev.sqrt(), (1 - prev).sqrt(), alphas[t].sqrt(), (1 - alphas[t]).sqrt()])
        for t, prev in zip(schedule, previous)
    ]
    return to_device(torch.stack(rows).to(dtype), device)
