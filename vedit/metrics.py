"""Quality figures: PSNR, and temporal consistency as warp error along the source clip's optical flow."""

from __future__ import annotations

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between uint8 images or videos of the same shape."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def source_flow(frames: np.ndarray) -> list[np.ndarray]:
    """Backward optical flow (Farnebäck) from each frame t+1 to frame t of the *source* clip.

    ``frames`` is (N, H, W, 3) uint8; returns N−1 flows (H, W, 2) in pixels.
    """
    import cv2

    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    return [
        cv2.calcOpticalFlowFarneback(gray[t + 1], gray[t], None, 0.5, 3, 15, 3, 5, 1.2, 0)
        for t in range(len(gray) - 1)
    ]


def warp_error(edited: np.ndarray, flows: list[np.ndarray], border: int = 4) -> float:
    """Mean absolute difference (0–255 scale) between each edited frame t+1 and frame t warped to it.

    The flows come from the source clip, so an edit that moves with the content scores low and one
    that flickers or drifts scores high. Pixels within ``border`` of the edge are left out.
    """
    import cv2

    h, w = edited.shape[1:3]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    errors = []
    for t, flow in enumerate(flows):
        map_x, map_y = grid_x + flow[..., 0], grid_y + flow[..., 1]
        warped = cv2.remap(edited[t], map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        diff = np.abs(warped.astype(np.float64) - edited[t + 1].astype(np.float64))
        errors.append(diff[border : h - border, border : w - border].mean())
    return float(np.mean(errors))
