"""ε-, v- and x0-predicting models: the clean latent and the noise from the model's output, DDIM inversion and its
reverse checked against the same maths written out here in float64, on leading, trailing and zero-terminal-SNR
schedules, and the schedules and prediction types vedit refuses."""

from __future__ import annotations

import pytest
import torch

from helpers.models import one_line
from vedit.errors import ModelError
from vedit.method.ddim import check_schedules, invert, reconstruct
from vedit.method.prediction import clean_and_noise
from vedit.model.loading import load_model

TRAIN = 1000  # SD's training timesteps


def scheduler_with(**settings):
    """SD's DDIM scheduler with ``settings`` changed (as keywords: a key merged into the config dict that the
    config lists among its defaults would be dropped by ``from_config``)."""
    from diffusers import DDIMScheduler

    from vedit.model.builders import SD_SCHEDULER_CONFIG

    return DDIMScheduler.from_config(DDIMScheduler(**SD_SCHEDULER_CONFIG).config, **settings)


# ------------------------------------------------------------------ the maths, written out independently


def sd_alphas_cumprod(zero_snr: bool) -> torch.Tensor:
    """ᾱ_t of SD's "scaled_linear" betas (√β evenly spaced from √0.00085 to √0.012), in float64; with ``zero_snr``
    rescaled to zero terminal SNR (Lin et al. 2024, Algorithm 1): √ᾱ shifted so that its last value is 0 and
    scaled so that its first stays as it was."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, TRAIN, dtype=torch.float64) ** 2
    root = torch.cumprod(1 - betas, 0).sqrt()
    if zero_snr:
        first, last = root[0].clone(), root[-1].clone()
        root = (root - last) * first / (first - last)
    return root**2


def schedule(spacing: str, steps: int) -> list[int]:
    """The timesteps of a ``steps``-step schedule with diffusers' spacings, least noisy first."""
    if spacing == "leading":  # SD's: multiples of 1000 // steps, shifted by steps_offset 1
        return [k * (TRAIN // steps) + 1 for k in range(steps)]
    assert spacing == "trailing"  # counted down from the last training timestep
    return sorted(round(TRAIN - k * TRAIN / steps) - 1 for k in range(steps))


def fake_unet(x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """A UNet in closed form: a fixed linear function of the latent and the timestep."""
    bias = torch.linspace(-1, 1, x[0].numel(), dtype=torch.float64).reshape(x.shape[1:])
    level = t.double() / TRAIN
    return ((0.2 + 0.5 * level) * x + level * bias + text.mean()).to(x.dtype)


def to_clean_and_noise(prediction: str, output, x, alpha):
    if prediction == "epsilon":
        return (x - (1 - alpha) ** 0.5 * output) / alpha**0.5, output
    # v = √ᾱ·ε − √(1−ᾱ)·x0 and x = √ᾱ·x0 + √(1−ᾱ)·ε, solved for x0 and ε
    return alpha**0.5 * x - (1 - alpha) ** 0.5 * output, alpha**0.5 * output + (1 - alpha) ** 0.5 * x


def expected_inversion(prediction, alphas, timesteps, z0, text):
    """Every latent of DDIM inversion from ``z0`` up ``timesteps``: the output at t, taken at the level t' of x."""
    x, level, latents = z0, alphas[0], {}  # the first step starts from ᾱ_0 (set_alpha_to_one is off)
    for t in timesteps:
        x0, eps = to_clean_and_noise(prediction, fake_unet(x, torch.tensor(t), text), x, level)
        x = alphas[t] ** 0.5 * x0 + (1 - alphas[t]) ** 0.5 * eps
        level, latents[t] = alphas[t], x
    return latents


def expected_reconstruction(prediction, alphas, timesteps, z_top, text):
    """DDIM sampling from ``z_top`` down ``timesteps`` to the clean latent."""
    x = z_top
    for i in reversed(range(len(timesteps))):
        t = timesteps[i]
        below = alphas[timesteps[i - 1]] if i > 0 else alphas[0]
        x0, eps = to_clean_and_noise(prediction, fake_unet(x, torch.tensor(t), text), x, alphas[t])
        x = below**0.5 * x0 + (1 - below) ** 0.5 * eps
    return x


# ------------------------------------------------------------------ tests


SCHEDULES = [
    pytest.param("epsilon", "leading", False, id="epsilon-leading"),
    pytest.param("epsilon", "trailing", False, id="epsilon-trailing"),
    pytest.param("epsilon", "leading", True, id="epsilon-leading-zero-snr"),
    pytest.param("v_prediction", "leading", False, id="v-leading"),
    pytest.param("v_prediction", "trailing", False, id="v-trailing"),
    pytest.param("v_prediction", "leading", True, id="v-leading-zero-snr"),
    pytest.param("v_prediction", "trailing", True, id="v-trailing-zero-snr"),
]


@pytest.mark.parametrize("prediction, spacing, zero_snr", SCHEDULES)
def test_inversion_and_its_reverse_follow_the_ddim_maths_written_out(prediction, spacing, zero_snr):
    steps, inversion_steps = 10, 50
    settings = {"prediction_type": prediction, "timestep_spacing": spacing, "rescale_betas_zero_snr": zero_snr}
    alphas = sd_alphas_cumprod(zero_snr)
    assert torch.allclose(scheduler_with(**settings).alphas_cumprod.double(), alphas, rtol=1e-5, atol=1e-7)
    inverted, sampled = schedule(spacing, inversion_steps), schedule(spacing, steps)
    z0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    text = torch.full((1, 77, 32), 0.1, dtype=torch.float64)

    trajectory = invert(
        fake_unet, scheduler_with(**settings), z0, text, inversion_steps=inversion_steps, steps=steps, batch_size=2
    )
    expected = expected_inversion(prediction, alphas, inverted, z0, text)
    assert trajectory.timesteps == sampled[::-1]
    assert trajectory.noisiest == inverted[-1] == (999 if spacing == "trailing" else 981)
    for t in [*sampled, inverted[-1]]:
        assert torch.allclose(trajectory.latents[t], expected[t], rtol=1e-4, atol=1e-5), t
    back = reconstruct(fake_unet, scheduler_with(**settings), trajectory, text, inversion_steps=inversion_steps)
    expected_back = expected_reconstruction(prediction, alphas, inverted, trajectory.latents[inverted[-1]], text)
    assert back.isfinite().all()
    assert torch.allclose(back, expected_back, rtol=1e-4, atol=1e-5)


def test_the_prediction_type_changes_the_inversion():
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    text = torch.zeros(1, 77, 32, dtype=torch.float64)
    noisiest = [
        invert(fake_unet, scheduler_with(prediction_type=p), z0, text, inversion_steps=10, steps=10).latents[901]
        for p in ("epsilon", "v_prediction")
    ]
    assert (noisiest[0] - noisiest[1]).abs().max() > 0.1


def test_the_three_prediction_types_give_back_the_clean_latent_and_noise_that_made_the_latent():
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64).unbind()
    for alpha in (0.999, 0.5, 1e-3, 0.0):
        signal, noise = torch.tensor(alpha).sqrt(), torch.tensor(1 - alpha).sqrt()
        x = signal * x0 + noise * eps
        outputs = {"v_prediction": signal * eps - noise * x0, "epsilon": eps, "sample": x0}
        for prediction, output in outputs.items():
            if (prediction, alpha) == ("epsilon", 0.0):
                continue  # x_t holds nothing of x0 there: refused by check_schedules
            got_x0, got_eps = clean_and_noise(prediction, output, x, signal, noise)
            assert torch.allclose(got_x0, x0, atol=1e-9), (prediction, alpha)
            assert torch.allclose(got_eps, eps, atol=1e-9), (prediction, alpha)
    # at zero terminal SNR the v form is x0 = −v and ε = x_t, finite where the ε form divides by √ᾱ = 0
    v, x = torch.ones(4), torch.full((4,), 2.0)
    got_x0, got_eps = clean_and_noise("v_prediction", v, x, torch.tensor(0.0), torch.tensor(1.0))
    assert torch.equal(got_x0, -v) and torch.equal(got_eps, x)


@pytest.mark.slow
def test_a_tiny_v_model_inverts_its_clip_on_a_zero_snr_schedule():
    from diffusers import DDIMScheduler

    sd = load_model("tiny@3", device="cpu", dtype="fp32")
    sd.scheduler = DDIMScheduler.from_config(
        sd.scheduler.config, prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True
    )
    z0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = sd.encode_prompt(["a photo of a cat"])

    def unet(x, t, text):
        return sd.unet(x, t, encoder_hidden_states=text, return_dict=False)[0]

    errors = []
    for inversion_steps in (20, 100):
        trajectory = invert(unet, sd.new_scheduler(), z0, text, inversion_steps=inversion_steps, steps=10)
        assert trajectory.noisiest == 999
        back = reconstruct(unet, sd.new_scheduler(), trajectory, text, inversion_steps=inversion_steps)
        errors.append(float((back - z0).abs().max()))
    # DDIM inversion's error shrinks with its step (here by about 4.5×), down to a tenth of the latents' scale
    assert errors[1] < errors[0] / 3 and errors[1] < 0.15, errors


def test_an_epsilon_model_is_refused_a_schedule_that_reaches_zero_snr():
    scheduler = scheduler_with(timestep_spacing="trailing", rescale_betas_zero_snr=True)
    with pytest.raises(ModelError) as error:
        check_schedules(scheduler, 50, 500)
    assert one_line(error).startswith(
        "the model predicts the noise ('epsilon') but its schedule reaches t=999, where zero terminal SNR"
    )
    check_schedules(scheduler_with(rescale_betas_zero_snr=True), 50, 500)  # leading spacing stops at t=981
    v_model = scheduler_with(timestep_spacing="trailing", rescale_betas_zero_snr=True, prediction_type="v_prediction")
    check_schedules(v_model, 50, 500)


def test_an_unknown_prediction_type_is_one_line():
    with pytest.raises(ModelError) as error:
        check_schedules(scheduler_with(prediction_type="flow_prediction"), 50, 500)
    assert one_line(error) == (
        "the model predicts 'flow_prediction', which vedit cannot edit with: it takes models that predict the noise "
        "('epsilon'), the velocity ('v_prediction') or the clean latent ('sample')"
    )


@pytest.mark.parametrize(
    "spacing, first, passing",
    [
        ("leading", [981, 961], [50, 100, 200, 250, 500, 1000]),
        ("trailing", [999, 979], list(range(50, 1001, 50))),
        ("linspace", [999, 979], [50, 950, 1000]),
    ],
)
def test_the_schedules_rules_hold_for_every_spacing(spacing, first, passing):
    from vedit.errors import ConfigError
    from vedit.method.ddim import sampling_timesteps

    scheduler = scheduler_with(timestep_spacing=spacing, prediction_type="v_prediction")
    assert sampling_timesteps(scheduler, 50)[:2] == first

    def passes(inversion_steps: int) -> bool:
        try:
            check_schedules(scheduler, 50, inversion_steps)
        except ConfigError as error:
            assert str(error).startswith(
                f"inversion_steps={inversion_steps} does not pass through the 50-step sampling schedule (it never "
                "visits t="
            )
            assert int(str(error).rsplit("=", 1)[1]) in passing  # the one it names does
            return False
        return True

    assert [n for n in range(50, 1001, 50) if passes(n)] == passing
