"""The warp error (Lai et al., vedit.quality.metrics), checked against a separate plain implementation of
the published definition and on synthetic clips whose motion is known; PSNR."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.flow import moving  # noqa: F401  (fixtures, used by name)
from vedit.quality.flow import flow_backend, unreliable
from vedit.quality.metrics import WARP_ERROR_UNIT, pair_warp_error, psnr, warp_error, warp_errors

# --------------------------------------------------------------------------- an independent reference
#
# The published definition written out plainly with torch's grid_sample (a different sampler from
# vedit's numpy one) and explicit per-pixel formulas, to compare vedit's figures against.


def _sample(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Bilinear sample of (H, W, C) at x + flow with edge clamping, via grid_sample in float64."""
    h, w = flow.shape[:2]
    xs = torch.arange(w, dtype=torch.float64)[None, :] + torch.from_numpy(flow[..., 0]).double()
    ys = torch.arange(h, dtype=torch.float64)[:, None] + torch.from_numpy(flow[..., 1]).double()
    grid = torch.stack([2 * xs / (w - 1) - 1, 2 * ys / (h - 1) - 1], dim=-1)[None]
    source = torch.from_numpy(np.asarray(image, dtype=np.float64)).permute(2, 0, 1)[None]
    out = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[0].permute(1, 2, 0).numpy()


def reference_pair_error(first_u8, second_u8, forward, backward) -> float:
    h, w = forward.shape[:2]
    a = first_u8.astype(np.float64) / 255
    b = second_u8.astype(np.float64) / 255
    back = _sample(backward, forward)
    total = forward + back
    keep = np.ones((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            f = forward[y, x]
            inconsistent = (total[y, x] ** 2).sum() > 0.01 * ((back[y, x] ** 2).sum() + (f**2).sum()) + 0.5
            tx, ty = x + f[0], y + f[1]
            outside = tx < 0 or tx > w - 1 or ty < 0 or ty > h - 1
            gx = forward[y, x] - forward[y, x + 1] if x + 1 < w else np.zeros(2)
            gy = forward[y, x] - forward[y + 1, x] if y + 1 < h else np.zeros(2)
            boundary = (gx**2).sum() + (gy**2).sum() > 0.01 * (f**2).sum() + 0.002
            keep[y, x] = not (inconsistent or outside or boundary)
    warped = _sample(b, forward)
    squared = ((warped - a) ** 2).sum(axis=2)
    return float(squared[keep].sum() / keep.sum())


def smooth_flow(h: int, w: int, seed: int, scale: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0, scale, size=(1, 2, 4, 4))
    flow = F.interpolate(torch.from_numpy(coarse), size=(h, w), mode="bicubic", align_corners=True)[0]
    return flow.permute(1, 2, 0).numpy().astype(np.float32)


def test_pair_warp_error_equals_the_plain_published_definition():
    rng = np.random.default_rng(3)
    h, w = 24, 32
    for seed in range(3):
        first = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        second = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        # a gently varying motion of a few pixels, so some pixels leave the frame and some gradients
        # pass the boundary test, and a backward flow that disagrees on part of the frame
        forward = np.asarray([2.3, -1.7], np.float32) * (seed + 1) / 2 + smooth_flow(h, w, seed, 0.05)
        backward = -forward + smooth_flow(h, w, seed + 10, 2.0) * (np.arange(h)[:, None, None] > h // 2)
        mask = unreliable(forward, backward)
        assert 0.05 < mask.mean() < 0.95, mask.mean()  # the check keeps some pixels and drops others
        ours = pair_warp_error(first, second, forward, mask)
        theirs = reference_pair_error(first, second, forward, backward)
        assert ours == pytest.approx(theirs, rel=1e-9)


def test_a_pair_with_no_pixel_kept_has_no_error_and_is_left_out_of_the_mean():
    frame = np.zeros((4, 4, 3), np.uint8)
    flow = np.zeros((4, 4, 2), np.float32)
    assert math.isnan(pair_warp_error(frame, frame, flow, np.ones((4, 4), bool)))
    assert pair_warp_error(frame, frame + 255, flow, np.zeros((4, 4), bool)) == pytest.approx(3.0)


def flicker(clip: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return np.clip(np.round(clip.astype(np.float64) + 255 * offsets[:, None, None, None]), 0, 255).astype(np.uint8)


def test_injected_flicker_raises_the_score_in_proportion_to_its_energy(moving):
    backend = flow_backend("dis")
    floor = warp_error(moving, backend)
    rng = np.random.default_rng(0)
    signs = rng.choice([-1.0, 1.0], size=len(moving))
    excess = []
    for levels in (3, 6, 12):  # whole grey levels, so rounding to uint8 adds nothing
        offsets = levels / 255 * signs
        score = warp_error(flicker(moving, offsets), backend, source=moving)
        # a uniform offset change d moves each of R, G and B by d: E grows by 3 d² per pair
        expected = np.mean(3 * np.diff(offsets) ** 2) / WARP_ERROR_UNIT
        assert score - floor == pytest.approx(expected, rel=0.08)
        excess.append(score - floor)
    assert excess[1] / excess[0] == pytest.approx(4, rel=0.1)  # twice the flicker, four times the error
    assert excess[2] / excess[1] == pytest.approx(4, rel=0.1)


def test_warp_errors_streams_in_any_batch_and_refuses_clips_of_another_length(moving):
    backend = flow_backend("dis")
    shaky = flicker(moving, np.linspace(-0.02, 0.02, len(moving)))
    floor1, (one,) = warp_errors(iter(moving), [iter(shaky)], backend=backend, batch_size=1)
    floor4, (four,) = warp_errors(moving, [shaky], backend=backend, batch_size=4)
    assert one.pairs == four.pairs and floor1.pairs == floor4.pairs
    assert len(one.pairs) == len(moving) - 1 and one.value > floor1.value
    assert one.value == pytest.approx(np.mean(one.pairs) / WARP_ERROR_UNIT)
    with pytest.raises(ValueError, match="ends at frame 9"):
        warp_errors(moving, [shaky[:9]], backend=backend)
    with pytest.raises(ValueError, match="more frames"):
        warp_errors(moving[:5], [shaky], backend=backend)


def test_pairs_of_a_repeated_source_frame_are_not_measured(moving):
    backend = flow_backend("dis")
    # Frame 3 shown twice, as a constant-rate reading repeats a frame where timestamps leave a gap.
    source = np.concatenate([moving[:4], moving[3:]])
    shaky = flicker(source, np.linspace(-0.02, 0.02, len(source)))
    floor, (edit,) = warp_errors(source, [shaky], backend=backend, repeated_pairs={3})
    whole_floor, (whole_edit,) = warp_errors(source, [shaky], backend=backend)
    assert whole_floor.pairs[3] == 0.0  # the repeat against itself: exactly 0, whatever the footage
    for error, whole in ((floor, whole_floor), (edit, whole_edit)):
        assert len(error.pairs) == len(source) - 1 == 10
        assert math.isnan(error.pairs[3]) and error.pairs[:3] + error.pairs[4:] == whole.pairs[:3] + whole.pairs[4:]
        assert (error.repeated, error.skipped, error.measured) == (1, 1, 9)
        kept = error.pairs[:3] + error.pairs[4:]
        assert error.value == pytest.approx(np.mean(kept) / WARP_ERROR_UNIT, rel=1e-12)
    assert floor.value > whole_floor.value  # the 0 no longer pulls the mean down


# --------------------------------------------------------------------------- PSNR


def test_psnr_on_known_arrays():
    zeros = np.zeros((4, 8, 8, 3), np.uint8)
    assert psnr(zeros, zeros) == math.inf
    assert psnr(zeros, zeros + 10) == pytest.approx(10 * math.log10(255**2 / 100))  # MSE 100: 28.13 dB
    half = zeros.copy()
    half[:, :4] = 255  # half of the values off by 255: MSE 255²/2
    assert psnr(zeros, half) == pytest.approx(10 * math.log10(2))
    assert psnr(zeros.astype(np.float64), zeros + 1.0) == pytest.approx(10 * math.log10(255**2))
