"""Resume: checkpoints of the denoising loop, and a killed run that picks up where it stopped."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

import vedit
from conftest import flip_byte, make_clip, tensor_bytes
from vedit import plugins
from vedit.cache.checkpoints import Checkpoint, CheckpointStore, checkpoint_key
from vedit.cli import create_app
from vedit.config import RunConfig
from vedit.plugins.hookspecs import hookimpl
from vedit.report import VeditWarning

pytestmark = pytest.mark.slow

OPTIONS = dict(
    model="tiny", prompt="a watercolor painting", steps=8, inversion_steps=8, chunk_size=4, size="64x48",
    output_size="working", device="cpu", dtype="fp32", seed=3, checkpoint_every=2,
)  # fmt: skip


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("resume") / "clip.mp4", frames=12, size=(64, 48))


@pytest.fixture(scope="module")
def reference(clip, tmp_path_factory):
    """An uninterrupted run, in its own cache: the bytes every resumed run must give."""
    root = tmp_path_factory.mktemp("reference")
    out = root / "out.mp4"
    result = vedit.edit(clip, out, cache_dir=str(root / "cache"), **OPTIONS)
    assert result.resumed_from is None
    assert _checkpoints(root / "cache") == []  # a finished run cleans up
    return out.read_bytes(), result


def _checkpoints(cache: Path) -> list[Path]:
    folder = cache / "checkpoints"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _step_of(path: Path) -> int:
    with safe_open(str(path), framework="pt") as f:
        return int(f.metadata()["step"])


class _StopAt:
    """A reporter that stops the run (as Ctrl-C does) once the denoising loop has done ``steps`` steps."""

    def __init__(self, steps: int, error: type[BaseException] = KeyboardInterrupt):
        self.steps, self.error, self.messages = steps, error, []

    def task(self, description, total):
        reporter = self

        class _Task:
            done = 0

            def advance(self, amount=1):
                self.done += amount
                if description == "denoise" and self.done >= reporter.steps:
                    raise reporter.error()

        return _Task()

    def message(self, text):
        self.messages.append(text)

    def warning(self, text):
        self.messages.append(text)


def _stopped(clip, cache: Path, out: Path, steps: int) -> Path:
    """The checkpoint a run stopped after ``steps`` steps keeps."""
    with pytest.raises(KeyboardInterrupt):
        vedit.edit(clip, out, reporter=_StopAt(steps), cache_dir=str(cache), **OPTIONS)
    (kept,) = _checkpoints(cache)
    return kept


class _Stateful:
    """A propagator with no state_dict: it keeps its own random state, which no checkpoint could hold."""

    name = "no-state"
    needs_source_branch = False

    def begin(self, job, plan):
        self.generator = torch.Generator().manual_seed(0)

    def predict(self, step, latents, denoiser):
        return denoiser(torch.arange(latents.shape[0]), latents, step)


class _Plugin:
    @hookimpl
    def register_propagators(self, register):
        register(_Stateful())


def test_a_run_killed_mid_denoise_resumes_to_the_same_bytes(clip, reference, tmp_path):
    """A real process death (SIGKILL, no clean-up at all) after 4 of 8 steps, then the same edit again."""
    cache = tmp_path / "cache"
    out = tmp_path / "out.mp4"
    script = textwrap.dedent(f"""
        import time, torch, vedit

        torch.set_num_threads({torch.get_num_threads()})  # as this process: a reduction's order follows it

        class Slow:  # sleeps once 4 steps are done, so the test can kill the process there
            def task(self, description, total):
                class T:
                    done = 0
                    def advance(self, amount=1):
                        self.done += amount
                        if description == "denoise" and self.done >= 4:
                            time.sleep(600)
                return T()
            def message(self, text): pass
            def warning(self, text): pass

        vedit.edit({str(clip)!r}, {str(out)!r}, reporter=Slow(), cache_dir={str(cache)!r}, **{OPTIONS!r})
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, process.stderr.read().decode()
            found = _checkpoints(cache)
            if found and found[0].suffix == ".safetensors" and _step_of(found[0]) == 4:
                break
            assert time.monotonic() < deadline, "no checkpoint after step 4"
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not out.exists()  # nothing half-written

    resumed = vedit.edit(clip, out, cache_dir=str(cache), **OPTIONS)
    expected, uninterrupted = reference
    assert resumed.resumed_from == 4 and resumed.steps_run == 8
    assert out.read_bytes() == expected
    # only the last 4 steps ran: half the denoising forwards, and no inversion (it was cached)
    denoising = {k: v for k, v in uninterrupted.forwards.items() if k != "inversion"}
    assert resumed.forwards == {k: v // 2 for k, v in denoising.items()}
    assert resumed.forwards_per_frame_step == pytest.approx(uninterrupted.forwards_per_frame_step)
    assert _checkpoints(cache) == []


def test_ctrl_c_keeps_the_checkpoint_and_says_so(clip, reference, tmp_path):
    cache = tmp_path / "cache"
    out = tmp_path / "out.mp4"
    stop = _StopAt(3)
    with pytest.raises(KeyboardInterrupt):
        vedit.edit(clip, out, reporter=stop, cache_dir=str(cache), **{**OPTIONS, "checkpoint_every": 1})
    (kept,) = _checkpoints(cache)
    assert _step_of(kept) == 3 and not out.exists()
    assert any("after step 3 of 8 is kept" in m for m in stop.messages)
    # the checkpoint does not depend on --checkpoint-every: resumed with the default, same bytes
    resumed = vedit.edit(clip, out, cache_dir=str(cache), **{**OPTIONS, "checkpoint_every": 5})
    assert resumed.resumed_from == 3 and out.read_bytes() == reference[0]


def test_a_failure_after_the_loop_resumes_with_no_step_left(clip, reference, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    out = tmp_path / "out.mp4"

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(importlib.import_module("vedit.pipeline.edit"), "write_frames", full_disk)
    with pytest.raises(OSError):
        vedit.edit(clip, out, cache_dir=str(cache), **OPTIONS)
    (kept,) = _checkpoints(cache)
    assert _step_of(kept) == 8  # the loop's end is kept too: decoding and writing are all that is left
    monkeypatch.undo()
    resumed = vedit.edit(clip, out, cache_dir=str(cache), **OPTIONS)
    assert resumed.resumed_from == 8 and out.read_bytes() == reference[0]
    assert all(v == 0 for v in resumed.forwards.values())


def test_another_edit_does_not_resume_from_a_checkpoint_that_is_not_its_own(clip, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        vedit.edit(clip, tmp_path / "a.mp4", reporter=_StopAt(2), cache_dir=str(cache), **OPTIONS)
    changed = vedit.edit(clip, tmp_path / "b.mp4", cache_dir=str(cache), **{**OPTIONS, "prompt": "a pencil sketch"})
    assert changed.resumed_from is None
    assert len(_checkpoints(cache)) == 1  # the other run's checkpoint is left for it
    # options that only change what is done with the latents afterwards keep the key
    base = RunConfig(**OPTIONS)
    parts = dict(frames_sha256="f" * 64, fingerprint="tiny", dtype="float32", device="cpu", trajectory="t")
    key = checkpoint_key(base, **parts)
    assert checkpoint_key(base.replace(postprocess="deflicker-luma", eval=True, output_size="source"), **parts) == key
    for change in (dict(prompt="x"), dict(seed=4), dict(guidance=5.0), dict(max_joint_keyframes=2), dict(chunk_size=2)):
        assert checkpoint_key(base.replace(**change), **parts) != key, change
    for part in ("frames_sha256", "fingerprint", "dtype", "device", "trajectory"):
        assert checkpoint_key(base, **{**parts, part: "other"}) != key, part


def test_a_damaged_checkpoint_is_dropped_with_one_warning_and_the_run_starts_over(clip, reference, tmp_path):
    cache = tmp_path / "cache"
    out = tmp_path / "out.mp4"
    kept = _stopped(clip, cache, out, 2)
    kept.write_bytes(kept.read_bytes()[:100])
    with pytest.warns(VeditWarning, match="cannot be read.*starting from the first step"):
        result = vedit.edit(clip, out, cache_dir=str(cache), **OPTIONS)
    assert result.resumed_from is None and out.read_bytes() == reference[0]
    assert _checkpoints(cache) == []


@pytest.mark.parametrize("part, offset", [("latents", 100), ("state.generator", 9)])  # 9: the mt19937 position's byte
def test_a_checkpoint_with_flipped_bytes_is_dropped_with_one_warning_and_the_run_starts_over(
    clip, reference, tmp_path, part, offset
):
    cache = tmp_path / "cache"
    out = tmp_path / "out.mp4"
    kept = _stopped(clip, cache, out, 4)
    start, _ = tensor_bytes(kept, part)
    flip_byte(kept, start + offset)
    with pytest.warns(VeditWarning) as warned:
        result = vedit.edit(clip, out, cache_dir=str(cache), **OPTIONS)
    assert [str(w.message) for w in warned] == [
        f"checkpoint {kept} is damaged ({part} does not match its checksum); starting from the first step"
    ]
    assert result.resumed_from is None and out.read_bytes() == reference[0]
    assert _checkpoints(cache) == []
    again = vedit.edit(clip, out, cache_dir=str(cache), **OPTIONS)  # and the next run is a plain one
    assert again.resumed_from is None and out.read_bytes() == reference[0]


def test_a_checkpoint_whose_state_the_propagator_refuses_is_dropped_with_one_warning(clip, reference, tmp_path):
    """A checkpoint written before vedit kept checksums cannot be checked; a state that does not load is caught."""
    cache = tmp_path / "cache"
    out = tmp_path / "out.mp4"
    kept = _stopped(clip, cache, out, 4)
    with safe_open(str(kept), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
        metadata = {k: v for k, v in f.metadata().items() if k != "checksums"}
    tensors["state.generator"][9] ^= 0xFF
    save_file(tensors, str(kept), metadata=metadata)
    with pytest.warns(VeditWarning) as warned:
        result = vedit.edit(clip, out, cache_dir=str(cache), **OPTIONS)
    assert [str(w.message) for w in warned] == [
        f"checkpoint {kept} holds a state propagator 'tokenflow' cannot take (RuntimeError: Invalid mt19937 state); "
        "starting from the first step"
    ]
    assert result.resumed_from is None and out.read_bytes() == reference[0]
    assert _checkpoints(cache) == []


def test_no_checkpoints_with_checkpoint_every_0_or_no_cache(clip, tmp_path):
    for options in ({"checkpoint_every": 0}, {"no_cache": True}):
        cache = tmp_path / f"cache-{len(options)}-{next(iter(options))}"
        with pytest.raises(KeyboardInterrupt):
            vedit.edit(clip, tmp_path / "out.mp4", reporter=_StopAt(5), cache_dir=str(cache), **{**OPTIONS, **options})
        assert _checkpoints(cache) == []


def test_a_propagator_without_state_dict_keeps_no_checkpoints(clip, tmp_path):
    manager = plugins.get_plugin_manager()
    manager.register(_Plugin(), name="no-state-propagator")
    try:
        stop = _StopAt(5)
        with pytest.raises(KeyboardInterrupt):
            vedit.edit(clip, tmp_path / "out.mp4", reporter=stop, cache_dir=str(tmp_path / "cache"),
                       **{**OPTIONS, "propagator": "no-state"})  # fmt: skip
    finally:
        manager.unregister(name="no-state-propagator")
    assert _checkpoints(tmp_path / "cache") == []
    assert any("has no state_dict: this run keeps no checkpoints" in m for m in stop.messages)


def test_vedit_cache_lists_and_clears_checkpoints(clip, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        vedit.edit(clip, tmp_path / "out.mp4", reporter=_StopAt(2), cache_dir=str(cache), **OPTIONS)
    (kept,) = _checkpoints(cache)
    runner = CliRunner()
    listed = runner.invoke(create_app(), ["cache", "list", "--cache-dir", str(cache)], env={"COLUMNS": "400"})
    assert listed.exit_code == 0, listed.output
    assert "1 checkpoint" in listed.output and kept.stem[:12] in listed.output
    assert "2/8" in listed.output and "a watercolor painting" in listed.output
    other = CheckpointStore(cache).save(
        "f" * 32, Checkpoint(step=1, steps=8, latents=torch.zeros(1), metadata={"source": "b.mp4"})
    )
    removed = runner.invoke(create_app(), ["cache", "rm", "fff", "--cache-dir", str(cache)], env={"COLUMNS": "400"})
    assert removed.exit_code == 0, removed.output
    assert f"removed checkpoint {'f' * 32} of b.mp4" in removed.stdout and not other.exists() and kept.exists()
    cleared = runner.invoke(create_app(), ["cache", "clear", "--cache-dir", str(cache)])
    assert cleared.exit_code == 0, cleared.output
    assert "1 checkpoint" in cleared.output and _checkpoints(cache) == []
    assert list((cache / "inversions").glob("*.safetensors")) == []  # clear means every inversion too


def test_the_summary_says_a_run_resumed(clip, tmp_path):
    cache = tmp_path / "cache"
    out = tmp_path / "out.mp4"
    with pytest.raises(KeyboardInterrupt):
        vedit.edit(clip, out, reporter=_StopAt(4), cache_dir=str(cache), **OPTIONS)
    args = ["run", str(clip), "-o", str(out), "--cache-dir", str(cache)]
    for key, value in OPTIONS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    result = CliRunner().invoke(create_app(), args, env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "resumed" in result.output and "from the checkpoint after step 4 of 8; 4 steps run now" in result.output
    assert out.exists() and _checkpoints(cache) == []


def test_what_killed_writers_left_is_removed_and_what_live_ones_write_is_kept(clip, tmp_path):
    """A SIGKILL mid-write leaves a temporary file no code of the dead process can remove: the
    next run removes those whose process is gone, never another live run's."""
    from vedit.cache.files import partial_prefix, sweep_partials
    from vedit.cache.inversions import InversionCache
    from vedit.io.files import remove_dead_partials

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cache = InversionCache(tmp_path)
    cache.root.mkdir(parents=True)
    killed = cache.root / f".{'a' * 32}.safetensors.pid{dead.pid}.x1y2z3ab.partial"
    writing = cache.root / f"{partial_prefix('b' * 32 + '.safetensors')}q9w8e7r6.partial"
    unknown = cache.root / "someone-elses.partial"
    for path in (killed, writing, unknown):
        path.write_bytes(b"half")
    assert sweep_partials(cache.root) == 1
    assert not killed.exists() and writing.exists() and unknown.exists()

    out = tmp_path / "out.mp4"
    left = tmp_path / f".out.mp4.partial-1a2b3c4d-pid{dead.pid}.mp4"
    left_folder = tmp_path / f".out.mp4.partial-5e6f7a8b-pid{dead.pid}-video"
    live = tmp_path / f".out.mp4.partial-9c0d1e2f-pid{os.getpid()}.mp4"
    left.write_bytes(b"half")
    left_folder.mkdir()
    live.write_bytes(b"half")
    assert remove_dead_partials(out) == 2
    assert not left.exists() and not left_folder.exists() and live.exists()
    live.unlink()

    # and in a run: the inversion cache's leftover goes when the next inversion is written
    killed.write_bytes(b"half")
    vedit.edit(clip, out, cache_dir=str(tmp_path), **OPTIONS)
    assert not killed.exists() and writing.exists()
    assert not list(tmp_path.glob(".out.mp4.partial-*"))
