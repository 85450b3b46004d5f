"""Folders of frames need neither PyAV nor ffmpeg: where neither is installed (a GPU machine that carries only
what it lacks, see bench/gpu/), vedit's command line imports and a folder of PNG frames is edited into another."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from vedit_bench._common import synthetic_clip

# The modules that read and write video files, made unimportable as if they were not installed.
BLOCKED = ("av", "ffmpeg", "imageio_ffmpeg")

SCRIPT = """
import json, sys
for name in {blocked!r}:
    sys.modules[name] = None
import vedit.cli
import vedit
result = vedit.edit({clip!r}, {out!r}, prompt="a painting", model="tiny", size="32x32", steps=1, inversion_steps=1,
                    chunk_size=2, device="cpu", dtype="fp32", cache_dir={cache!r})
print(json.dumps({{"frames": result.frames, "loaded": sorted(n for n in {blocked!r} if sys.modules.get(n))}}))
"""


@pytest.mark.slow
def test_a_folder_of_frames_is_edited_with_pyav_and_ffmpeg_missing(tmp_path: Path) -> None:
    clip = synthetic_clip(tmp_path / "clip", 3, (32, 32))  # a folder of PNG frames, drawn without ffmpeg
    out = tmp_path / "out"
    script = SCRIPT.format(blocked=BLOCKED, clip=str(clip), out=str(out), cache=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"frames": 3, "loaded": []}
    written = sorted(out.iterdir())
    assert [p.name for p in written] == ["00000.png", "00001.png", "00002.png"]
    assert Image.open(written[0]).size == (32, 32)
