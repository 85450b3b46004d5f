"""Optical flow (vedit.quality.flow): warping, the mask of unreliable pixels, and flow backends registered
through the hook."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers.flow import moving  # noqa: F401  (fixtures, used by name)
from vedit import plugins
from vedit.errors import PluginError
from vedit.plugins.hookspecs import hookimpl
from vedit.quality.flow import flow_backend, unreliable, warp
from vedit.quality.metrics import warp_errors
from vedit_bench.consistency import SHIFT

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
