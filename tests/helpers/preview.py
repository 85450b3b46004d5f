"""What the preview tests share: 16 frames in chunks of 4 (keyframes 2, 6, 10, 14), the tiny model, a
reporter that records, and the contact sheet read back."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_clip
from vedit.io.reader import FrameReader
from vedit.model.loading import load_model

N, B, T, INV = 16, 4, 2, 2  # 16 frames in chunks of 4: keyframes 2, 6, 10, 14


OPTIONS = dict(
    model="tiny", prompt="a watercolor painting", source_prompt="a test card", steps=T, inversion_steps=INV,
    chunk_size=B, size="64x64", output_size="working", device="cpu", dtype="fp32", seed=0,
)  # fmt: skip


@pytest.fixture(scope="module")
def sd():
    return load_model("tiny", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("preview") / "clip.mp4", frames=N, size=(64, 64))


@pytest.fixture(scope="module")
def source_frames(clip):
    return FrameReader(clip, size=(64, 64)).read_all()


class Recorder:
    def __init__(self):
        self.tasks: list[str] = []
        self.messages: list[str] = []
        self.warnings: list[str] = []

    def task(self, description, total):
        self.tasks.append(description)
        return self

    def advance(self, amount=1):
        pass

    def message(self, text):
        self.messages.append(text)

    def warning(self, text):
        self.warnings.append(text)


def sheet(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def halves(image: np.ndarray, result) -> tuple[np.ndarray, np.ndarray]:
    """The source and edited images of every pair on the sheet, (P, H, W, 3) each."""
    w, h = result.size
    sources = np.stack([image[y : y + h, x : x + w] for x, y in result.tiles])
    edited = np.stack([image[y : y + h, x + w : x + 2 * w] for x, y in result.tiles])
    return sources, edited
