"""Optical flow backends and the warp error (Lai et al.), checked against a separate plain
implementation of the published definition and on synthetic clips whose motion is known."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vedit import plugins
from vedit.errors import PluginError
from vedit.quality.flow import flow_backend, pair_flows, unreliable, warp
from vedit.plugins.hookspecs import hookimpl
from vedit.quality.metrics import WARP_ERROR_UNIT, pair_warp_error, warp_error, warp_errors
from vedit_bench.consistency import SHIFT, translating_clip

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


# --------------------------------------------------------------------------- warp and the mask


def test_warp_by_a_whole_pixel_shift_is_exact_and_clamps_at_the_edge():
    image = np.arange(5 * 6 * 2, dtype=np.float64).reshape(5, 6, 2)
    flow = np.zeros((5, 6, 2), np.float32)
    flow[..., 0] = 2
    out = warp(image, flow)
    assert np.array_equal(out[:, :4], image[:, 2:])
    assert np.array_equal(out[:, 4], image[:, 5]) and np.array_equal(out[:, 5], image[:, 5])
    flow[..., 0], flow[..., 1] = 0.25, 0.5  # bilinear: a quarter of the way right, half way down
    expected = 0.75 * 0.5 * image[1, 1] + 0.25 * 0.5 * image[1, 2] + 0.75 * 0.5 * image[2, 1] + 0.25 * 0.5 * image[2, 2]
    assert np.allclose(warp(image, flow)[1, 1], expected)


def test_the_mask_flags_disagreement_leaving_the_frame_and_motion_boundaries():
    h, w = 20, 30
    forward = np.zeros((h, w, 2), np.float32)
    forward[..., 0] = 3  # everything moves 3 px right
    backward = -forward.copy()
    mask = unreliable(forward, backward)
    assert not mask[:, : w - 3].any()  # consistent and inside: kept
    assert mask[:, w - 3 :].all()  # points past the right edge: not visible in the next frame
    backward[5:10, 5:15] = 0  # the next frame does not agree here
    mask = unreliable(forward, backward)
    assert mask[5:10, 2:12].all() and not mask[12:, :20].any()
    forward[:, 15:, 0] = -3  # two regions moving towards each other: a motion boundary at column 14
    backward = -forward
    mask = unreliable(forward, backward)
    assert mask[:, 14].all()
    assert not mask[:, :12].any()  # lands at column 14 or before, where the flow agrees
    assert mask[:, 12:14].all()  # lands in the other region, whose backward flow points elsewhere: occluded


def test_a_pair_with_no_pixel_kept_has_no_error_and_is_left_out_of_the_mean():
    frame = np.zeros((4, 4, 3), np.uint8)
    flow = np.zeros((4, 4, 2), np.float32)
    assert math.isnan(pair_warp_error(frame, frame, flow, np.ones((4, 4), bool)))
    assert pair_warp_error(frame, frame + 255, flow, np.zeros((4, 4), bool)) == pytest.approx(3.0)


# --------------------------------------------------------------------------- synthetic clips, DIS


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    """A texture moving right by 8 px per frame, 10 frames of 128x96."""
    return translating_clip(tmp_path_factory.mktemp("moving"), 10, (128, 96))


def test_dis_finds_the_known_motion_and_the_source_scores_near_zero(moving):
    pairs = list(pair_flows(moving, flow_backend("dis")))
    assert [p.index for p in pairs] == list(range(9))
    interior = np.stack([p.forward[16:-16, 16:-16] for p in pairs])
    assert np.median(interior[..., 0]) == pytest.approx(SHIFT, abs=0.05)
    assert np.median(interior[..., 1]) == pytest.approx(0, abs=0.05)
    assert np.median(np.stack([p.backward[16:-16, 16:-16, 0] for p in pairs])) == pytest.approx(-SHIFT, abs=0.05)
    floor = warp_error(moving, flow_backend("dis"))
    assert floor < 0.2  # measured 0.05 (×10⁻³); the texture's own variation is 100× that
    # the columns that leave the frame are what the mask drops
    assert pairs[0].excluded[:, -SHIFT:].all() and pairs[0].excluded[:, : -SHIFT - 4].mean() < 0.02


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


# --------------------------------------------------------------------------- the hook


class ShiftFlow:
    """A backend that knows the answer: every pixel moves ``dx`` px right."""

    name = "known-shift"
    calls = 0

    def __init__(self, dx: float):
        self.dx = dx

    def flow(self, first, second):
        ShiftFlow.calls += 1
        out = np.zeros((*first.shape[:3], 2), np.float32)
        out[..., 0] = self.dx
        return out


def test_a_plugin_registers_a_flow_backend_through_the_hook(moving):
    class Plugin:
        @hookimpl
        def register_flow_backends(self, register):
            register(ShiftFlow(SHIFT))

    manager = plugins.get_plugin_manager()
    manager.register(Plugin(), name="test-known-shift")
    try:
        assert {"dis", "raft", "known-shift"} <= set(plugins.registered("flow_backend"))
        backend = flow_backend("known-shift")
        ShiftFlow.calls = 0
        floor, _ = warp_errors(moving, backend=backend, batch_size=4)
        assert ShiftFlow.calls == 3  # 9 pairs in batches of 4: forward and backward in one call each
        # the true flow (forward +8, backward +8: not the inverse) fails the check everywhere
        assert floor.skipped == 9 and math.isnan(floor.value)
    finally:
        manager.unregister(name="test-known-shift")
    with pytest.raises(PluginError, match="unknown flow backend 'known-shift'"):
        flow_backend("known-shift")


def test_a_backend_returning_the_wrong_shape_is_named(moving):
    class Broken:
        name = "broken"

        def flow(self, first, second):
            return np.zeros((len(first), 2, 2, 2), np.float32)

    with pytest.raises(ValueError, match="'broken' returned shape"):
        warp_errors(moving, backend=Broken())


# --------------------------------------------------------------------------- RAFT, with a stand-in torchvision


class _FakeRaft(torch.nn.Module):
    """Stands in for torchvision's RAFT: flow x = first image's red, flow y = second image's green,
    times a learned scale, so the test can see the input scaling, padding and cropping."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.seen: list[tuple[int, ...]] = []

    def forward(self, a, b, num_flow_updates=12):
        assert a.shape == b.shape and a.shape[-1] % 8 == 0 and a.shape[-2] % 8 == 0
        assert min(a.shape[-2:]) >= 128 and a.min() >= -1 and a.max() <= 1
        self.seen.append(tuple(a.shape))
        return [torch.stack([a[:, 0], b[:, 1]], dim=1) * self.scale]


@pytest.fixture
def fake_torchvision(monkeypatch, tmp_path):
    built: list[_FakeRaft] = []

    def raft_large(weights=None, progress=True):
        assert weights is None  # never asks torchvision to download
        built.append(_FakeRaft())
        return built[-1]

    optical_flow = types.ModuleType("torchvision.models.optical_flow")
    optical_flow.raft_large = raft_large
    optical_flow.Raft_Large_Weights = types.SimpleNamespace(
        DEFAULT=types.SimpleNamespace(url="https://example.invalid/raft_large_C_T_SKHT_V2.pth")
    )
    models = types.ModuleType("torchvision.models")
    models.optical_flow = optical_flow
    root = types.ModuleType("torchvision")
    root.models = models
    for name, module in (("torchvision", root), ("torchvision.models", models), ("torchvision.models.optical_flow", optical_flow)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("VEDIT_RAFT_WEIGHTS", raising=False)
    return built


def _raft():
    from vedit_plugins.flow_backends.raft import RAFTFlow

    return RAFTFlow()


def test_raft_is_unavailable_without_its_weights_and_says_where_it_looked(fake_torchvision, tmp_path):
    reason = _raft().unavailable_reason()
    assert "raft_large_C_T_SKHT_V2.pth" in reason and str(tmp_path / "torch-home") in reason
    with pytest.raises(PluginError, match="flow backend 'raft' cannot run here: RAFT weights not found"):
        flow_backend("raft")


def test_raft_without_torchvision_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    assert "vedit[raft]" in _raft().unavailable_reason()


def test_raft_loads_local_weights_scales_pads_and_crops(fake_torchvision, tmp_path, monkeypatch):
    weights = tmp_path / "raft.pth"
    torch.save({"scale": torch.tensor(2.0)}, weights)
    monkeypatch.setenv("VEDIT_RAFT_WEIGHTS", str(weights))
    raft = _raft()
    assert raft.unavailable_reason() is None
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (5, 100, 140, 3), dtype=np.uint8)
    second = rng.integers(0, 256, (5, 100, 140, 3), dtype=np.uint8)
    out = raft.flow(first, second)
    assert out.shape == (5, 100, 140, 2) and out.dtype == np.float32
    assert np.allclose(out[..., 0], 2 * (first[..., 0] / 127.5 - 1), atol=1e-5)  # the loaded weights act
    assert np.allclose(out[..., 1], 2 * (second[..., 1] / 127.5 - 1), atol=1e-5)
    model = fake_torchvision[0]
    assert model.seen == [(4, 3, 128, 144), (1, 3, 128, 144)]  # batches of 4, padded to 8s and ≥ 128
    raft.flow(first[:1], second[:1])
    assert len(fake_torchvision) == 1  # the model is loaded once per device
