"""The built-in flow backends (vedit_plugins.flow_backends): DIS on known motion, and RAFT with a stand-in
torchvision."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from helpers.flow import moving  # noqa: F401  (fixtures, used by name)
from vedit.errors import PluginError
from vedit.quality.flow import flow_backend, pair_flows
from vedit.quality.metrics import warp_error
from vedit_bench.consistency import SHIFT


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
    for name, module in (
        ("torchvision", root),
        ("torchvision.models", models),
        ("torchvision.models.optical_flow", optical_flow),
    ):
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
