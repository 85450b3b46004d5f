"""The built-in annotators (vedit_plugins.annotators.builtin): canny is OpenCV's Canny, softedge a soft edge map
that is 0 on a flat frame and high on a strong edge; their options reach them from flags, files and keywords."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vedit import plugins
from vedit.config import RunConfig, load_config
from vedit.errors import ConfigError
from vedit.options import command_line
from vedit_plugins.annotators.builtin import step_response


def annotator(name: str, config: RunConfig | None = None):
    return plugins.get("annotator", name, config=config)


def shapes(count: int = 3, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """(count, H, W, 3) uint8 frames: a bright disc and a faint bar on a dark ground, moved a little per frame."""
    frames = np.full((count, *size, 3), 30, np.uint8)
    for i in range(count):
        cv2.circle(frames[i], (20 + 4 * i, 24), 12, (250, 200, 40), -1)
        frames[i, 6:40, 44 + i : 50 + i] = (50, 50, 50)
    return frames


def step(size: tuple[int, int] = (48, 64), at: int = 32) -> np.ndarray:
    """One frame: black left of column ``at``, white from it on."""
    frame = np.zeros((1, *size, 3), np.uint8)
    frame[0, :, at:] = 255
    return frame


def test_the_built_in_annotators_are_registered_with_their_controlnets():
    found = plugins.registered("annotator")
    assert {"canny", "softedge"} <= set(found) and found["canny"].plugin == "annotators"
    canny, softedge = found["canny"].item, found["softedge"].item
    assert canny.controlnets == {
        "sd1": "lllyasviel/sd-controlnet-canny",
        "sd2": "thibaud/controlnet-sd21-canny-diffusers",
        "sdxl": "diffusers/controlnet-canny-sdxl-1.0",
    }
    assert softedge.controlnets == {"sd1": "lllyasviel/control_v11p_sd15_softedge"}


def test_canny_is_opencvs_canny_of_the_luma_in_three_channels():
    frames = shapes()
    edges = annotator("canny").annotate(frames)
    assert edges.shape == frames.shape and edges.dtype == np.uint8
    for frame, got in zip(frames, edges):
        expected = cv2.Canny(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), 100, 200)
        assert expected.any() and np.array_equal(got[..., 0], expected)
        assert np.array_equal(got[..., 1], expected) and np.array_equal(got[..., 2], expected)


def test_cannys_thresholds_reach_it_from_a_keyword_and_from_vedit_toml(tmp_path):
    frames = shapes(1)
    gray = cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY)
    low = annotator("canny", RunConfig(canny_low=10, canny_high=30)).annotate(frames)[0, ..., 0]
    assert np.array_equal(low, cv2.Canny(gray, 10, 30))
    # the faint bar's edges (a step of 20 grey levels) are kept at these thresholds, not at the defaults'
    assert not np.array_equal(low, cv2.Canny(gray, 100, 200))
    (tmp_path / "vedit.toml").write_text("[run.canny]\nlow = 10\nhigh = 30\ncontrolnet = '/models/canny'\n")
    configured = annotator("canny", load_config(cwd=tmp_path))
    assert (configured.options.low, configured.options.high) == (10, 30)
    assert np.array_equal(configured.annotate(frames)[0, ..., 0], low)
    assert configured.controlnet_for("sd1") == "/models/canny"  # the option comes before the built-in default
    assert annotator("canny").controlnet_for("sd2") == "thibaud/controlnet-sd21-canny-diffusers"


@pytest.mark.parametrize("low, high", [(200, 200), (150, 100)])
def test_canny_refuses_a_low_threshold_that_is_not_below_the_high_one(low, high):
    with pytest.raises(ConfigError) as error:
        annotator("canny", RunConfig(canny_low=low, canny_high=high)).check()
    assert str(error.value) == (
        f"canny_low={low} must be below canny_high={high}: the weaker edges kept are those between the two"
    )
    with command_line(), pytest.raises(ConfigError, match=rf"^--canny-low {low} must be below --canny-high {high}:"):
        annotator("canny", RunConfig(canny_low=low, canny_high=high)).check()
    annotator("canny", RunConfig(canny_low=high - 1, canny_high=high)).check()  # below: accepted


def test_cannys_thresholds_out_of_range_are_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^canny_high must be between 0 and 255, got 300$"):
        load_config(cwd=tmp_path, canny_high=300)


def test_softedge_is_zero_on_a_flat_frame_and_high_on_a_step_edge():
    softedge = annotator("softedge")
    flat = np.full((2, 48, 64, 3), 173, np.uint8)
    assert np.array_equal(softedge.annotate(flat), np.zeros_like(flat))
    frames = np.concatenate([step(), flat[:1]])
    edges = softedge.annotate(frames)
    assert edges.shape == frames.shape and edges.dtype == np.uint8
    assert np.array_equal(edges[..., 0], edges[..., 1]) and np.array_equal(edges[..., 0], edges[..., 2])
    row = edges[0, 24, :, 0].astype(int)
    assert row[31] >= 250 and row[32] >= 250  # the two columns either side of the step
    assert row[:10].max() == 0 and row[-10:].max() == 0  # far from it: nothing
    # soft: it falls off across the edge, through values between 0 and 255
    assert 0 < row[27] < row[29] < row[31] and 0 < row[36] < row[34] < row[32]
    assert np.array_equal(edges[0], softedge.annotate(step())[0])  # per frame: the flat one changes nothing
    assert edges[1].max() == 0


def test_softedge_keeps_faint_shading_low_and_finds_a_faint_edge_when_it_is_all_there_is():
    softedge = annotator("softedge")
    ramp = np.broadcast_to(np.linspace(100, 108, 64).astype(np.uint8)[None, :, None], (48, 64, 3))[None]
    assert softedge.annotate(np.ascontiguousarray(ramp)).max() < 40  # not stretched to 255: the floor
    faint = np.full((1, 48, 64, 3), 100, np.uint8)
    faint[0, :, 32:] = 140  # a step of 40 grey levels, above the floor's 16
    assert softedge.annotate(faint)[0, 24, 31:33, 0].min() >= 250


def test_softedges_sigma_reaches_it_and_widens_the_edge():
    narrow = annotator("softedge", RunConfig(softedge_sigma=1.0)).annotate(step())[0, 24, :, 0]
    wide = annotator("softedge", RunConfig(softedge_sigma=4.0)).annotate(step())[0, 24, :, 0]
    assert np.count_nonzero(wide > 64) > np.count_nonzero(narrow > 64)
    assert step_response(1.0, 2.0) == pytest.approx(1 / (2 * np.sqrt(2 * np.pi)))
