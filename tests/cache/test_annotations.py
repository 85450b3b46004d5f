"""The annotation cache: entries written whole or not at all, read memory-mapped, kept under the cap, listed and
cleared by `vedit cache`."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers.trajectories import put_aged
from vedit.cache.annotations import AnnotationCache, annotation_key
from vedit.cache.files import MB
from vedit.cache.inversions import InversionCache, cache_key
from vedit.cli import create_app

SHAPE = (3, 8, 16, 3)


def frames(value: int = 7) -> np.ndarray:
    return np.full(SHAPE, value, np.uint8)


def put(cache: AnnotationCache, key: str, value: int = 7, age: float = 0.0) -> Path:
    """An entry of ``value`` frames, last used ``age`` seconds ago."""
    with cache.writer(key, SHAPE) as writer:
        writer.write(frames(value)[:2])
        writer.write(frames(value)[2:])
        path = writer.finish()
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def files_in(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def test_an_entry_is_read_back_memory_mapped_and_only_as_the_shape_it_was_written(tmp_path):
    cache = AnnotationCache(tmp_path)
    path = put(cache, "a" * 32, 9)
    assert path == tmp_path / "annotations" / f"{'a' * 32}.npy" and files_in(path.parent) == [path.name]
    read = cache.get("a" * 32, SHAPE)
    assert isinstance(read, np.memmap) and np.array_equal(read, frames(9))
    assert np.array_equal(np.load(path, allow_pickle=False), frames(9))  # a plain .npy file
    warned: list[str] = []
    cache.warn = warned.append
    assert cache.get("a" * 32, (4, 8, 16, 3)) is None and not path.exists()  # not what the key promises: dropped
    assert warned == [
        "cached annotations aaaaaaaa… are damaged (it holds uint8 (3, 8, 16, 3), not uint8 (4, 8, 16, 3)); "
        "computing them again"
    ]
    assert cache.get("b" * 32, SHAPE) is None and len(warned) == 1  # a plain miss says nothing


def test_a_write_that_stops_midway_leaves_nothing_behind(tmp_path):
    cache = AnnotationCache(tmp_path)
    with pytest.raises(KeyboardInterrupt), cache.writer("a" * 32, SHAPE) as writer:
        writer.write(frames()[:2])
        raise KeyboardInterrupt
    assert files_in(tmp_path / "annotations") == []
    with cache.writer("a" * 32, SHAPE) as writer, pytest.raises(ValueError, match="2 frames written of 3"):
        writer.write(frames()[:2])
        writer.finish()
    assert files_in(tmp_path / "annotations") == []


def test_a_write_the_disk_refuses_is_one_warning_and_no_file(tmp_path, monkeypatch):
    warned: list[str] = []
    cache = AnnotationCache(tmp_path, warn=warned.append)
    with cache.writer("a" * 32, SHAPE) as writer:

        def full(data):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(writer._file, "write", full)
        writer.write(frames())
        assert writer.failed and writer.finish() is None
    assert warned == [
        f"cannot write the annotation cache in {cache.root} (No space left on device); carrying on without it"
    ]
    assert files_in(cache.root) == []


def test_the_cap_evicts_the_least_recently_used_entries_but_never_the_new_one(tmp_path):
    size = put(AnnotationCache(tmp_path / "measure"), "m" * 32).stat().st_size
    cache = AnnotationCache(tmp_path, max_bytes=2 * size)
    put(cache, "a" * 32, age=300)
    put(cache, "b" * 32, age=200)
    cache.get("a" * 32, SHAPE)  # a use: now the most recent
    put(cache, "c" * 32)
    assert sorted(entry.key[0] for entry in cache.entries()) == ["a", "c"]
    AnnotationCache(tmp_path, max_bytes=0).apply_cap(keep=cache.path("c" * 32))
    assert [entry.key[0] for entry in cache.entries()] == ["c"]


def test_the_key_is_another_for_any_change_of_what_the_frames_depend_on():
    base = {"frames_sha256": "f" * 64, "size": (64, 48), "annotator": "canny", "version": "1", "options": {"low": 100}}
    key = annotation_key(**base)
    assert len(key) == 32 and key == annotation_key(**{**base, "options": {"low": 100}})
    for change in ({"frames_sha256": "e" * 64}, {"size": (48, 64)}, {"annotator": "softedge"}, {"version": "2"},
                   {"options": {"low": 101}}, {"options": {"low": 100, "high": 200}}):  # fmt: skip
        assert annotation_key(**{**base, **change}) != key, change


def test_inversion_keys_are_those_they_always_were():
    key = cache_key(
        frames_sha256="f" * 64, fingerprint="tiny:seed0", size=(64, 48), inversion_steps=4, steps=2,
        source_prompt="a cat", dtype="float32",
    )  # fmt: skip
    assert key == "f56357dbaa2824be9c4cdee6a9f40685"  # as computed before the key helper was shared


def vedit(*args: str):
    return CliRunner().invoke(create_app(), [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": "250"})


def test_vedit_cache_lists_prunes_and_clears_the_annotations_too(tmp_path):
    annotations = AnnotationCache(tmp_path)
    size = put(annotations, "a" * 32, age=300).stat().st_size
    put(annotations, "b" * 32, age=100)
    put_aged(InversionCache(tmp_path), "c" * 32, 100)
    listed = vedit("cache", "list", "--cache-dir", tmp_path)
    assert listed.exit_code == 0, listed.output
    assert f"2 cached annotations (control frames), {2 * size / MB:.1f} MB in {annotations.root}" in listed.stdout
    pruned = vedit("cache", "prune", "--max-gb", size / 2**30, "--cache-dir", tmp_path)
    assert pruned.exit_code == 0, pruned.output
    assert f"removed 1 cached annotations ({size / MB:.1f} MB); 1 left, {size / MB:.1f} MB" in pruned.stdout
    assert [entry.key[0] for entry in annotations.entries()] == ["b"]
    cleared = vedit("cache", "clear", "--cache-dir", tmp_path)
    assert cleared.exit_code == 0, cleared.output
    assert f", 1 cached annotations ({size / MB:.1f} MB) and 0 checkpoints" in cleared.stdout
    assert annotations.entries() == [] and InversionCache(tmp_path).entries() == []
    assert "annotations" not in vedit("cache", "list", "--cache-dir", tmp_path).stdout
