"""The built-in annotators: ``canny`` (OpenCV's Canny edges) and ``softedge`` (smoothed gradient magnitude), both
without learned weights."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

import vedit
from vedit.config import option_value
from vedit.errors import ConfigError
from vedit.plugins.hookspecs import hookimpl

SOFTEDGE_PERCENTILE = 99.5  # of a frame's gradient magnitudes: shown at 255, and what is above it
SOFTEDGE_FLOOR_CONTRAST = 1 / 16  # a step of this contrast (of the full grey range) is the faintest edge shown at 255


def _gray(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (H, W) uint8 luma, as OpenCV weighs it (BT.601)."""
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)


def _three_channels(maps: np.ndarray) -> np.ndarray:
    """(b, H, W) one-channel maps → (b, H, W, 3), as ControlNets are trained on them."""
    return np.repeat(maps[..., None], 3, axis=-1)


class Canny(vedit.Annotator):
    """Canny edges (Canny, TPAMI 1986) of each frame's luma with OpenCV's ``cv2.Canny``: 255 on an edge, 0 elsewhere,
    from the hysteresis thresholds ``low`` and ``high`` on the Sobel gradient magnitude, as ControlNet's canny
    models were trained (their annotator's defaults are 100 and 200)."""

    name = "canny"
    description = "OpenCV Canny edges of each frame (low, high); no weights"
    version = "1"
    controlnets = {
        "sd1": "lllyasviel/sd-controlnet-canny",
        "sd2": "thibaud/controlnet-sd21-canny-diffusers",
        "sdxl": "diffusers/controlnet-canny-sdxl-1.0",
    }

    class Options(vedit.Annotator.Options):
        low: int = vedit.option(
            100, help="Lower hysteresis threshold: a weaker edge pixel is kept only when joined to a strong one.",
            min=0, max=255,
        )  # fmt: skip
        high: int = vedit.option(
            200, help="Upper hysteresis threshold: an edge pixel at least this strong is kept.", min=0, max=255
        )

    def check(self) -> None:
        low, high = self.options.low, self.options.high
        if low >= high:
            raise ConfigError(
                f"{option_value('canny_low', low)} must be below {option_value('canny_high', high)}: "
                "the weaker edges kept are those between the two"
            )

    def annotate(self, frames: np.ndarray) -> np.ndarray:
        import cv2

        low, high = self.options.low, self.options.high
        return _three_channels(np.stack([cv2.Canny(_gray(frame), low, high) for frame in frames]))


def step_response(contrast: float, sigma: float) -> float:
    """The largest gradient magnitude (grey levels of 0–1 per pixel) of a straight step edge of ``contrast``
    smoothed by a Gaussian of ``sigma`` pixels: the Gaussian's peak, contrast / (σ √(2π))."""
    return contrast / (sigma * math.sqrt(2 * math.pi))


class SoftEdge(vedit.Annotator):
    """Soft edges without learned weights: the gradient magnitude of each frame's luma smoothed by a Gaussian of
    ``sigma`` pixels, scaled per frame so that its strong edges are near 255 and a flat frame is 0.

    Per frame, the luma Y in [0, 1] is smoothed (G = Y * Gaussian(σ)), its Sobel gradient gives the magnitude
    m = |∇G| in grey levels per pixel, and m is divided by its 99.5th percentile, or by the response of a step of
    1/16 contrast (:func:`step_response`) where that is larger, then clipped to 1 and scaled to 255. The
    percentile makes the map independent of the frame's contrast without letting a few pixels set the scale;
    the floor keeps noise and faint shading of a nearly flat frame near 0 instead of stretching them to 255.

    This approximates the soft edge maps ControlNet's softedge models were trained on, HED (Xie & Tu, ICCV 2015)
    and PiDiNet (Su et al., ICCV 2021): thick edges whose strength falls off across them. Those are learned
    detectors: they find object outlines over several scales and leave texture and shading out, where a
    gradient magnitude keeps strong texture, responds to shading edges, and sees one scale (``sigma``). Expect
    the edit to follow the source's structure with it, less selectively than with those maps; an annotator
    plugin can bring HED or PiDiNet with their weights.
    """

    name = "softedge"
    description = "soft edges: smoothed gradient magnitude of each frame (sigma); no weights"
    version = "1"
    controlnets = {"sd1": "lllyasviel/control_v11p_sd15_softedge"}

    class Options(vedit.Annotator.Options):
        sigma: float = vedit.option(
            2.0, help="Gaussian smoothing before the gradient, in pixels at the working size: larger, thicker and "
            "fewer edges.", min=0.5, max=20.0,
        )  # fmt: skip

    def annotate(self, frames: np.ndarray) -> np.ndarray:
        import cv2

        sigma = self.options.sigma
        floor = step_response(SOFTEDGE_FLOOR_CONTRAST, sigma)
        maps = []
        for frame in frames:
            smooth = cv2.GaussianBlur(_gray(frame).astype(np.float32) / 255.0, (0, 0), sigma)
            # Sobel's 3x3 kernels weigh a unit slope 8 times: / 8 gives grey levels per pixel
            dx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3) / 8.0
            dy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3) / 8.0
            magnitude = np.sqrt(dx * dx + dy * dy)
            scale = max(float(np.percentile(magnitude, SOFTEDGE_PERCENTILE)), floor)
            maps.append(np.rint(np.clip(magnitude / scale, 0.0, 1.0) * 255.0).astype(np.uint8))
        return _three_channels(np.stack(maps))


@hookimpl
def register_annotators(register: Callable[[Any], None]) -> None:
    """canny and softedge."""
    register(Canny())
    register(SoftEdge())
