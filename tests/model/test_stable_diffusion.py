"""The Stable Diffusion wrapper: frozen parts, the VAE's scaling, prompts, the DDIM scheduler."""

from __future__ import annotations

import pytest
import torch

from helpers.models import unet_output
from vedit.model.loading import load_model
from vedit.model.stable_diffusion import StableDiffusion


@pytest.fixture(scope="module")
def tiny() -> StableDiffusion:
    return load_model("tiny", device="cpu")


def test_the_tiny_model_describes_itself(tiny):
    assert tiny.model_id == "tiny" and tiny.revision is None
    assert tiny.device == torch.device("cpu") and tiny.dtype == torch.float32
    assert tiny.latent_scale == pytest.approx(0.18215)
    assert tiny.vae_scale_factor == 8
    assert repr(tiny) == (
        "StableDiffusion(model_id='tiny', revision=None, fingerprint='tiny:seed0', "
        "device=device(type='cpu'), dtype=torch.float32)"
    )


def test_every_part_is_frozen_in_eval_mode(tiny):
    for part in (tiny.unet, tiny.vae, tiny.text_encoder):
        assert not part.training
        assert not any(parameter.requires_grad for parameter in part.parameters())


def test_a_two_frame_tiny_unet_forward_keeps_the_latent_shape(tiny):
    assert unet_output(tiny, frames=2).shape == (2, 4, 8, 8)
    assert unet_output(tiny, frames=6).shape == (6, 4, 8, 8)


def test_images_encode_to_an_eighth_and_decode_back_into_0_1(tiny):
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    latents = tiny.encode_images(images)
    assert latents.shape == (3, 4, 8, 8) and latents.dtype == torch.float32
    decoded = tiny.decode_latents(latents)
    assert decoded.shape == (3, 3, 64, 64)
    assert decoded.dtype == torch.float32 and decoded.device == torch.device("cpu")
    assert decoded.min() >= 0 and decoded.max() <= 1


def test_latents_are_the_posterior_mean_times_the_scaling_factor(tiny):
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mean = tiny.vae.encode(images * 2 - 1).latent_dist.mean
    latents = tiny.encode_images(images)
    torch.testing.assert_close(latents, mean * 0.18215)
    assert torch.equal(latents, tiny.encode_images(images))  # the mean, never a sample


def test_batching_does_not_change_latents_or_images(tiny):
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    latents = tiny.encode_images(images, batch_size=8)
    torch.testing.assert_close(tiny.encode_images(images, batch_size=2), latents)
    torch.testing.assert_close(tiny.decode_latents(latents, batch_size=2), tiny.decode_latents(latents, batch_size=8))


def test_images_must_be_rgb_and_a_multiple_of_8(tiny):
    with pytest.raises(ValueError, match="multiple of 8"):
        tiny.encode_images(torch.rand(1, 3, 60, 64))
    with pytest.raises(ValueError, match=r"\(n, 3, H, W\)"):
        tiny.encode_images(torch.rand(3, 64, 64))


def test_prompts_pad_to_77_tokens_and_different_prompts_differ(tiny):
    embeddings = tiny.encode_prompt(["a photo of a cat", "a watercolour of a dog", ""])
    assert embeddings.shape == (3, 77, 32) and embeddings.dtype == torch.float32
    assert not torch.allclose(embeddings[0], embeddings[1])
    assert not torch.allclose(embeddings[0], embeddings[2])
    torch.testing.assert_close(tiny.encode_prompt(["a photo of a cat"])[0], embeddings[0])


def test_the_scheduler_is_ddim_with_stable_diffusions_training_schedule(tiny):
    config = tiny.scheduler.config
    assert type(tiny.scheduler).__name__ == "DDIMScheduler"
    assert (config.num_train_timesteps, config.beta_start, config.beta_end) == (1000, 0.00085, 0.012)
    assert config.beta_schedule == "scaled_linear" and config.prediction_type == "epsilon"
    assert (config.clip_sample, config.set_alpha_to_one, config.steps_offset) == (False, False, 1)
    assert float(tiny.scheduler.final_alpha_cumprod) == pytest.approx(0.99915)  # ᾱ_0, not 1


def test_new_scheduler_gives_an_independent_copy(tiny):
    first, second = tiny.new_scheduler(), tiny.new_scheduler()
    first.set_timesteps(50)
    second.set_timesteps(10)
    assert first.timesteps[:3].tolist() == [981, 961, 941]
    assert second.timesteps[:3].tolist() == [901, 801, 701]
    assert first is not tiny.scheduler and first.config == tiny.scheduler.config
