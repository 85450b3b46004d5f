"""Nothing damaged is used: checksums of tensors and metadata, and a trajectory file that is damaged or
lacks vedit's metadata refused in one line."""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import flip_byte, make_clip, one_error_line, tensor_bytes
from helpers.cli import vedit
from helpers.trajectories import small_trajectory
from vedit.cache.checksums import ChecksumMismatch, check_tensor, checksums_of, tensor_digest, with_checksums

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
