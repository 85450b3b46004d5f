"""What vedit's caches on disk share (the inversion cache, the annotations and the checkpoints): where they are,
keys, sizes in binary units, the temporary files of writes in progress and the sweeping of those that killed
writers left, the listing of a folder's entries, their age and their eviction, and the words for a failure of the
file system."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from ..io.files import process_alive

# Sizes are shown in binary units everywhere (MB = 2**20 bytes in `vedit cache list`), so a cap in
# GB is 2**30 bytes.
GB = 2**30
MB = 2**20


def gb_to_bytes(gb: float) -> int:
    """``--cache-max-gb`` as the ``max_bytes`` of :class:`InversionCache` (1 GB = 2**30 bytes)."""
    return int(gb * GB)


def stable_key(fields: Mapping[str, Any]) -> str:
    """A cache key over ``fields``: the first 32 hex digits of the SHA-256 of their sorted JSON (a value JSON
    has no form for, as its text)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:32]


def partial_prefix(name: str) -> str:
    """The name a temporary file being written in a cache folder starts with: the file it becomes
    and the writing process's id, so that :func:`sweep_partials` can tell a killed writer's
    leftover from a file another run is still writing."""
    return f".{name}.pid{os.getpid()}."


def sweep_partials(folder: Path) -> int:
    """Remove the temporary files that writers killed mid-write (SIGKILL, a power cut) left in a
    cache folder: those whose process no longer exists. Returns how many; never raises."""
    removed = 0
    try:
        leftovers = [item.name for item in os.scandir(folder) if item.name.endswith(".partial")]
    except OSError:
        return 0
    for name in leftovers:
        found = re.search(r"\.pid(\d+)\.[^.]*\.partial$", name)
        if found is None or process_alive(int(found.group(1))):
            continue
        with contextlib.suppress(OSError):
            (folder / name).unlink()
            removed += 1
    return removed


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where inversions are cached: ``cache_dir``, ``$VEDIT_CACHE_DIR``, or the user cache folder."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("VEDIT_CACHE_DIR"):
        return Path(os.environ["VEDIT_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vedit"


@dataclass
class CacheEntry:
    path: Path
    size_bytes: int
    modified: float
    metadata: dict[str, str]

    @property
    def key(self) -> str:
        return self.path.stem

    @property
    def source(self) -> str:
        """The clip the entry was inverted from, as it was given ("" for entries without it)."""
        return self.metadata.get("source", "")

    @property
    def content(self) -> str:
        """A short hash of the decoded frames: tells apart two clips at the same path, or finds a moved one."""
        return self.metadata.get("frames_sha256", "")[:12]


def failure_reason(error: BaseException) -> str:
    """The operating system's words for a failure, without paths or error numbers, on one line."""
    if isinstance(error, FileExistsError):
        # mkdir found a file where the cache folder should be
        return f"{error.filename} is a file, not a folder" if error.filename else "a file is in the way"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    # safetensors reports its own I/O failures (a full disk among them) as SafetensorError text
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = text.removeprefix("Error while serializing: ").removeprefix("I/O error: ")
    text = re.sub(r"\s*\(os error \d+\)", "", text)
    text = re.sub(r"\s*at path \S+$", "", text)
    return text[:160]


def scan_folder(root: Path, *, metadata: bool, suffix: str = ".safetensors") -> list[CacheEntry]:
    """Every file in ``root`` whose name ends in ``suffix``, oldest modification first, with its metadata when
    asked (safetensors files); OSError if the folder cannot be listed. A missing folder is empty."""
    try:
        with os.scandir(root) as listing:
            names = [item.name for item in listing if item.name.endswith(suffix)]
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        path = root / name
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue  # removed by another run since the listing
        info: dict[str, str] = {}
        if metadata:
            try:
                with safe_open(str(path), framework="pt") as f:
                    info = f.metadata() or {}
            except Exception:
                info = {"error": "unreadable"}
        found.append(CacheEntry(path, stat.st_size, stat.st_mtime, info))
    found.sort(key=lambda entry: (entry.modified, entry.path.name))
    return found


def evict_least_recent(entries: list[CacheEntry], max_bytes: int, *, keep: Path | None = None) -> tuple[int, int]:
    """Delete ``entries`` (least recently used first, as :func:`scan_folder` lists them) until the rest hold at
    most ``max_bytes``, never ``keep``; returns (files, bytes) deleted. OSError if one cannot be deleted."""
    total = sum(entry.size_bytes for entry in entries)
    files = freed = 0
    for entry in entries:
        if total <= max_bytes:
            break
        if entry.path == keep:
            continue
        try:
            entry.path.unlink()
        except FileNotFoundError:
            pass  # another run removed it: it no longer counts, but we did not free it
        else:
            files += 1
            freed += entry.size_bytes
        total -= entry.size_bytes
    return files, freed


def describe_age(seconds: float) -> str:
    """How long ago a modification time was, coarsely ("3d ago"); "just now" under a minute or in the future."""
    age = time.time() - seconds
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= span:
            return f"{int(age // span)}{unit} ago"
    return "just now"
