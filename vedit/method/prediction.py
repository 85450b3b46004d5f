"""What a UNet's output means: the clean latent and the noise it stands for, whatever the model predicts.

A latent at timestep t is x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε. Models are trained to predict ε (``epsilon``, Ho et al.
2020), the velocity v = √ᾱ_t·ε − √(1−ᾱ_t)·x0 (``v_prediction``, Salimans & Ho 2022, §4) or x0 itself
(``sample``). The UNet passes return that raw output; classifier-free guidance, being linear, is the same on
any of them; the maths that needs x0 and ε gets both from :func:`clean_and_noise`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ModelError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_prediction_type(scheduler: Any, model: str | None = None) -> str:
    """The prediction type of ``scheduler``'s config; ModelError for one vedit does not know."""
    prediction = scheduler.config.prediction_type
    if prediction not in PREDICTION_TYPES:
        name = f"model '{model}'" if model else "the model"
        raise ModelError(
            f"{name} predicts '{prediction}', which vedit cannot edit with: it takes models that predict "
            "the noise ('epsilon'), the velocity ('v_prediction') or the clean latent ('sample')"
        )
    return prediction


def clean_and_noise(
    prediction: str, output: torch.Tensor, x: torch.Tensor, signal: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, ε) of latents ``x`` = signal·x0 + noise·ε from the model's ``output``; signal = √ᾱ_t, noise = √(1−ᾱ_t).

    The square roots are the caller's, computed in float64 before any cast (1 − ᾱ near 1 loses its digits in
    half precision). For v-prediction the forms x0 = √ᾱ·x − √(1−ᾱ)·v and ε = √ᾱ·v + √(1−ᾱ)·x stay finite at
    ᾱ = 0 (zero terminal SNR, Lin et al. 2024); ε-prediction's x0 = (x − √(1−ᾱ)·ε)/√ᾱ cannot, which is why
    :func:`vedit.method.ddim.check_schedules` refuses an ε model a schedule that reaches ᾱ = 0.
    """
    if prediction == "epsilon":
        return (x - noise * output) / signal, output
    if prediction == "v_prediction":
        return signal * x - noise * output, signal * output + noise * x
    if prediction == "sample":
        return output, (x - signal * output) / noise
    raise ValueError(f"unknown prediction type {prediction!r}; one of {', '.join(PREDICTION_TYPES)}")
