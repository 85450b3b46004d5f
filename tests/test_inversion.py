"""DDIM inversion: exact reversibility, schedules, the trajectory file and the reconstruction check."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from test_cli import vedit
from vedit.errors import ConfigError, InputError
from vedit.cache.inversions import InversionCache, cache_key
from vedit.method.ddim import invert, inversion_timesteps, reconstruct
from vedit.method.trajectory import Trajectory
from vedit.model.loading import load_model


def latent_blind_unet(x, t, text):
    """ε that depends on t and the text only: DDIM inversion is then exactly reversible."""
    gen = torch.Generator().manual_seed(int(t))
    return torch.randn(x.shape[1:], generator=gen).expand_as(x) * (1 + text.mean())


@pytest.mark.parametrize("inversion_steps, steps", [(50, 50), (500, 50), (1000, 50), (20, 10)])
def test_inversion_is_exactly_reversible_and_stores_the_sampling_schedule(inversion_steps, steps):
    sd = load_model("tiny", device="cpu", dtype="fp32")
    clean = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    text = torch.zeros(1, 77, 32, dtype=torch.float64)
    calls = []

    def counting(x, t, text):
        calls.append(x.shape[0])
        return latent_blind_unet(x, t, text)

    trajectory = invert(counting, sd.new_scheduler(), clean, text, inversion_steps=inversion_steps, steps=steps, batch_size=2)
    scheduler = sd.new_scheduler()
    scheduler.set_timesteps(steps)
    assert trajectory.timesteps == [int(t) for t in scheduler.timesteps]
    assert trajectory.noisiest == max(inversion_timesteps(sd.new_scheduler(), inversion_steps)) < 1000
    assert set(trajectory.latents) == set(trajectory.timesteps) | {trajectory.noisiest}
    assert sum(calls) == 3 * len(inversion_timesteps(sd.new_scheduler(), inversion_steps))
    back = reconstruct(latent_blind_unet, sd.new_scheduler(), trajectory, text, inversion_steps=inversion_steps)
    assert torch.allclose(back, clean, atol=1e-8)
    # the DDIM noise recovered from z_T brings z_0 back to z_T
    eps = trajectory.ddim_noise(scheduler.alphas_cumprod)
    z_t = scheduler.add_noise(clean, eps, torch.tensor([trajectory.noisiest]))
    assert torch.allclose(z_t, trajectory.latents[trajectory.noisiest], atol=1e-6)


def test_a_schedule_that_misses_the_sampling_steps_is_refused():
    sd = load_model("tiny", device="cpu", dtype="fp32")
    with pytest.raises(ConfigError, match="^inversion_steps=30 does not pass through the 50-step"):
        invert(latent_blind_unet, sd.new_scheduler(), torch.zeros(1, 4, 8, 8), torch.zeros(1, 77, 32), inversion_steps=30, steps=50)


def test_the_inversion_steps_rule_is_the_one_the_help_states():
    from diffusers import DDIMScheduler

    from vedit.cli.options import INVERSION_STEPS_HELP
    from vedit.method.ddim import check_schedules
    from vedit.model.builders import SD_SCHEDULER_CONFIG

    scheduler = DDIMScheduler(**SD_SCHEDULER_CONFIG)

    def passes(steps: int, inversion_steps: int) -> bool:
        try:
            check_schedules(scheduler, steps, inversion_steps)
        except ConfigError:
            return False
        return True

    assert [n for n in range(50, 1001, 50) if passes(50, n)] == [50, 100, 200, 250, 500, 1000]
    assert "with 50 steps, 50, 100, 200, 250, 500 and 1000 do" in INVERSION_STEPS_HELP
    assert not passes(3, 6)  # a multiple of the steps, and yet it misses t=667
    for steps, given, nearest in ((3, 6, 9), (20, 50, 40), (50, 300, 250), (50, 400, 500), (2, 3, 4)):
        with pytest.raises(ConfigError) as error:
            check_schedules(scheduler, steps, given)
        assert str(error.value).endswith(f"; use inversion_steps={nearest}")
        assert passes(steps, nearest)
    with pytest.raises(ConfigError, match=r"^inversion_steps=6 does not pass through the 3-step sampling schedule "
                                          r"\(it never visits t=667\); use inversion_steps=9$"):
        check_schedules(scheduler, 3, 6)


def test_trajectory_round_trip_and_cache(tmp_path):
    latents = {t: torch.full((2, 4, 8, 8), float(t)) for t in (501, 1, 751)}
    trajectory = Trajectory(clean=torch.zeros(2, 4, 8, 8), latents=latents, timesteps=[501, 1], noisiest=751,
                            metadata={"model": "tiny"})
    loaded = Trajectory.load(trajectory.save(tmp_path / "t.safetensors"))
    assert loaded.timesteps == [501, 1] and loaded.noisiest == 751 and loaded.metadata["model"] == "tiny"
    assert torch.equal(loaded.at(751, torch.tensor([1])), latents[751][1:])
    cache = InversionCache(tmp_path / "c")
    key = cache_key(frames_sha256="ab", fingerprint="tiny:seed0", size=(64, 64), inversion_steps=50, steps=50,
                    source_prompt="", dtype="float32")
    assert key != cache_key(frames_sha256="ab", fingerprint="tiny:seed0", size=(64, 64), inversion_steps=50, steps=50,
                            source_prompt="a cat", dtype="float32")
    assert cache.get(key) is None
    cache.put(key, trajectory)
    assert cache.get(key).noisiest == 751
    cache.path(key).write_bytes(b"broken")
    with pytest.warns(UserWarning, match="is damaged"):
        assert cache.get(key) is None and not cache.path(key).exists()  # damaged entries are dropped, and said
    (tmp_path / "x.safetensors").write_bytes(b"nonsense")
    with pytest.raises(InputError, match="not a readable vedit trajectory"):
        Trajectory.load(tmp_path / "x.safetensors")


def test_the_old_module_path_still_gives_every_public_name(monkeypatch):
    """``vedit.inversion`` was split in four; code that imports it keeps working, with a warning naming the parts."""
    import sys

    from vedit.cache import files, inversions
    from vedit.method import ddim, trajectory

    monkeypatch.delitem(sys.modules, "vedit.inversion", raising=False)
    with pytest.warns(DeprecationWarning, match=r"^vedit\.inversion has moved: import vedit\.method\.ddim or "):
        import vedit.inversion as old
    homes = {
        ddim: "inversion_timesteps sampling_timesteps check_schedules invert reconstruct",
        trajectory: "FORMAT LOAD_FIELDS RUN_FIELDS DamagedTrajectory MappedLatents Trajectory TrajectoryWriter "
                    "read_metadata is_trajectory",
        inversions: "cache_key InversionCache",
        files: "GB MB gb_to_bytes partial_prefix sweep_partials cache_root CacheEntry scan_folder describe_age",
    }
    for module, names in homes.items():
        for name in names.split():
            assert getattr(old, name) is getattr(module, name), name


def test_invert_check_reports_psnr_that_matches_a_direct_computation(clip):
    result = vedit("invert", clip, "--model", "tiny", "--size", "64x48", "--steps", "2", "--inversion-steps", "2", "--check")
    assert result.exit_code == 0, result.output
    found = re.search(r"reconstruction PSNR ([\d.]+) dB \(the VAE alone: ([\d.]+) dB\)", result.stdout)
    assert found, result.stdout
    sampled, vae_alone = float(found.group(1)), float(found.group(2))
    from vedit.io.reader import FrameReader

    sd = load_model("tiny", device="cpu", dtype="fp32")
    frames = FrameReader(clip, size=(64, 48)).read_all()
    images = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    decoded = sd.decode_latents(sd.encode_images(images))
    decoded = (decoded.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    mse = np.mean((decoded.astype(np.float64) - frames) ** 2)
    assert vae_alone == pytest.approx(10 * np.log10(255**2 / mse), abs=0.01)
    assert 0 < sampled < 100


def test_python_api_inverts_once_then_reuses_the_cache(clip, tmp_path):
    import vedit as api

    options = dict(model="tiny", size="64x48", steps=2, inversion_steps=2)
    first = api.invert(clip, tmp_path / "t.safetensors", check=True, **options)
    again = api.invert(clip, **options)
    assert (first.how, again.how) == ("computed", "cached")
    assert first.path == tmp_path / "t.safetensors" and again.path is None
    assert again.reconstruction is None and 0 < first.reconstruction.psnr < 100
    assert torch.equal(first.trajectory.latents[first.trajectory.noisiest], again.trajectory.latents[again.trajectory.noisiest])
