"""Long clips: a run with K ≤ M is the published run, and beyond it the bounded one."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_clip
from vedit.io.reader import FrameReader
from vedit.pipeline.edit import edit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("long") / "clip.mp4", frames=12, size=(64, 48))


def _run(clip, out, **options):
    result = edit(
        clip,
        out,
        model="tiny",
        prompt="a watercolor painting",
        steps=2,
        inversion_steps=2,
        chunk_size=2,
        size="64x48",
        output_size="working",
        device="cpu",
        dtype="fp32",
        seed=0,
        no_cache=True,
        **options,
    )
    return result, FrameReader(out, size=(64, 48)).read_all()


def test_a_run_with_k_at_most_m_is_the_published_run_and_beyond_it_the_bounded_one(clip, tmp_path):
    # 12 frames in chunks of 2: K = 6 keyframes
    published, frames = _run(clip, tmp_path / "published.mp4", max_joint_keyframes=1000)
    exactly, same = _run(clip, tmp_path / "k-equals-m.mp4", max_joint_keyframes=6)
    assert np.array_equal(frames, same)
    assert published.engines["keyframe"] == "eager" and "keyframe_bounded" not in exactly.engines
    bounded, other = _run(clip, tmp_path / "bounded.mp4", max_joint_keyframes=3)
    assert bounded.engines["keyframe_bounded"] == "eager" and "keyframe" not in bounded.engines
    assert bounded.forwards == published.forwards  # the same UNet work, less attention
    assert other.shape == frames.shape and not np.array_equal(other, frames)
    _, again = _run(clip, tmp_path / "bounded-again.mp4", max_joint_keyframes=3)
    assert np.array_equal(other, again)  # the partners are drawn with the run's seed
