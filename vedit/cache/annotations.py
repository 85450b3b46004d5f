"""The annotation cache: an annotator's control frames of a clip in ``<cache>/annotations/<key>.npy``, beside the
inversions, named by a key over everything they depend on (:func:`annotation_key`), so that a second prompt does
not annotate again.

An entry is a NumPy ``.npy`` file, (N, H, W, 3) uint8 RGB in the order of the run's selected frames, read
memory-mapped (a long clip's annotations are never held whole in memory) and never as pickled objects. It is
written frame batch by frame batch into a temporary sibling, renamed into place when complete. Like the
inversion cache it is a convenience: a folder that cannot be read or written, or a damaged entry, is one
warning line and the annotations are computed again; ``--cache-max-gb`` caps it, counted apart from the
inversions, least recently used out first.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ..errors import OutputError
from .files import (
    CacheEntry,
    cache_root,
    evict_least_recent,
    failure_reason,
    partial_prefix,
    scan_folder,
    stable_key,
    sweep_partials,
)

FORMAT = "vedit-annotations/1"
SUFFIX = ".npy"


def annotation_key(
    *, frames_sha256: str, size: tuple[int, int], annotator: str, version: str, options: Mapping[str, Any]
) -> str:
    """A stable key over everything an annotator's control frames depend on: the source's selected frames (their
    sha256, as :func:`vedit.pipeline.stages.encode_clip` computes it, which is also the inversion's), the working
    size, the annotator's name and version, and its options that change what it computes. Not the clip's path
    nor the prompts: a moved clip or another prompt finds the entry."""
    fields = {
        "format": FORMAT,
        "frames": frames_sha256,
        "size": list(size),
        "annotator": annotator,
        "version": version,
        "options": dict(options),
    }
    return stable_key(fields)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:160]


class AnnotationWriter:
    """Writes one entry frame batch by frame batch into a temporary sibling, renamed into place by :meth:`finish`.

    Use it as a context manager: whatever ends the block early (an error, Ctrl-C) removes the temporary file. A
    write the file system refuses is one warning through the cache's ``warn``; the writer is then ``failed`` and
    takes no more frames."""

    def __init__(self, cache: AnnotationCache, key: str, shape: tuple[int, ...]):
        self.cache, self.key, self.shape = cache, key, shape
        self.path = cache.path(key)
        self.failed = False
        self.written = 0
        cache.root.mkdir(parents=True, exist_ok=True)
        sweep_partials(cache.root)
        descriptor, name = tempfile.mkstemp(prefix=partial_prefix(self.path.name), suffix=".partial", dir=cache.root)
        self._partial = Path(name)
        self._file = os.fdopen(descriptor, "wb")
        try:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(self._file, header)
        except OSError as error:
            self._fail(error)

    def write(self, frames: np.ndarray) -> None:
        """Append ``frames`` (b, H, W, 3) uint8, the next ones in order."""
        if self.failed:
            return
        try:
            self._file.write(np.ascontiguousarray(frames, dtype=np.uint8).data)
        except OSError as error:
            self._fail(error)
            return
        self.written += len(frames)

    def finish(self) -> Path | None:
        """Put the entry in place once every frame is written and apply the size cap; its path, or None when a
        write failed."""
        if self.failed:
            return None
        if self.written != self.shape[0]:
            raise ValueError(f"{self.written} frames written of {self.shape[0]}")
        try:
            self._file.close()
            os.replace(self._partial, self.path)
        except OSError as error:
            self._fail(error)
            return None
        self.cache.apply_cap(self.path)
        return self.path

    def _fail(self, error: OSError) -> None:
        self.failed = True
        self._discard()
        self.cache.warn(
            f"cannot write the annotation cache in {self.cache.root} ({failure_reason(error)}); carrying on without it"
        )

    def _discard(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self._partial.unlink(missing_ok=True)

    def __enter__(self) -> AnnotationWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._discard()  # after finish() the partial file is already the entry: nothing is removed


class AnnotationCache:
    """The folder of annotation entries (``<cache>/annotations``), optionally kept under ``max_bytes`` (least
    recently used out first, never the entry just written). :meth:`get` and :meth:`writer` never raise for
    problems of the file system: they warn in one line through ``warn`` and answer as if there were no cache."""

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        *,
        max_bytes: int | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        self.root = cache_root(root) / "annotations"
        self.max_bytes = max_bytes
        self.warn: Callable[[str], None] = warn if warn is not None else warnings.warn

    def path(self, key: str) -> Path:
        return self.root / f"{key}{SUFFIX}"

    def get(self, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """The entry ``key``, memory-mapped read-only, when it holds ``shape`` uint8 frames; None when there is
        none, the cache cannot be read, or the entry is damaged (then it is removed, with a warning)."""
        path = self.path(key)
        try:
            frames = np.load(path, mmap_mode="r", allow_pickle=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (ValueError, EOFError) as error:  # not a .npy header, or fewer bytes than it promises
            self._drop_damaged(key, path, _first_line(error))
            return None
        except OSError as error:
            self.warn(
                f"cannot read the annotation cache in {self.root} ({failure_reason(error)}); carrying on without it"
            )
            return None
        if frames.shape != shape or frames.dtype != np.uint8:
            self._drop_damaged(key, path, f"it holds {frames.dtype} {frames.shape}, not uint8 {shape}")
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # a use, for the least-recently-used order
        return frames

    def _drop_damaged(self, key: str, path: Path, why: str) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            self.warn(
                f"cached annotations {key[:8]}… are damaged ({why}); computing them again (cannot remove them: "
                f"{failure_reason(error)})"
            )
            return
        self.warn(f"cached annotations {key[:8]}… are damaged ({why}); computing them again")

    def writer(self, key: str, shape: tuple[int, ...]) -> AnnotationWriter | None:
        """A writer of the entry ``key`` holding ``shape`` uint8 frames; None, with one warning, when the cache
        folder cannot be written."""
        try:
            writer = AnnotationWriter(self, key, shape)
        except OSError as error:
            self.warn(
                f"cannot write the annotation cache in {self.root} ({failure_reason(error)}); carrying on without it"
            )
            return None
        return None if writer.failed else writer

    def apply_cap(self, keep: Path) -> None:
        """Evict least recently used entries, never ``keep``, until the folder is within the cap."""
        if self.max_bytes is None:
            return
        try:
            evict_least_recent(self._scan(), self.max_bytes, keep=keep)
        except OSError as error:
            self.warn(f"cannot prune the annotation cache in {self.root} ({failure_reason(error)})")

    def _scan(self) -> list[CacheEntry]:
        return scan_folder(self.root, metadata=False, suffix=SUFFIX)

    def entries(self) -> list[CacheEntry]:
        """Every entry, least recently used first; raises :class:`OutputError` when the folder cannot be listed."""
        try:
            return self._scan()
        except OSError as error:
            raise OutputError(f"cannot read the annotation cache in {self.root}: {failure_reason(error)}") from None

    def prune(self, max_bytes: int) -> tuple[int, int]:
        """Delete least recently used entries until the folder holds at most ``max_bytes``; returns (files, bytes).
        Raises :class:`OutputError` when the folder cannot be listed or an entry cannot be deleted."""
        try:
            return evict_least_recent(self._scan(), max_bytes)
        except OSError as error:
            raise OutputError(f"cannot prune the annotation cache in {self.root}: {failure_reason(error)}") from None

    def clear(self) -> tuple[int, int]:
        """Delete every entry (and what killed writers left); returns (files, bytes) deleted."""
        removed = self.prune(0)
        if self.root.is_dir():
            sweep_partials(self.root)
        return removed


__all__ = ["AnnotationCache", "AnnotationWriter", "annotation_key"]
