"""The TokenFlow propagator's blend weights."""

from __future__ import annotations

import pytest
import torch

from vedit_plugins.propagators.tokenflow import blend_weights


def test_blend_weights_follow_the_formula():
    w = blend_weights(range(8, 12), 2, 4)  # chunk 2 of B=4: p1 = 10, p2 = 6
    expected = [torch.sigmoid(torch.tensor(abs(s - 6) / (abs(s - 10) + abs(s - 6)))) for s in range(8, 12)]
    assert torch.allclose(w, torch.stack(expected))
    assert w[2] == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item())
