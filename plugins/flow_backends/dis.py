"""Flow backend ``dis``: OpenCV's dense inverse search (Kroeger et al., ECCV 2016). No weights."""

from __future__ import annotations

import numpy as np

from vedit.plugins.hookspecs import hookimpl

PRESETS = ("ultrafast", "fast", "medium")


class DISFlow:
    name = "dis"
    description = "OpenCV DIS optical flow on luma, medium preset (no weights; the default)"

    def __init__(self, preset: str = "medium"):
        if preset not in PRESETS:
            raise ValueError(f"DIS preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        self.preset = preset

    def unavailable_reason(self) -> str | None:
        try:
            import cv2  # noqa: F401
        except ImportError:
            return "needs OpenCV: pip install opencv-python-headless"
        return None

    def flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        import cv2

        preset = getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{self.preset.upper()}")
        dis = cv2.DISOpticalFlow_create(preset)  # one per call: an instance is not safe across threads
        out = np.empty((*first.shape[:3], 2), dtype=np.float32)
        for i in range(first.shape[0]):
            a = cv2.cvtColor(np.ascontiguousarray(first[i]), cv2.COLOR_RGB2GRAY)
            b = cv2.cvtColor(np.ascontiguousarray(second[i]), cv2.COLOR_RGB2GRAY)
            out[i] = dis.calc(a, b, None)
        return out


@hookimpl
def register_flow_backends(register):
    register(DISFlow())
