"""The inversion cache: trajectory files in ``<cache>/inversions`` named by a key over everything the
inverted latents depend on (:func:`cache_key`), kept under a size cap, least recently used first out."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError

from ..errors import ConfigError, InputError, OutputError
from ..method.trajectory import FORMAT, Trajectory, TrajectoryWriter
from .files import (
    GB,
    MB,
    CacheEntry,
    cache_root,
    evict_least_recent,
    failure_reason,
    scan_folder,
    stable_key,
    sweep_partials,
)


def cache_key(
    *,
    frames_sha256: str,
    fingerprint: str,
    size: tuple[int, int],
    inversion_steps: int,
    steps: int,
    source_prompt: str,
    dtype: str,
) -> str:
    """A stable key over everything the inverted latents depend on."""
    fields = {
        "format": FORMAT,
        "frames": frames_sha256,
        "model": fingerprint,
        "size": list(size),
        "inversion_steps": inversion_steps,
        "steps": steps,
        "source_prompt": source_prompt,
        "dtype": dtype,
    }
    return stable_key(fields)


def _damage(error: InputError, path: Path) -> str:
    """Why a cached file could not be loaded, without its (long) path."""
    cause = error.__context__  # Trajectory.load raises `from None`, which keeps the original here
    if isinstance(cause, KeyError):
        text = f"no {cause}"
    elif cause is not None:
        text = str(cause).strip() or type(cause).__name__
    else:
        text = str(error).removeprefix(str(path)).strip()
    return (text.splitlines() or ["unreadable"])[0][:160]


def _size(size_bytes: int) -> str:
    return f"{size_bytes / MB:.1f} MB"


def _cap(max_bytes: int) -> str:
    # --cache-max-gb is given in GB, but a cap of a few MB (tests, prune) reads badly as 2.8e-05 GB
    return f"{max_bytes / GB:g} GB" if max_bytes == 0 or max_bytes >= GB // 10 else _size(max_bytes)


def _short(key: str) -> str:
    return f"{key[:8]}…"


class InversionCache:
    """A folder of trajectory files named by :func:`cache_key`, optionally kept under a size cap.

    The cache is a convenience: :meth:`get` and :meth:`put` never raise for problems of the file
    system (no permission, read-only, full disk, a file where a folder should be); they report one
    line through ``warn`` (default :func:`warnings.warn`) and answer as if there were no cache.

    ``max_bytes`` caps the folder's total size. After each :meth:`put` the least recently used
    entries (by modification time, which :meth:`get` refreshes) are deleted until the total is at
    most ``max_bytes``. The entry just written is never deleted by its own put:

    * ``max_bytes=None`` — no cap; nothing is ever evicted.
    * ``max_bytes=0`` — keep only the entry written last: every put deletes all the others, so a
      run's inversion survives only until another clip is inverted.
    * an entry larger than a positive ``max_bytes`` on its own is kept (with one warning) and the
      cache is over the cap until the next put evicts it.

    A :meth:`get` that hits does not evict, so a lowered cap takes effect at the next put (or with
    :meth:`prune`).
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        *,
        max_bytes: int | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be 0 or more, got {max_bytes}")
        self.root = cache_root(root) / "inversions"
        self.max_bytes = max_bytes
        self.warn: Callable[[str], None] = warn if warn is not None else warnings.warn

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def get(self, key: str) -> Trajectory | None:
        """The cached trajectory for ``key``, or None (missing, damaged, or the cache is unreadable)."""
        path = self.path(key)
        try:
            # Opening first separates "cannot read" (keep the entry) from "damaged" (drop it).
            with open(path, "rb"):
                pass
        except (FileNotFoundError, NotADirectoryError):
            return None  # a plain miss; if the folder cannot be created, put says so
        except OSError as error:
            self.warn(
                f"cannot read the inversion cache in {self.root} ({failure_reason(error)}); carrying on without it"
            )
            return None
        try:
            trajectory = Trajectory.load(path)
            # z_T is read before the first step (the DDIM noise), like clean: checked now, while a
            # damaged entry can still be computed again instead
            trajectory.latents[trajectory.noisiest]
        except InputError as error:
            if not path.exists():
                return None  # another run evicted it meanwhile
            self._drop_damaged(key, path, _damage(error, path))
            return None
        trajectory.latents.damaged = lambda why: self._damaged_in_use(key, path, why)
        with contextlib.suppress(OSError):
            # A read-only cache still serves hits; only its least-recently-used order goes stale.
            os.utime(path)
        return trajectory

    def _drop_damaged(self, key: str, path: Path, why: str) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            self.warn(
                f"cached inversion {_short(key)} is damaged ({why}); computing it again "
                f"(cannot remove it: {failure_reason(error)})"
            )
            return
        self.warn(f"cached inversion {_short(key)} is damaged ({why}); computing it again")

    def _damaged_in_use(self, key: str, path: Path, why: str) -> InputError:
        """The error that ends a run which finds a step of its entry damaged only when it reaches
        it (the steps are checked as they are read): the entry is removed, so the same command
        computes it again (and resumes the edit from its last checkpoint)."""
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            return InputError(
                f"cached inversion {_short(key)} is damaged ({why}) and cannot be removed ({failure_reason(error)}); "
                f"remove it with 'vedit cache rm {key[:12]}' and run the same command again"
            )
        return InputError(
            f"cached inversion {_short(key)} is damaged ({why}); it was removed: the same command computes it again"
        )

    def put(self, key: str, trajectory: Trajectory, *, note: Callable[[str], None] | None = None) -> Path | None:
        """Store ``trajectory`` under ``key`` and apply the size cap; the path, or None if it cannot be written.

        ``note`` receives one line when entries are evicted to stay under the cap.
        """
        path = self.path(key)
        sweep_partials(self.root)
        try:
            # Trajectory.save writes a temporary sibling and renames it, removing it on any failure.
            trajectory.save(path)
        except (OSError, SafetensorError) as error:
            self.warn(
                f"cannot write the inversion cache in {self.root} ({failure_reason(error)}); carrying on without it"
            )
            return None
        if self.max_bytes is not None:
            self._apply_cap(key, path, self.max_bytes, note)
        return path

    def writer(self, key: str, metadata: dict[str, str]) -> TrajectoryWriter | None:
        """A :class:`TrajectoryWriter` whose file becomes the entry ``key`` when finished (then call
        :meth:`adopt`); None, with one warning, when the cache cannot be written."""

        def failed(reason: str) -> None:
            self.warn(f"cannot write the inversion cache in {self.root} ({reason}); carrying on without it")

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            sweep_partials(self.root)
            damaged = lambda why: self._damaged_in_use(key, self.path(key), why)  # noqa: E731
            return TrajectoryWriter(self.path(key), metadata, on_failure=failed, damaged=damaged)
        except OSError as error:
            self.warn(
                f"cannot write the inversion cache in {self.root} ({failure_reason(error)}); carrying on without it"
            )
            return None

    def adopt(self, key: str, *, note: Callable[[str], None] | None = None) -> Path:
        """Apply the size cap after a writer from :meth:`writer` has put the entry ``key`` in place."""
        path = self.path(key)
        if self.max_bytes is not None:
            self._apply_cap(key, path, self.max_bytes, note)
        return path

    def _apply_cap(self, key: str, path: Path, max_bytes: int, note: Callable[[str], None] | None) -> None:
        try:
            files, freed = self._evict(max_bytes, keep=path)
            size = path.stat().st_size
        except OSError as error:
            self.warn(
                f"cannot prune the inversion cache in {self.root} ({failure_reason(error)}); "
                f"it may grow past {_cap(max_bytes)}"
            )
            return
        if files and note is not None:
            note(
                f"evicted {files} cached inversion{'s' if files != 1 else ''} ({_size(freed)}), "
                f"least recently used first, to keep the cache under {_cap(max_bytes)}"
            )
        # With a cap of 0 the user asked for exactly this (keep only the last entry): no warning.
        if 0 < max_bytes < size:
            self.warn(
                f"cached inversion {_short(key)} ({_size(size)}) is larger than the {_cap(max_bytes)} cache cap; "
                f"it is kept until the next inversion is cached"
            )

    def _scan(self, *, metadata: bool) -> list[CacheEntry]:
        return scan_folder(self.root, metadata=metadata)

    def _evict(self, max_bytes: int, *, keep: Path | None = None) -> tuple[int, int]:
        return evict_least_recent(self._scan(metadata=False), max_bytes, keep=keep)

    def entries(self) -> list[CacheEntry]:
        """Every entry with its metadata, least recently used first; [] when the folder does not exist.

        Raises :class:`OutputError` when the folder cannot be listed.
        """
        try:
            return self._scan(metadata=True)
        except OSError as error:
            raise OutputError(f"cannot read the inversion cache in {self.root}: {failure_reason(error)}") from None

    def find(self, key: str) -> CacheEntry:
        """The entry whose key is ``key`` or starts with it (a unique prefix, as git accepts).

        Raises :class:`ConfigError` when no entry or more than one matches.
        """
        # Accept a key as it is printed elsewhere: a warning's "1a2b3c4d…" or a file name.
        wanted = key.strip().removesuffix("…").removesuffix(".safetensors").lower()
        if not wanted:
            raise ConfigError("give a cache key or the start of one (see 'vedit cache list')")
        entries = self.entries()
        exact = [entry for entry in entries if entry.key == wanted]
        matches = exact or [entry for entry in entries if entry.key.startswith(wanted)]
        if not matches:
            raise ConfigError(f"no cached inversion has a key starting with {wanted!r} (see 'vedit cache list')")
        if len(matches) > 1:
            shown = ", ".join(entry.key[:12] for entry in matches[:3]) + (", ..." if len(matches) > 3 else "")
            raise ConfigError(
                f"{wanted!r} is the start of {len(matches)} cached inversions' keys ({shown}); give more of the key"
            )
        return matches[0]

    def remove(self, entry: CacheEntry) -> None:
        """Delete one entry (see :meth:`find`); raises :class:`OutputError` if it cannot be deleted."""
        try:
            entry.path.unlink(missing_ok=True)
        except OSError as error:
            raise OutputError(f"cannot remove cached inversion {entry.key}: {failure_reason(error)}") from None

    def prune(self, max_bytes: int) -> tuple[int, int]:
        """Delete least recently used entries until the total is at most ``max_bytes``; returns (files, bytes).

        Raises :class:`OutputError` when the folder cannot be listed or an entry cannot be deleted.
        """
        try:
            return self._evict(max_bytes)
        except OSError as error:
            raise OutputError(f"cannot prune the inversion cache in {self.root}: {failure_reason(error)}") from None

    def clear(self) -> tuple[int, int]:
        """Delete every entry; returns (files, bytes) removed.

        Raises :class:`OutputError` when the folder cannot be listed or some entry cannot be deleted
        (after deleting every entry it can).
        """
        files = freed = 0
        failures: list[OSError] = []
        for entry in self.entries():
            try:
                entry.path.unlink(missing_ok=True)
            except OSError as error:
                failures.append(error)
                continue
            files += 1
            freed += entry.size_bytes
        if failures:
            raise OutputError(
                f"cannot remove {len(failures)} cached inversion{'s' if len(failures) != 1 else ''} in {self.root} "
                f"({failure_reason(failures[0])}); removed {files} ({_size(freed)})"
            )
        return files, freed
