"""Damaged inversion cache entries in whole runs: said and rebuilt, or the run ended in one line and the same
command rebuilds it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import vedit as api
from conftest import flip_byte, make_clip, one_error_line, tensor_bytes
from helpers.cli import vedit
from vedit.errors import InputError
from vedit.method.trajectory import Trajectory
from vedit.report import VeditWarning

pytestmark = pytest.mark.slow


# 4 steps: the sampling schedule is t = 751, 501, 251, 1 and z_T is at 751, so latents_t0251 is
# first read by the third denoising step.
OPTIONS = dict(
    model="tiny", prompt="a watercolor painting", steps=4, inversion_steps=4, chunk_size=4, size="64x48",
    output_size="working", device="cpu", dtype="fp32", seed=3,
)  # fmt: skip


def cli_options(**changes) -> list[str]:
    return [arg for key, value in {**OPTIONS, **changes}.items() for arg in (f"--{key.replace('_', '-')}", str(value))]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("checksums") / "clip.mp4", frames=12, size=(64, 48))


@pytest.fixture(scope="module")
def reference(clip, tmp_path_factory) -> tuple[bytes, Path]:
    """An edit from a fresh cache: its output's bytes, and that cache (copy it before damaging it)."""
    root = tmp_path_factory.mktemp("reference")
    result = api.edit(clip, root / "out.mp4", cache_dir=str(root / "cache"), **OPTIONS)
    assert result.inversion == "computed"
    return (root / "out.mp4").read_bytes(), root / "cache"


@pytest.mark.parametrize("part", ["clean", "latents_t0751"])
def test_a_cache_entry_read_before_the_first_step_and_damaged_is_said_and_rebuilt(clip, reference, tmp_path, part):
    expected, cached = reference
    cache = shutil.copytree(cached, tmp_path / "cache")
    (entry,) = (cache / "inversions").glob("*.safetensors")
    offset, size = tensor_bytes(entry, part)
    with open(entry, "r+b") as handle:  # overwritten with zeros, the header intact
        handle.seek(offset)
        handle.write(bytes(size))
    out = tmp_path / "out.mp4"
    with pytest.warns(VeditWarning) as warned:
        result = api.edit(clip, out, cache_dir=str(cache), **OPTIONS)
    assert [str(w.message) for w in warned] == [
        f"cached inversion {entry.stem[:8]}… is damaged ({part} does not match its checksum); computing it again"
    ]
    assert result.inversion == "computed" and out.read_bytes() == expected
    Trajectory.load(entry, mapped=False)  # computed again: every step sound


def test_a_cache_entry_damaged_in_a_later_step_ends_the_run_in_one_line_and_the_same_command_rebuilds_it(
    clip, reference, tmp_path
):
    expected, cached = reference
    cache = shutil.copytree(cached, tmp_path / "cache")
    (entry,) = (cache / "inversions").glob("*.safetensors")
    offset, size = tensor_bytes(entry, "latents_t0251")
    flip_byte(entry, offset + size // 2)
    out = tmp_path / "out.mp4"
    command = ["run", clip, "-o", out, "--cache-dir", cache, *cli_options(checkpoint_every=1)]
    result = vedit(*command, "--quiet")
    assert result.exit_code == 2 and not out.exists() and not entry.exists()
    assert one_error_line(result) == (
        f"vedit: error: cached inversion {entry.stem[:8]}… is damaged (latents_t0251 does not match its checksum); "
        "it was removed: the same command computes it again"
    )
    again = vedit(*command)
    assert again.exit_code == 0, again.output
    assert "from the checkpoint after step 2 of 4" in again.output  # the steps before it were sound
    assert out.read_bytes() == expected
    Trajectory.load(entry, mapped=False)  # computed again: every step sound


def test_the_python_api_raises_the_same_error_mid_run(clip, reference, tmp_path):
    _, cached = reference
    cache = shutil.copytree(cached, tmp_path / "cache")
    (entry,) = (cache / "inversions").glob("*.safetensors")
    offset, size = tensor_bytes(entry, "latents_t0001")
    flip_byte(entry, offset)
    with pytest.raises(InputError, match=r"latents_t0001 does not match its checksum\); it was removed"):
        api.edit(clip, tmp_path / "out.mp4", cache_dir=str(cache), **OPTIONS)
