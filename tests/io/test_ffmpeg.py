"""Finding ffmpeg."""

from __future__ import annotations

import pytest

from vedit.errors import ConfigError
from vedit.io.ffmpeg import find_ffmpeg


def test_find_ffmpeg_honours_vedit_ffmpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    real = find_ffmpeg()
    monkeypatch.setenv("VEDIT_FFMPEG", real)
    assert find_ffmpeg() == real
    monkeypatch.setenv("VEDIT_FFMPEG", "/nowhere/ffmpeg")
    with pytest.raises(ConfigError, match="VEDIT_FFMPEG"):
        find_ffmpeg()
