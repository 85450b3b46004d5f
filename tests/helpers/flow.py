"""A texture moving right by 8 px per frame, for the flow and warp-error tests."""

from __future__ import annotations

import pytest

from vedit_bench.consistency import translating_clip


@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    """A texture moving right by 8 px per frame, 10 frames of 128x96."""
    return translating_clip(tmp_path_factory.mktemp("moving"), 10, (128, 96))
