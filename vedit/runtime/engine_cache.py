"""The engine cache: what the engines build, on disk, one checked entry per pass and shape, and the
key parts every engine shares (:func:`torch_key_parts`). The runner over the engines is
:mod:`vedit.runtime.runner`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..cache.checksums import file_digest, file_sha256
from ..cache.files import cache_root
from ..config import option_value

# Where built engines were kept by default before they moved into the cache folder: the working directory's
# engines/. A build into the new default says once if that folder holds entries (they are not used).
EARLIER_ENGINE_CACHE = Path("engines")


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    engine: str
    pass_name: str
    model: str
    parts: dict[str, str]
    bytes: int
    created: float


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class EngineCache:
    """Built engines on disk, one folder per entry: ``<pass>-<engine>-<slot>/`` holding the
    artefacts and ``entry.json`` (every key part; each file's checksum, sha256, size and
    modification time).

    The *slot* names what an entry is for (weights, pass, engine, shapes or profile, precision);
    the *key* adds what it was built with (engine library, torch and pass code versions, the
    GPU's compute capability). An entry whose key differs is stale, one whose files do not hash
    to what was recorded (or that fails to load) is corrupt: both are rebuilt with a one-line
    message, never loaded. Entries are built in a private folder and renamed into place, so a
    reader never sees half an entry and two processes building the same one both succeed.
    """

    META = "entry.json"
    _earlier_said: set[Path] = set()  # earlier folders already mentioned in this process

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        message: Callable[[str], None] | None = None,
        earlier: str | os.PathLike | None = None,
    ):
        self.root = Path(root).expanduser()
        self.message = message or (lambda text: None)
        # A folder that held this cache's entries before (the default one moved): said once, at the first build.
        self.earlier = None if earlier is None else Path(earlier)

    @classmethod
    def for_options(
        cls,
        engine_cache: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        *,
        message: Callable[[str], None] | None = None,
    ) -> EngineCache:
        """The folder ``engine_cache`` (``--engine-cache``) names, else the default: ``engines`` in the cache
        folder (``cache_dir``, ``$VEDIT_CACHE_DIR`` or ``~/.cache/vedit``), beside the inversions."""
        if engine_cache:
            return cls(engine_cache, message=message)
        return cls(cache_root(cache_dir) / "engines", message=message, earlier=EARLIER_ENGINE_CACHE)

    def _mention_earlier(self) -> None:
        """Say, once per process, that the entries of the folder that used to be the default are not used."""
        earlier = self.earlier
        if earlier is None or earlier.resolve() == self.root.resolve() or earlier.resolve() in self._earlier_said:
            return
        with contextlib.suppress(OSError):
            if any((folder / self.META).is_file() for folder in earlier.iterdir()):
                self._earlier_said.add(earlier.resolve())
                self.message(
                    f"engine cache: built engines are kept in {self.root} now, no longer in {earlier}; the ones built "
                    f"there are not used ({option_value('engine_cache', str(earlier))} uses them)"
                )

    @staticmethod
    def slot(parts: dict[str, str], identity: Sequence[str]) -> str:
        text = json.dumps({k: parts[k] for k in identity if k in parts}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @staticmethod
    def key(parts: dict[str, str]) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def folder(self, parts: dict[str, str], identity: Sequence[str]) -> Path:
        return self.root / f"{parts['pass']}-{parts['engine']}-{self.slot(parts, identity)}"

    def _check(self, folder: Path, parts: dict[str, str]) -> str | None:
        """Why the entry in ``folder`` cannot be used (None when it can)."""
        try:
            meta = json.loads((folder / self.META).read_text(encoding="utf-8"))
            recorded = meta["parts"]
            files = meta["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return "corrupt (its entry.json is missing or unreadable)"
        if self.key(recorded) != self.key(parts):
            changed = sorted(k for k in set(recorded) | set(parts) if recorded.get(k) != parts.get(k))
            what = ", ".join(f"{k} {recorded.get(k, '-')} → {parts.get(k, '-')}" for k in changed[:3])
            return f"stale ({what})"
        for name, recorded_file in files.items():
            file = folder / name
            try:
                stat = file.stat()
            except OSError:
                return f"corrupt ({name} is missing)"
            if stat.st_size != recorded_file["size"]:
                return f"corrupt ({name} is {stat.st_size} bytes, {recorded_file['size']} were written)"
            # Hashed on every load, since bytes can change with the modification time left as it
            # was: with the checksum (CRC-32, a third of a second per GB from the page cache); an
            # entry built before entries recorded it, with its SHA-256 (about twice as long).
            if "crc32" in recorded_file:
                sound = file_digest(file) == recorded_file["crc32"]
            else:
                sound = file_sha256(file) == recorded_file.get("sha256")
            if not sound:
                return f"corrupt ({name} does not match its recorded hash)"
        return None

    def load_or_build(
        self,
        parts: dict[str, str],
        identity: Sequence[str],
        build: Callable[[Path], None],
        load: Callable[[Path], Any],
        *,
        label: str,
    ) -> Any:
        """Load the entry for ``parts``, building it first when absent, stale or corrupt."""
        folder = self.folder(parts, identity)
        if folder.exists():
            problem = self._check(folder, parts)
            if problem is None:
                try:
                    return load(folder)
                except Exception as error:  # a file that hashes right but does not load
                    problem = (
                        "corrupt (it does not load: "
                        f"{str(error).splitlines()[0] if str(error) else type(error).__name__})"
                    )
            self.message(f"engine cache: {label} in {folder} is {problem}; rebuilding")
        self._mention_earlier()
        # A build can take minutes (a TorchScript trace on the CPU, a TensorRT plan): say so, and when it ends.
        began = time.perf_counter()
        batches = f" ({batches_text(parts['batches'].split(','))})" if parts.get("batches") else ""
        self.message(f"building the {label}{batches}; the engine cache keeps it for later runs")
        self._build(folder, parts, build)
        self.message(f"built the {label} in {time.perf_counter() - began:.1f} s")
        return load(folder)

    def _build(self, folder: Path, parts: dict[str, str], build: Callable[[Path], None]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        scratch = self.root / f".build-{folder.name}-{uuid.uuid4().hex[:8]}"
        scratch.mkdir()
        try:
            build(scratch)
            files = {
                p.name: {
                    "crc32": file_digest(p),
                    "sha256": file_sha256(p),
                    "size": p.stat().st_size,
                    "mtime_ns": p.stat().st_mtime_ns,
                }  # fmt: skip
                for p in sorted(scratch.iterdir())
                if p.is_file()
            }
            meta = {"parts": parts, "files": files, "created": time.time()}
            (scratch / self.META).write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
            self._install(scratch, folder, parts)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _install(self, scratch: Path, folder: Path, parts: dict[str, str]) -> None:
        """Rename ``scratch`` into place; a good entry another process installed meanwhile is kept."""
        for _ in range(3):
            try:
                os.rename(scratch, folder)
                return
            except OSError:  # the folder exists: someone else's entry, or the stale one we replace
                if self._check(folder, parts) is None:
                    return
                old = folder.with_name(f".old-{folder.name}-{uuid.uuid4().hex[:8]}")
                with contextlib.suppress(OSError):
                    os.rename(folder, old)
                shutil.rmtree(old, ignore_errors=True)
        raise OSError(f"cannot install {folder}")

    def entries(self) -> list[CacheEntry]:
        found = []
        if not self.root.is_dir():
            return found
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            try:
                meta = json.loads((folder / self.META).read_text(encoding="utf-8"))
                parts = dict(meta["parts"])
                created = float(meta.get("created", 0))
            except (OSError, ValueError, KeyError, TypeError):
                parts, created = {"engine": "?", "pass": "?", "model": "?"}, 0.0
            found.append(
                CacheEntry(folder, parts.get("engine", "?"), parts.get("pass", "?"), parts.get("model", "?"), parts,
                           _folder_bytes(folder), created)
            )  # fmt: skip
        return found

    def clear(self) -> int:
        """Remove every entry (and leftovers of interrupted builds); returns the bytes freed."""
        freed = 0
        if not self.root.is_dir():
            return 0
        for folder in self.root.iterdir():
            if folder.is_dir():
                freed += _folder_bytes(folder)
                shutil.rmtree(folder, ignore_errors=True)
        return freed


def batches_text(batches: Sequence[int | str]) -> str:
    """The batch sizes a build serves, as a message says them: ``batch 4``, ``batches 9, 12``."""
    return f"batch {batches[0]}" if len(batches) == 1 else f"batches {', '.join(str(b) for b in batches)}"


def torch_key_parts(device: torch.device) -> dict[str, str]:
    """Key parts every engine shares: torch's version and, on a GPU, its compute capability."""
    parts = {"torch": torch.__version__, "device": device.type}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        parts["compute_capability"] = f"{major}.{minor}"
    return parts
