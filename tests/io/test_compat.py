"""The old vedit.video path gives every public name it held, with a deprecation warning."""

from __future__ import annotations

import importlib
import sys

import pytest

# Where each public name of the former vedit.video lives now.
VIDEO_MODULE_PARTS = {
    "vedit.io.ffmpeg": ["find_ffmpeg"],
    "vedit.io.probe": ["FOLDER_FPS", "IMAGE_EXTENSIONS", "ColorTags", "VideoInfo", "probe"],
    "vedit.io.timing": ["Resampling", "resampling"],
    "vedit.io.frames": ["FrameRange", "parse_size", "working_size"],
    "vedit.io.reader": ["FrameReader", "untagged_matrix"],
    "vedit.io.files": [
        "OUTPUT_FORMATS", "SIGNATURE", "VIDEO_EXTENSIONS", "OutputFormat", "check_output_folder", "check_output_path",
        "check_replaceable", "process_alive", "remove_dead_partials", "unwritable_suffix", "write_atomically",
        "written_by_vedit",
    ],
    "vedit.io.writer": [
        "VideoWriter", "check_encoders", "frame_timing", "lost_in_writing", "no_audio_track", "output_format",
        "save_png", "written_size",
    ],
}  # fmt: skip


def test_the_old_vedit_video_path_gives_every_name_it_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plugins and scripts that import from ``vedit.video`` get the same objects, and a warning that
    names the modules to import them from."""
    monkeypatch.delitem(sys.modules, "vedit.video", raising=False)  # so that importing it warns again
    moved = r"^vedit\.video has moved: import vedit\.io\.ffmpeg or .* or vedit\.io\.writer instead$"
    with pytest.warns(DeprecationWarning, match=moved):
        old = importlib.import_module("vedit.video")
    for module, names in VIDEO_MODULE_PARTS.items():
        part = importlib.import_module(module)
        assert {name: getattr(old, name, None) for name in names} == {name: getattr(part, name) for name in names}
