"""Long clips: keyframe attention bounded by ``--max-joint-keyframes``, exact wherever K ≤ M."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_clip
from vedit.method.attention import bounded_joint_attention, joint_attention
from vedit.method.passes import joint_partners
from vedit.io.reader import FrameReader
from vedit.pipeline.edit import edit


def test_with_k_at_most_m_every_keyframe_attends_to_all_and_nothing_is_drawn():
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    for keys, limit in ((1, 1), (5, 5), (5, 32), (25, 32)):
        partners = joint_partners(keys, limit, generator)
        assert torch.equal(partners, torch.arange(keys).repeat(keys, 1))
    assert torch.equal(generator.get_state(), state)  # the keyframe draws of the run are untouched


def test_bounded_partners_are_self_neighbours_and_one_per_stratum():
    generator = torch.Generator().manual_seed(1)
    keys, limit = 40, 8
    partners = joint_partners(keys, limit, generator)
    assert partners.shape == (keys, limit) and partners.dtype == torch.int64
    for k, row in enumerate(partners.tolist()):
        assert row == sorted(set(row)) and len(row) == limit  # distinct, sorted
        fixed = {k, *(n for n in (k - 1, k + 1) if 0 <= n < keys)}
        assert fixed <= set(row)
        rest = [j for j in range(keys) if j not in fixed]
        drawn = sorted(set(row) - fixed)
        need = limit - len(fixed)
        # one from each of `need` consecutive strata of the other keyframes: spread over the clip
        for i, pick in enumerate(drawn):
            assert rest[i * len(rest) // need] <= pick < (rest + [keys])[(i + 1) * len(rest) // need]
    again = joint_partners(keys, limit, torch.Generator().manual_seed(1))
    assert torch.equal(partners, again)  # seeded
    assert not torch.equal(partners, joint_partners(keys, limit, generator))  # redrawn at the next step
    assert torch.equal(joint_partners(6, 2, generator)[:, :2].sort().values[0], torch.tensor([0, 1]))


class _Heads(nn.Module):
    heads = 2


def test_bounded_attention_with_every_partner_is_joint_attention():
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(5, 16, 8, generator=generator) for _ in range(3))
    everyone = joint_partners(5, 5)
    assert torch.allclose(bounded_joint_attention(_Heads(), q, k, v, everyone), joint_attention(_Heads(), q, k, v),
                          atol=1e-6, rtol=0)  # fmt: skip


def test_bounded_attention_sees_only_each_frames_partners(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(6, 10, 8, generator=generator) for _ in range(3))
    partners = torch.tensor([[0, 1, 4], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [0, 4, 5]])
    out = bounded_joint_attention(_Heads(), q, k, v, partners)
    for i, row in enumerate(partners.tolist()):
        alone = joint_attention(_Heads(), q[[i]].repeat(3, 1, 1), k[row], v[row])[0]  # i's queries over its partners
        assert torch.allclose(out[i], alone, atol=1e-6, rtol=0)
    changed_k, changed_v = k.clone(), v.clone()
    changed_k[5], changed_v[5] = 0, 0  # frame 5 is a partner of 4 and 5 only
    changed = bounded_joint_attention(_Heads(), q, changed_k, changed_v, partners)
    assert torch.equal(changed[:4], out[:4]) and not torch.allclose(changed[4], out[4])
    # the gather goes in blocks of frames when it would be large: same result
    monkeypatch.setattr("vedit.method.attention.MAX_GATHERED_ELEMENTS", 3 * 10 * 8 * 2)  # two frames per block
    assert torch.allclose(bounded_joint_attention(_Heads(), q, k, v, partners), out, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("long") / "clip.mp4", frames=12, size=(64, 48))


def _run(clip, out, **options):
    result = edit(clip, out, model="tiny", prompt="a watercolor painting", steps=2, inversion_steps=2, chunk_size=2,
                  size="64x48", output_size="working", device="cpu", dtype="fp32", seed=0, no_cache=True, **options)  # fmt: skip
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


def test_a_stored_trajectory_is_read_per_step_from_its_memory_map(tmp_path):
    from vedit.method.trajectory import MappedLatents, Trajectory

    generator = torch.Generator().manual_seed(5)
    latents = {t: torch.randn(7, 4, 6, 8, generator=generator) for t in (981, 501, 21, 999)}
    stored = Trajectory(clean=torch.randn(7, 4, 6, 8, generator=generator), latents=latents,
                        timesteps=[981, 501, 21], noisiest=999)  # fmt: skip
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
    return invert(_blind_unet, DDIMScheduler(**SD_SCHEDULER_CONFIG), clean, text, inversion_steps=10, steps=5,
                  batch_size=2, writer=writer)  # fmt: skip


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
        invert(breaks, DDIMScheduler(**SD_SCHEDULER_CONFIG), torch.zeros(5, 4, 6, 8), torch.zeros(1, 77, 32),
               inversion_steps=10, steps=5, batch_size=2, writer=TrajectoryWriter(tmp_path / "t.safetensors"))  # fmt: skip
    assert list(tmp_path.iterdir()) == []
