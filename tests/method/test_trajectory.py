"""Trajectories (vedit.method.trajectory): read per step from a memory map, written step by step by the
inversion, kept in memory when the disk fills, and no file left by a failed inversion."""

from __future__ import annotations

import zlib

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import flip_byte, tensor_bytes
from helpers.trajectories import small_trajectory
from vedit.cache.checksums import UNKNOWN, checksums_of
from vedit.cache.inversions import InversionCache, cache_key
from vedit.errors import InputError
from vedit.method.trajectory import DamagedTrajectory, Trajectory, TrajectoryWriter


def test_a_stored_trajectory_is_read_per_step_from_its_memory_map(tmp_path):
    from vedit.method.trajectory import MappedLatents, Trajectory

    generator = torch.Generator().manual_seed(5)
    latents = {t: torch.randn(7, 4, 6, 8, generator=generator) for t in (981, 501, 21, 999)}
    stored = Trajectory(
        clean=torch.randn(7, 4, 6, 8, generator=generator), latents=latents, timesteps=[981, 501, 21], noisiest=999
    )
    path = stored.save(tmp_path / "trajectory.safetensors")
    loaded = Trajectory.load(path)
    assert isinstance(loaded.latents, MappedLatents) and sorted(loaded.latents) == sorted(latents)
    for t, expected in latents.items():
        view = loaded.latents[t]
        assert torch.equal(view, expected)
        assert view.untyped_storage().data_ptr() != expected.untyped_storage().data_ptr()
    step = loaded.at(501)
    assert torch.equal(step, latents[501])
    step.add_(1)  # a copy: the map is read-only, and the file unchanged
    assert torch.equal(loaded.at(501), latents[501])
    assert torch.equal(loaded.at(21, torch.tensor([6, 0])), latents[21][[6, 0]])
    alpha = torch.linspace(0.99, 0.01, 1000)
    assert torch.equal(loaded.ddim_noise(alpha), stored.ddim_noise(alpha))
    path.unlink()  # evicted from the cache mid-run: the map still reads the old file
    assert torch.equal(loaded.at(981), latents[981])
    whole = Trajectory.load(stored.save(tmp_path / "again.safetensors"), mapped=False)
    assert isinstance(whole.latents, dict) and torch.equal(whole.latents[999], latents[999])


# ----------------------------------------------------------------------------- trajectory written step by step


def _blind_unet(x, t, text):
    gen = torch.Generator().manual_seed(int(t))
    return torch.randn(x.shape[1:], generator=gen, dtype=x.dtype).expand_as(x) * 0.5


def _invert(writer=None, dtype=torch.float32):
    from diffusers import DDIMScheduler

    from vedit.method.ddim import invert
    from vedit.model.builders import SD_SCHEDULER_CONFIG

    clean = torch.randn(5, 4, 6, 8, generator=torch.Generator().manual_seed(4)).to(dtype)
    text = torch.zeros(1, 77, 32, dtype=dtype)
    return invert(
        _blind_unet,
        DDIMScheduler(**SD_SCHEDULER_CONFIG),
        clean,
        text,
        inversion_steps=10,
        steps=5,
        batch_size=2,
        writer=writer,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_inversion_writes_its_trajectory_to_the_file_step_by_step(tmp_path, dtype):
    from safetensors import safe_open

    from vedit.method.trajectory import MappedLatents, Trajectory, TrajectoryWriter

    held = _invert(dtype=dtype)
    path = tmp_path / "t.safetensors"
    writer = TrajectoryWriter(path, {"source": "clip.mp4"})
    seen = []
    real_put = writer.put
    writer.put = lambda t, x: (seen.append((t, path.exists())), real_put(t, x))  # type: ignore[method-assign]
    streamed = _invert(writer, dtype)
    assert seen and not any(exists for _, exists in seen)  # in place only once complete
    assert isinstance(streamed.latents, MappedLatents) and sorted(streamed.latents) == sorted(held.latents)
    for t in held.latents:
        assert torch.equal(streamed.latents[t], held.latents[t]) and streamed.latents[t].dtype == dtype
    assert torch.equal(streamed.clean, held.clean)
    assert (streamed.timesteps, streamed.noisiest) == (held.timesteps, held.noisiest)
    with safe_open(str(path), framework="pt") as f:  # a valid safetensors file, readable by the library itself
        assert f.metadata()["source"] == "clip.mp4" and f.metadata()["frames"] == "5"
        assert torch.equal(f.get_tensor("clean"), held.clean)
    assert torch.equal(Trajectory.load(path, mapped=False).latents[held.noisiest], held.latents[held.noisiest])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]  # no temporary file left
    (tmp_path / "spool").mkdir()
    spooled = _invert(TrajectoryWriter(None, folder=tmp_path / "spool"), dtype)
    assert torch.equal(spooled.latents[held.noisiest], held.latents[held.noisiest])
    assert list((tmp_path / "spool").iterdir()) == []  # the temporary file is unlinked, its map still reads


def test_a_full_disk_while_writing_keeps_the_trajectory_in_memory_with_one_warning(tmp_path):
    import errno
    import os

    from vedit.method.trajectory import TrajectoryWriter

    held = _invert()
    reasons = []
    writer = TrajectoryWriter(tmp_path / "t.safetensors", on_failure=reasons.append)
    real_write, writes = writer._file.write, []

    def fill_up(data):
        writes.append(len(data))
        if len(writes) > 3:  # the header, clean and one step reach the disk; then it is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(data)

    writer._file.write = fill_up
    kept = _invert(writer)
    assert reasons == ["No space left on device"] and writer.failed == "No space left on device"
    assert isinstance(kept.latents, dict)
    for t in held.latents:
        assert torch.equal(kept.latents[t], held.latents[t])
    assert torch.equal(kept.clean, held.clean)
    assert list(tmp_path.iterdir()) == []  # neither the entry nor a temporary file


def test_an_inversion_that_fails_leaves_no_file(tmp_path):
    from vedit.method.trajectory import TrajectoryWriter

    calls = []

    def breaks(x, t, text):
        calls.append(1)
        if len(calls) > 4:
            raise RuntimeError("the device fell over")
        return _blind_unet(x, t, text)

    from diffusers import DDIMScheduler

    from vedit.method.ddim import invert
    from vedit.model.builders import SD_SCHEDULER_CONFIG

    with pytest.raises(RuntimeError, match="fell over"):
        invert(
            breaks,
            DDIMScheduler(**SD_SCHEDULER_CONFIG),
            torch.zeros(5, 4, 6, 8),
            torch.zeros(1, 77, 32),
            inversion_steps=10,
            steps=5,
            batch_size=2,
            writer=TrajectoryWriter(tmp_path / "t.safetensors"),
        )
    assert list(tmp_path.iterdir()) == []


def test_trajectory_round_trip_and_cache(tmp_path):
    latents = {t: torch.full((2, 4, 8, 8), float(t)) for t in (501, 1, 751)}
    trajectory = Trajectory(
        clean=torch.zeros(2, 4, 8, 8), latents=latents, timesteps=[501, 1], noisiest=751, metadata={"model": "tiny"}
    )
    loaded = Trajectory.load(trajectory.save(tmp_path / "t.safetensors"))
    assert loaded.timesteps == [501, 1] and loaded.noisiest == 751 and loaded.metadata["model"] == "tiny"
    assert torch.equal(loaded.at(751, torch.tensor([1])), latents[751][1:])
    cache = InversionCache(tmp_path / "c")
    key = cache_key(
        frames_sha256="ab",
        fingerprint="tiny:seed0",
        size=(64, 64),
        inversion_steps=50,
        steps=50,
        source_prompt="",
        dtype="float32",
    )
    assert key != cache_key(
        frames_sha256="ab",
        fingerprint="tiny:seed0",
        size=(64, 64),
        inversion_steps=50,
        steps=50,
        source_prompt="a cat",
        dtype="float32",
    )
    assert cache.get(key) is None
    cache.put(key, trajectory)
    assert cache.get(key).noisiest == 751
    cache.path(key).write_bytes(b"broken")
    with pytest.warns(UserWarning, match="is damaged"):
        assert cache.get(key) is None and not cache.path(key).exists()  # damaged entries are dropped, and said
    (tmp_path / "x.safetensors").write_bytes(b"nonsense")
    with pytest.raises(InputError, match="not a readable vedit trajectory"):
        Trajectory.load(tmp_path / "x.safetensors")


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
