"""The inversion cache: it never ends a run, says what it drops, and stays under its cap."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from helpers.trajectories import put_aged, trajectory
from vedit.cache.files import MB, CacheEntry
from vedit.cache.inversions import InversionCache
from vedit.errors import ConfigError, OutputError

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


class Lines(list):
    """Collects what the cache reports, as `warn` or `note`."""

    def __call__(self, line: str) -> None:
        assert isinstance(line, str) and "\n" not in line
        self.append(line)


def files_in(folder: Path) -> list[str]:
    """Every name in the folder, hidden temporary files included; [] if it does not exist."""
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def _write_half_then(error: BaseException):
    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 4096)  # part of the file reached the disk
        raise error

    return save_file


def test_a_cache_folder_under_a_regular_file_warns_once_and_is_skipped(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    warn = Lines()
    cache = InversionCache(tmp_path / "file" / "cache", warn=warn)
    assert cache.get("k" * 32) is None
    assert warn == []  # a miss is not worth a line; the put below says it
    assert cache.put("k" * 32, trajectory()) is None
    assert warn == [
        f"cannot write the inversion cache in {tmp_path}/file/cache/inversions (Not a directory); "
        "carrying on without it"
    ]


def test_a_file_where_the_cache_folder_should_be_is_named(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "inversions").write_text("")
    warn = Lines()
    assert InversionCache(tmp_path / "c", warn=warn).put("k" * 32, trajectory()) is None
    assert warn == [
        f"cannot write the inversion cache in {tmp_path}/c/inversions "
        f"({tmp_path}/c/inversions is a file, not a folder); carrying on without it"
    ]


def test_a_read_only_cache_folder_warns_and_leaves_nothing(tmp_path, monkeypatch):
    root = tmp_path / "c" / "inversions"
    root.mkdir(parents=True)
    if AS_ROOT:
        # root writes through chmod; refuse the temporary file as a read-only folder would
        def refuse(*args, dir=None, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), dir)

        monkeypatch.setattr("vedit.method.trajectory.tempfile.mkstemp", refuse)
    else:
        root.chmod(0o500)
    warn = Lines()
    try:
        assert InversionCache(tmp_path / "c", warn=warn).put("k" * 32, trajectory()) is None
        assert files_in(root) == []
    finally:
        root.chmod(0o700)
    assert warn == [f"cannot write the inversion cache in {root} (Permission denied); carrying on without it"]


@pytest.mark.parametrize(
    "error, reason",
    [
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "No space left on device"),
        # how safetensors itself reports a full disk (checked on a 64 KiB tmpfs)
        (
            SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
            "No space left on device",
        ),
        (OSError(errno.EROFS, os.strerror(errno.EROFS)), "Read-only file system"),
    ],
)
def test_a_failed_write_warns_and_removes_its_temporary_file(tmp_path, monkeypatch, error, reason):
    cache = InversionCache(tmp_path, warn=(warn := Lines()))
    cache.put("a" * 32, trajectory(1.0))
    monkeypatch.setattr("vedit.method.trajectory.save_file", _write_half_then(error))
    assert cache.put("b" * 32, trajectory(2.0)) is None
    assert warn == [f"cannot write the inversion cache in {cache.root} ({reason}); carrying on without it"]
    assert files_in(cache.root) == ["a" * 32 + ".safetensors"]  # no .partial left, the old entry intact
    assert cache.get("b" * 32) is None and cache.get("a" * 32).clean[0, 0, 0, 0] == 1.0


def test_a_rename_that_fails_leaves_no_temporary_file(tmp_path, monkeypatch):
    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("vedit.method.trajectory.os.replace", full)
    cache = InversionCache(tmp_path, warn=(warn := Lines()))
    assert cache.put("a" * 32, trajectory()) is None
    assert len(warn) == 1 and files_in(cache.root) == []


def test_warnings_go_to_the_warnings_module_by_default(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.warns(UserWarning, match=r"^cannot write the inversion cache in .* \(Not a directory\); carrying on"):
        assert InversionCache(tmp_path / "file").put("k" * 32, trajectory()) is None


def test_an_unreadable_entry_is_a_miss_with_a_warning_and_is_kept(tmp_path, monkeypatch):
    cache = InversionCache(tmp_path, warn=(warn := Lines()))
    path = cache.put("a" * 32, trajectory())
    if AS_ROOT:
        real_open = open

        def refuse(file, *args, **kwargs):
            if Path(file) == path:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr("vedit.cache.inversions.open", refuse, raising=False)
    else:
        path.chmod(0o000)
    try:
        assert cache.get("a" * 32) is None
    finally:
        path.chmod(0o600)
    assert warn == [f"cannot read the inversion cache in {cache.root} (Permission denied); carrying on without it"]
    assert path.is_file()  # unreadable is not damaged: it stays for a run that can read it


def test_a_hit_in_a_cache_that_cannot_be_touched_is_still_a_hit(tmp_path, monkeypatch):
    cache = InversionCache(tmp_path, warn=(warn := Lines()))
    cache.put("a" * 32, trajectory(3.0))

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("vedit.cache.inversions.os.utime", read_only)
    assert cache.get("a" * 32).clean[0, 0, 0, 0] == 3.0
    assert warn == []


def test_a_damaged_entry_says_so_and_is_removed(tmp_path):
    cache = InversionCache(tmp_path, warn=(warn := Lines()))
    key = "1a2b3c4d" + "0" * 24
    cache.put(key, trajectory())
    cache.path(key).write_bytes(b"broken")
    assert cache.get(key) is None
    assert len(warn) == 1
    assert warn[0].startswith("cached inversion 1a2b3c4d… is damaged (") and warn[0].endswith("); computing it again")
    assert str(tmp_path) not in warn[0]  # the reason, not the long path
    assert not cache.path(key).exists()
    assert cache.get(key) is None and len(warn) == 1  # now a plain miss


def test_a_safetensors_file_that_is_not_a_trajectory_is_damaged(tmp_path):
    from safetensors.torch import save_file

    cache = InversionCache(tmp_path, warn=(warn := Lines()))
    cache.root.mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, str(cache.path("f" * 32)), metadata={"format": "something-else"})
    assert cache.get("f" * 32) is None
    assert warn == [
        "cached inversion ffffffff… is damaged (is not a vedit trajectory (format 'something-else')); "
        "computing it again"
    ]


def test_a_damaged_entry_that_cannot_be_removed_says_that_too(tmp_path, monkeypatch):
    cache = InversionCache(tmp_path, warn=(warn := Lines()))
    key = "e" * 32
    cache.put(key, trajectory())
    cache.path(key).write_bytes(b"broken")

    def refuse(self, missing_ok=False):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    assert cache.get(key) is None
    assert len(warn) == 1 and warn[0].startswith("cached inversion eeeeeeee… is damaged (")
    assert warn[0].endswith("); computing it again (cannot remove it: Permission denied)")


def test_put_evicts_the_least_recently_used_entries_to_stay_under_the_cap(tmp_path):
    probe = InversionCache(tmp_path / "probe")
    size = probe.put("p" * 32, trajectory()).stat().st_size
    cache = InversionCache(tmp_path / "c", max_bytes=2 * size, warn=(warn := Lines()))
    old, used, new = ("a" * 32, "b" * 32, "c" * 32)
    put_aged(cache, old, age=300)  # 2 entries: at the cap, nothing evicted
    put_aged(cache, used, age=600)
    assert cache.get(used) is not None  # a use makes it the most recent
    note = Lines()
    assert cache.put(new, trajectory(), note=note) == cache.path(new)
    assert [e.key for e in cache.entries()] == [used, new]
    assert note == [
        f"evicted 1 cached inversion ({size / MB:.1f} MB), least recently used first, "
        f"to keep the cache under {2 * size / MB:.1f} MB"
    ]
    assert warn == []


def test_several_entries_are_evicted_oldest_first_and_counted(tmp_path):
    cache = InversionCache(tmp_path, warn=(warn := Lines()))
    for age, key in ((100, "a"), (400, "b"), (300, "c"), (200, "d")):
        put_aged(cache, key * 32, age)
    size = cache.path("a" * 32).stat().st_size
    cache.max_bytes = 3 * size
    note = Lines()
    cache.put("e" * 32, trajectory(), note=note)
    # 5 entries, room for 3: the two least recently used (b, then c) go
    assert [e.key[0] for e in cache.entries()] == ["d", "a", "e"]
    assert note[0].startswith(f"evicted 2 cached inversions ({2 * size / MB:.1f} MB)")
    assert warn == []  # nothing alone was larger than the cap


def test_a_cap_of_zero_keeps_only_the_entry_just_written(tmp_path):
    cache = InversionCache(tmp_path, max_bytes=0, warn=(warn := Lines()))
    cache.put("a" * 32, trajectory())
    cache.put("b" * 32, trajectory(), note=(note := Lines()))
    assert [e.key for e in cache.entries()] == ["b" * 32]
    assert cache.get("b" * 32) is not None
    assert len(note) == 1 and note[0].startswith("evicted 1 cached inversion (")
    assert warn == []  # asked for: not worth a warning


def test_an_entry_larger_than_the_cap_is_kept_with_one_warning(tmp_path):
    cache = InversionCache(tmp_path, warn=(warn := Lines()))
    put_aged(cache, "a" * 32, age=100)
    cache.max_bytes = MB // 2
    path = cache.put("b" * 32, trajectory(frames=4, side=64))
    assert path.is_file() and [e.key for e in cache.entries()] == ["b" * 32]
    size = path.stat().st_size
    assert size > MB // 2
    assert warn == [
        f"cached inversion bbbbbbbb… ({size / MB:.1f} MB) is larger than the 0.5 MB cache cap; "
        "it is kept until the next inversion is cached"
    ]


def test_without_a_cap_nothing_is_evicted(tmp_path):
    cache = InversionCache(tmp_path, warn=(warn := Lines()))
    for key in "abcd":
        cache.put(key * 32, trajectory(), note=(note := Lines()))
    assert len(cache.entries()) == 4 and note == [] and warn == []


def test_an_eviction_that_fails_warns_and_keeps_the_new_entry(tmp_path, monkeypatch):
    cache = InversionCache(tmp_path, max_bytes=0, warn=(warn := Lines()))
    put_aged(cache, "a" * 32, age=100)

    def refuse(self, missing_ok=False):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    assert cache.put("b" * 32, trajectory()) == cache.path("b" * 32)
    assert warn == [f"cannot prune the inversion cache in {cache.root} (Permission denied); it may grow past 0 GB"]


def test_prune_shrinks_to_a_size_least_recently_used_first(tmp_path):
    cache = InversionCache(tmp_path)
    for age, key in ((100, "a"), (300, "b"), (200, "c")):
        put_aged(cache, key * 32, age)
    size = cache.path("a" * 32).stat().st_size
    assert cache.prune(size) == (2, 2 * size)
    assert [e.key[0] for e in cache.entries()] == ["a"]
    assert cache.prune(size) == (0, 0)


def test_a_negative_cap_is_refused():
    with pytest.raises(ValueError, match="0 or more"):
        InversionCache(max_bytes=-1)


def test_entries_name_their_clip_and_content(tmp_path):
    cache = InversionCache(tmp_path)
    cache.put("a" * 32, trajectory(source="/clips/dance.mp4", frames_sha256="0123456789abcdef" * 4))
    (entry,) = cache.entries()
    assert isinstance(entry, CacheEntry)
    assert (entry.key, entry.source, entry.content) == ("a" * 32, "/clips/dance.mp4", "0123456789ab")


def test_a_missing_cache_folder_is_empty_and_an_unlistable_one_is_one_error(tmp_path, monkeypatch):
    assert InversionCache(tmp_path / "nowhere").entries() == []
    assert InversionCache(tmp_path / "nowhere").clear() == (0, 0)
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match=r"^cannot read the inversion cache in .*/file/inversions: Not a directory$"):
        InversionCache(tmp_path / "file").entries()

    def refuse(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr("vedit.cache.files.os.scandir", refuse)
    with pytest.raises(OutputError, match=r"^cannot read the inversion cache in .*: Permission denied$"):
        InversionCache(tmp_path / "c").clear()


def test_find_takes_a_unique_prefix(tmp_path):
    cache = InversionCache(tmp_path)
    for key in ("ab12" + "0" * 28, "ab34" + "0" * 28, "cd56" + "0" * 28):
        cache.put(key, trajectory())
    assert cache.find("ab1").key == "ab12" + "0" * 28
    assert cache.find("CD").key == "cd56" + "0" * 28
    assert cache.find("ab34000…").key == "ab34" + "0" * 28  # as a warning prints it
    assert cache.find("ab12" + "0" * 28 + ".safetensors").key == "ab12" + "0" * 28
    with pytest.raises(
        ConfigError, match=r"^'ab' is the start of 2 cached inversions' keys \(ab1200000000, ab3400000000\)"
    ):
        cache.find("ab")
    with pytest.raises(ConfigError, match=r"^no cached inversion has a key starting with 'ef'"):
        cache.find("ef")
    with pytest.raises(ConfigError, match="give a cache key"):
        cache.find(" ")


def test_clear_removes_what_it_can_and_names_what_it_could_not(tmp_path, monkeypatch):
    cache = InversionCache(tmp_path)
    for key in "ab":
        cache.put(key * 32, trajectory())
    size = cache.path("a" * 32).stat().st_size
    real_unlink = Path.unlink

    def refuse_b(self, missing_ok=False):
        if self.name.startswith("b"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse_b)
    with pytest.raises(OutputError) as caught:
        cache.clear()
    assert str(caught.value) == (
        f"cannot remove 1 cached inversion in {cache.root} (Permission denied); removed 1 ({size / MB:.1f} MB)"
    )
    assert files_in(cache.root) == ["b" * 32 + ".safetensors"]
