"""Checkpoints of the denoising loop, so that a run that was killed resumes where it stopped.

Every ``--checkpoint-every`` steps (and once more when the loop ends) the edited latents and the
propagator's state (TokenFlow's keyframe generator) are written to
``<cache>/checkpoints/<key>.safetensors``, atomically. ``key`` covers everything the edited
latents depend on (:func:`checkpoint_key`), so running the same command again finds the file,
continues from the step after it and gives the same bytes as a run that was never stopped; any
change to the edit gives another key. The file is removed once the output is written.

File (safetensors): ``latents`` (N, 4, h, w) in the loop's dtype, and one ``state.<name>`` tensor
per entry of the propagator's ``state_dict()``. Metadata: ``format`` ("vedit-checkpoint/1"),
``step`` (steps done), ``steps`` (steps in all), ``source``, ``prompt``, ``frames``, ``width``,
``height``, ``model``, and ``checksums`` (:mod:`vedit.cache.checksums`: of every tensor and of the rest
of the metadata), checked when the checkpoint is read.

Like the inversion cache, checkpoints are a convenience: failing to read or write one, or finding
it damaged, is one warning line, never a failed run.
"""

from __future__ import annotations

import contextlib
import os
import queue
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import OutputError
from .checksums import ChecksumMismatch, check_tensor, checksums_of, file_sha256, with_checksums
from .files import CacheEntry, cache_root, failure_reason, partial_prefix, scan_folder, stable_key, sweep_partials
from .keys import keyed_options

FORMAT = "vedit-checkpoint/1"


def _file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """A file named by an option, by what it holds: its content's digest."""
    return {"path": str(Path(path).resolve()), "sha256": file_sha256(path)}


def checkpoint_key(
    config: Any, *, frames_sha256: str, fingerprint: str, dtype: str, device: str, trajectory: str, controls: str = ""
) -> str:
    """A stable key over everything a run's edited latents depend on: the frames, the model, every
    option of the edit (all of :class:`~vedit.config.RunConfig` but the few that only change what
    is done with the latents afterwards: :func:`vedit.cache.keys.keyed_options`) and the trajectory the
    edit starts from (``trajectory``: its cache key, or the identity of an ``--inversion`` file; ""
    without one). A file an option names enters by its content; ``controls``, the structure guidance's control
    frames and ControlNets (:class:`vedit.pipeline.stages.Controls`), when the run has any."""
    options, paths = keyed_options(config, latents=True)
    for name in paths - {"inversion"}:
        if options.get(name):
            options[name] = _file_identity(options[name])
    if options.get("inversion"):  # its content enters as ``trajectory``
        options["inversion"] = str(Path(options["inversion"]).resolve())
    key = {
        "format": FORMAT,
        "frames": frames_sha256,
        "model": fingerprint,
        "dtype": dtype,
        "device": device,
        "trajectory": trajectory,
        "options": options,
        **({"controls": controls} if controls else {}),
    }
    return stable_key(key)


def inversion_file_identity(path: str | os.PathLike) -> str:
    """What an ``--inversion`` file contributes to a checkpoint key: its path, size and time of
    last change (hashing a trajectory of a thousand frames at every start would cost seconds)."""
    stat = os.stat(path)
    return f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


@dataclass
class Checkpoint:
    """The loop's state after ``step`` of ``steps`` steps."""

    step: int
    steps: int
    latents: torch.Tensor  # (N, 4, h, w) on the host
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # the propagator's state_dict()
    metadata: dict[str, str] = field(default_factory=dict)


class CheckpointStore:
    """The checkpoint folder of a cache. :meth:`load`, :meth:`save` and :meth:`remove` never raise
    for problems of the file system; they say so in one line through ``warn``."""

    def __init__(self, root: str | os.PathLike | None = None, *, warn: Callable[[str], None] | None = None):
        self.root = cache_root(root) / "checkpoints"
        self.warn: Callable[[str], None] = warn if warn is not None else warnings.warn
        self._warned = False

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def load(self, key: str) -> Checkpoint | None:
        """The checkpoint under ``key``; None when there is none, it cannot be read or it does not
        match its checksums (then it is removed, with a warning, and the run starts from the
        beginning). Checkpoints written before vedit kept checksums are read unchecked."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                checksums = checksums_of(metadata)
                if metadata.get("format") != FORMAT:
                    raise ValueError(f"format {metadata.get('format')!r}")
                tensors = {name: f.get_tensor(name) for name in f.keys()}
            for name, tensor in tensors.items():
                check_tensor(name, tensor, checksums)
            latents = tensors["latents"]
            state = {name.removeprefix("state."): value for name, value in tensors.items() if name.startswith("state.")}
            step, steps = int(metadata["step"]), int(metadata["steps"])
        except FileNotFoundError:
            return None  # removed by a run that finished meanwhile
        except ChecksumMismatch as error:
            self.warn(f"checkpoint {path} is damaged ({error}); starting from the first step")
            self._unlink(path)
            return None
        except Exception as error:  # damaged: safetensors, JSON or a missing field
            self.warn(f"checkpoint {path} cannot be read ({failure_reason(error)}); starting from the first step")
            self._unlink(path)
            return None
        return Checkpoint(step=step, steps=steps, latents=latents, state=state, metadata=metadata)

    def save(self, key: str, checkpoint: Checkpoint) -> Path | None:
        """Write atomically (temporary sibling, then rename); the path, or None if it cannot be written."""
        path = self.path(key)
        tensors = {"latents": checkpoint.latents.contiguous()}
        tensors.update({f"state.{name}": value.contiguous() for name, value in checkpoint.state.items()})
        metadata = {
            **checkpoint.metadata,
            "format": FORMAT,
            "step": str(checkpoint.step),
            "steps": str(checkpoint.steps),
        }
        metadata = with_checksums(metadata, tensors)
        tmp = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=partial_prefix(path.name), suffix=".partial", dir=self.root)
            os.close(fd)
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, path)
        except (OSError, SafetensorError) as error:
            if not self._warned:  # said once a run: the next checkpoint fails for the same reason
                self._warned = True
                self.warn(
                    f"cannot write a checkpoint in {self.root} ({failure_reason(error)}); "
                    "this run cannot resume if stopped"
                )
            return None
        finally:
            if tmp is not None and Path(tmp).exists():
                Path(tmp).unlink(missing_ok=True)
        return path

    def remove(self, key: str) -> None:
        """Remove the checkpoint ``key`` (its run is done), and what killed writers left."""
        self._unlink(self.path(key))
        sweep_partials(self.root)

    def _unlink(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except NotADirectoryError:
            return  # the folder could never be made: there is nothing to remove
        except OSError as error:
            self.warn(f"cannot remove checkpoint {path} ({failure_reason(error)}); 'vedit cache clear' removes it")

    def entries(self) -> list[CacheEntry]:
        """Every checkpoint with its metadata, oldest first; raises OutputError if the folder cannot be listed."""
        try:
            return scan_folder(self.root, metadata=True)
        except OSError as error:
            raise OutputError(f"cannot read the checkpoints in {self.root}: {failure_reason(error)}") from None

    def prune(self, max_age_seconds: float, *, now: float | None = None) -> tuple[int, int]:
        """Delete checkpoints last written more than ``max_age_seconds`` ago (and what killed
        writers left); returns (files, bytes). Raises OutputError if one cannot be deleted."""
        cutoff = (time.time() if now is None else now) - max_age_seconds
        removed = self._delete([entry.path for entry in self.entries() if entry.modified <= cutoff])
        if self.root.is_dir():
            sweep_partials(self.root)
        return removed

    def clear(self) -> tuple[int, int]:
        """Delete every checkpoint (and temporary files a killed write left); returns (files, bytes)."""
        try:
            listing = [self.root / item.name for item in os.scandir(self.root) if item.is_file()]
        except FileNotFoundError:
            return 0, 0
        except OSError as error:
            raise OutputError(f"cannot read the checkpoints in {self.root}: {failure_reason(error)}") from None
        return self._delete(listing)

    def _delete(self, paths: list[Path]) -> tuple[int, int]:
        """Delete ``paths``, going on past failures; returns (checkpoints, bytes) removed, and
        raises OutputError naming the first failure once all that can go are gone."""
        files = freed = 0
        failures: list[OSError] = []
        for path in paths:
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue  # its run finished meanwhile
            except OSError as error:
                failures.append(error)
                continue
            files += int(path.suffix == ".safetensors")
            freed += size
        if failures:
            raise OutputError(
                f"cannot remove {len(failures)} checkpoint files in {self.root} ({failure_reason(failures[0])})"
            )
        return files, freed


class CheckpointWriter:
    """Writes checkpoints on a thread, so that the loop does not wait for the disk (nor, on a GPU,
    for the copy of the latents to the host, which is queued and waited for by the thread).

    At most one checkpoint waits: a newer one replaces a waiting older one. :meth:`close` writes
    what is waiting and returns the path of the last checkpoint written."""

    def __init__(self, store: CheckpointStore, key: str, metadata: dict[str, str]):
        self.store, self.key, self.metadata = store, key, metadata
        self.written: Checkpoint | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name="vedit-checkpoint", daemon=True)
        self._thread.start()

    def put(self, step: int, steps: int, latents: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
        """Queue the loop's state after ``step`` steps; ``latents`` may still be on the device."""
        from ..runtime.transfer import to_host

        event = None
        host = to_host(latents)
        if latents.device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(latents.device))
        item = (
            Checkpoint(step=step, steps=steps, latents=host, state=dict(state), metadata=dict(self.metadata)),
            event,
        )
        with contextlib.suppress(queue.Empty):
            self._queue.get_nowait()  # an older checkpoint not yet written: this one supersedes it
        self._queue.put(item)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            checkpoint, event = item
            if event is not None:
                event.synchronize()
            if self.store.save(self.key, checkpoint) is not None:
                self.written = checkpoint

    def close(self) -> Checkpoint | None:
        """Wait until what was queued is written; the last checkpoint written, or None."""
        self._queue.put(None)
        self._thread.join()
        return self.written


__all__ = ["Checkpoint", "CheckpointStore", "CheckpointWriter", "checkpoint_key", "inversion_file_identity"]
