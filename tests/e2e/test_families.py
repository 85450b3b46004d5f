"""Every model family through the whole tool: an SDXL-shaped and a v-prediction SD 2 model edit, preview what
the full run makes, resume to the same bytes, and are told apart by the caches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vedit
from conftest import make_clip
from vedit.pipeline.preview import preview

pytestmark = pytest.mark.slow

OPTIONS = dict(
    prompt="a watercolor painting", steps=4, inversion_steps=4, chunk_size=3, size="64x48", output_size="working",
    device="cpu", dtype="fp32", seed=1,
)  # fmt: skip
MODELS = ["tiny-sdxl", "tiny-sd2-v"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("families") / "clip.mp4", frames=6, size=(64, 48))


class _StopAfter:
    """A reporter that stops the run (as Ctrl-C does) once the denoising loop has done ``steps`` steps."""

    def __init__(self, steps: int):
        self.steps = steps

    def task(self, description, total):
        stop = self.steps

        class _Task:
            done = 0

            def advance(self, amount=1):
                self.done += amount
                if description == "denoise" and self.done >= stop:
                    raise KeyboardInterrupt

        return _Task()

    def message(self, text):
        pass

    def warning(self, text):
        pass


def _frames(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


@pytest.mark.parametrize("model", MODELS)
def test_a_family_previews_resumes_and_keys_its_own_inversion(clip, tmp_path, model):
    cache = str(tmp_path / "cache")
    options = {**OPTIONS, "model": model, "cache_dir": cache, "batch_size": 1}
    full = vedit.edit(clip, tmp_path / "full", **options)
    planned = preview(clip, tmp_path / "sheet.png", **options)
    assert full.inversion == "computed" and planned.inversion == "cached"  # sliced from the run's
    assert planned.full_forwards == {k: v for k, v in full.forwards.items() if k != "inversion"}  # now cached
    written = _frames(tmp_path / "full")
    assert written.shape == (6, 48, 64, 3) and written.std() > 0

    with pytest.raises(KeyboardInterrupt):
        vedit.edit(clip, tmp_path / "stopped", reporter=_StopAfter(2), checkpoint_every=1, **options)
    resumed = vedit.edit(clip, tmp_path / "stopped", **options)
    assert resumed.resumed_from == 2
    np.testing.assert_array_equal(_frames(tmp_path / "stopped"), written)

    other = vedit.edit(clip, tmp_path / "other", **{**options, "model": "tiny"})
    assert other.inversion == "computed"  # another family's model: another inversion
    assert np.abs(_frames(tmp_path / "other").astype(int) - written).mean() > 1
