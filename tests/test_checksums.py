"""Nothing damaged is used: trajectory files and inversion cache entries carry checksums of their
bytes, checked as each tensor is read, and a file without vedit's metadata is refused."""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import vedit as api
from conftest import flip_byte, make_clip, one_error_line, tensor_bytes
from test_cli import vedit
from vedit.cache.checksums import UNKNOWN, ChecksumMismatch, check_tensor, checksums_of, tensor_digest, with_checksums
from vedit.errors import InputError
from vedit.method.trajectory import DamagedTrajectory, Trajectory, TrajectoryWriter
from vedit.report import VeditWarning

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
def inverted(clip, tmp_path_factory) -> Path:
    """The clip's trajectory file, as 'vedit invert -o' writes it."""
    path = tmp_path_factory.mktemp("inverted") / "clip.safetensors"
    options = ["--model", "tiny", "--steps", "4", "--inversion-steps", "4", "--size", "64x48", "--device", "cpu",
               "--dtype", "fp32", "--seed", "3"]  # fmt: skip
    result = vedit("invert", clip, "-o", path, "--no-cache", "--quiet", *options)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def reference(clip, tmp_path_factory) -> tuple[bytes, Path]:
    """An edit from a fresh cache: its output's bytes, and that cache (copy it before damaging it)."""
    root = tmp_path_factory.mktemp("reference")
    result = api.edit(clip, root / "out.mp4", cache_dir=str(root / "cache"), **OPTIONS)
    assert result.inversion == "computed"
    return (root / "out.mp4").read_bytes(), root / "cache"


def small_trajectory(**metadata: str) -> Trajectory:
    generator = torch.Generator().manual_seed(2)
    latents = {t: torch.randn(3, 4, 6, 8, generator=generator) for t in (501, 1, 751)}
    return Trajectory(clean=torch.randn(3, 4, 6, 8, generator=generator), latents=latents, timesteps=[501, 1],
                      noisiest=751, metadata=dict(metadata))  # fmt: skip


# ---------------------------------------------------------------------------------- the checksums


def test_a_checksum_is_the_crc32_of_the_bytes_and_catches_one_flipped_bit():
    tensor = torch.arange(12, dtype=torch.float16).reshape(3, 4)
    assert tensor_digest(tensor) == f"crc32:{zlib.crc32(tensor.numpy().tobytes()):08x}"
    assert tensor_digest(tensor.t()) == tensor_digest(tensor.t().contiguous())  # the bytes as stored, in C order
    metadata = with_checksums({"format": "x", "frames": "3"}, {"a": tensor})
    sums = checksums_of(metadata)
    check_tensor("a", tensor, sums)
    flipped = tensor.clone()
    flipped.view(torch.int16)[1, 2] ^= 1
    with pytest.raises(ChecksumMismatch, match="^a does not match its checksum$"):
        check_tensor("a", flipped, sums)
    with pytest.raises(ChecksumMismatch, match="^its metadata does not match its checksum$"):
        checksums_of({**metadata, "frames": "4"})
    with pytest.raises(ChecksumMismatch, match="^its checksums are unreadable$"):
        checksums_of({**metadata, "checksums": metadata["checksums"][:-1]})
    assert checksums_of({"format": "x"}) is None  # written before vedit kept checksums: nothing to check
    check_tensor("a", flipped, None)


def test_the_step_by_step_writer_fills_in_every_checksum_it_made_room_for(tmp_path):
    stored = small_trajectory()
    path = tmp_path / "t.safetensors"
    writer = TrajectoryWriter(path, {"source": "clip.mp4"})
    writer.begin(stored.clean, stored.timesteps, stored.noisiest)
    for t in (501, 1, 751):
        writer.put(t, stored.latents[t])
    loaded = writer.finish()
    with safe_open(str(path), framework="pt") as f:  # still a file safetensors itself reads
        sums = checksums_of(f.metadata())
        names = list(f.keys())
        for name in names:
            assert sums[name] == f"crc32:{zlib.crc32(f.get_tensor(name).numpy().tobytes()):08x}", name
    assert sorted(sums) == sorted(["__metadata__", *names]) and UNKNOWN not in sums.values()
    assert torch.equal(loaded.at(1), stored.latents[1]) and torch.equal(loaded.clean, stored.clean)


def test_a_damaged_step_is_caught_when_that_step_is_read(tmp_path):
    stored = small_trajectory()
    path = stored.save(tmp_path / "t.safetensors")
    offset, size = tensor_bytes(path, "latents_t0001")
    flip_byte(path, offset + size - 1)
    loaded = Trajectory.load(path)  # the metadata and clean are sound; the steps are read one by one
    assert torch.equal(loaded.at(501), stored.latents[501]) and torch.equal(loaded.latents[751], stored.latents[751])
    for _ in range(2):  # every read of it, not only the first
        with pytest.raises(DamagedTrajectory, match=r"is damaged: latents_t0001 does not match its checksum;"):
            loaded.at(1, torch.tensor([0]))
    with pytest.raises(DamagedTrajectory, match="latents_t0001 does not match"):
        Trajectory.load(path, mapped=False)


def test_a_trajectory_file_written_before_checksums_still_loads_unchecked(tmp_path):
    stored = small_trajectory()
    path = tmp_path / "old.safetensors"
    tensors = {"clean": stored.clean, **{f"latents_t{t:04d}": x for t, x in stored.latents.items()}}
    save_file(tensors, str(path), metadata={"format": "vedit-trajectory/1", "timesteps": "[501, 1]", "noisiest": "751"})
    loaded = Trajectory.load(path)
    assert torch.equal(loaded.at(1), stored.latents[1]) and torch.equal(loaded.clean, stored.clean)


# --------------------------------------------------------------------------- --inversion FILE


@pytest.mark.parametrize("part", ["clean", "latents_t0751", "latents_t0251"])
def test_a_trajectory_file_with_flipped_tensor_bytes_is_one_line_and_exit_2(clip, inverted, tmp_path, part):
    path = Path(shutil.copy(inverted, tmp_path / "clip.safetensors"))
    offset, size = tensor_bytes(path, part)
    flip_byte(path, offset + size // 3)
    out = tmp_path / "out.mp4"
    result = vedit("run", clip, "--inversion", path, "--no-cache", "-o", out, "--quiet", *cli_options())
    assert result.exit_code == 2 and not out.exists()
    assert one_error_line(result) == (
        f"vedit: error: inversion file {path} is damaged: {part} does not match its checksum; "
        "make it again with 'vedit invert CLIP -o FILE'"
    )


def test_a_trajectory_file_with_a_changed_metadata_byte_is_one_line_and_exit_2(clip, inverted, tmp_path):
    path = Path(shutil.copy(inverted, tmp_path / "clip.safetensors"))
    data = bytearray(path.read_bytes())
    at = data.index(b"clip.mp4")  # in the "source" entry, which nothing else checks
    data[at] = ord("C")
    path.write_bytes(bytes(data))
    result = vedit("run", clip, "--inversion", path, "--no-cache", "-o", tmp_path / "out.mp4", *cli_options())
    assert result.exit_code == 2
    assert f"inversion file {path} is damaged: its metadata does not match its checksum;" in one_error_line(result)


def test_a_trajectory_file_without_vedits_metadata_is_refused_saying_what_is_missing(clip, tmp_path, monkeypatch):
    from vedit.model import loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model loaded before the check"))
    bare = tmp_path / "bare.safetensors"  # made by another tool
    save_file({"clean": torch.zeros(12, 4, 6, 8)}, str(bare))
    result = vedit("run", clip, "--inversion", bare, "-o", tmp_path / "out.mp4", *cli_options())
    assert result.exit_code == 2
    assert one_error_line(result) == (
        f"vedit: error: {bare} was not written by vedit: it has no 'format', 'timesteps', 'noisiest', 'width', "
        "'height' metadata; make it with 'vedit invert CLIP -o FILE'"
    )
    # saved through the Python API, which does not know the clip's size
    made = small_trajectory().save(tmp_path / "made.safetensors")
    result = vedit("run", clip, "--inversion", made, "-o", tmp_path / "out.mp4", *cli_options())
    assert result.exit_code == 2
    assert one_error_line(result) == (
        f"vedit: error: {made} lacks metadata that vedit writes: it has no 'width', 'height' metadata; "
        "make it with 'vedit invert CLIP -o FILE'"
    )


# ------------------------------------------------------------------------------- cache entries


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
