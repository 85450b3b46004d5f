"""What a batch worker runs: a :class:`Unit` (one inversion or one edit) in this process, with the model it
holds kept for the next unit of the same model, and a group's shared trajectory put where the edit reads it.
:func:`execute` never raises for a failed unit: it says how it went in an :class:`Outcome`."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import VeditError
from .plan import SIDECAR_FORMAT, Collect, model_key, read_sidecar, sidecar_path, write_json_atomically


@dataclass
class Unit:
    """One piece of work for a worker: an inversion (``kind="invert"``) or an edit. Picklable."""

    kind: str
    number: int  # the group's number (invert) or the edit's index (edit)
    input: Path
    config: RunConfig
    output: Path | None = None
    digest: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    trajectory: dict[str, Any] | None = None  # for an edit: the shared inversion, {"key", "path", "cached"}
    scratch: str | None = None  # the batch's folder for trajectories made without the cache
    attempts: int = 0  # started so far

    @property
    def uid(self) -> str:
        return f"{self.kind}:{self.number}"

    @property
    def model_key(self) -> tuple:
        return model_key(self.config)


# Gives the reporter (a vedit.report.Reporter, or None for none) of a unit that a pool worker process or a
# Ray actor runs. Those are processes of their own and it is pickled to them: a module-level function, or an
# instance of a module-level class, that they can import.
WorkerReporter = Callable[[Unit], Any]


@dataclass
class Outcome:
    """What a unit gave. ``status`` is "done" or "failed" ("died" when its worker process died)."""

    status: str
    reason: str = ""
    seconds: float = 0.0
    frames: int = 0
    inversion: str = ""  # for an edit: how it had its trajectory; for an inversion: "computed" or "cached"
    forwards: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    worker: str = ""
    model_loaded: bool = False  # this unit loaded the model (the worker had another or none)
    trajectory: dict[str, Any] | None = None  # an inversion's: {"key", "path", "cached"}


_MODEL: list[Any] = [None, None]  # (key, model): the one model a worker process holds


def _load(config: RunConfig) -> tuple[Any, bool]:
    """The model for ``config``, loaded unless this process holds it already (one at a time)."""
    import gc

    from ..model.loading import load_model

    key = model_key(config)
    if _MODEL[0] == key:
        return _MODEL[1], False
    _MODEL[0] = _MODEL[1] = None
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    model = load_model(
        config.model, device=config.device, dtype=config.dtype, revision=config.revision,
        model_config=config.model_config, lora=config.lora, embeddings=config.embedding,
    )  # fmt: skip
    _MODEL[0], _MODEL[1] = key, model
    return model, True


def release_model() -> None:
    """Let go of the model this process holds for batch units."""
    _MODEL[0] = _MODEL[1] = None


def held_model_key() -> tuple | None:
    """The key (:func:`model_key`) of the model this process holds for batch units, or None."""
    return _MODEL[0]


def _scratch(unit: Unit) -> Path:
    """The batch's folder for trajectories made without the cache (made on this machine if it is
    another one than the batch's)."""
    folder = Path(unit.scratch) if unit.scratch else Path(tempfile.gettempdir()) / "vedit-batch"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def unit_failure(error: BaseException) -> str:
    if isinstance(error, VeditError):
        return str(error)
    name = type(error).__name__
    if "OutOfMemory" in name or isinstance(error, MemoryError):
        return f"out of memory ({str(error).splitlines()[0][:120] if str(error) else 'allocation failed'})"
    text = (str(error).strip().splitlines() or [""])[0][:200]
    return f"{name}: {text}" if text else name


def _materialize(unit: Unit, fetch: Callable[[], bytes] | None) -> RunConfig:
    """The edit's options, with the group's shared inversion where this process can read it: in
    the cache (the edit finds it there), else in a file it is pointed at. A trajectory this
    process cannot see (another machine wrote it to a cache folder that is not shared) is fetched
    with ``fetch`` (from Ray's object store) and put in this machine's cache."""
    from ..cache.inversions import InversionCache
    from ..io.files import write_atomically

    config, info = unit.config, unit.trajectory
    if not info:
        return config
    path = Path(info["path"])
    if not path.exists():
        if fetch is None:
            return config  # the edit inverts for itself
        data = fetch()
        target = (
            InversionCache(config.cache_dir).path(info["key"]) if info.get("cached") else _scratch(unit) / path.name
        )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(target, data)
        except OSError:
            target = _scratch(unit) / path.name
            write_atomically(target, data)
            return config.replace(inversion=str(target))
        path = target
        if info.get("cached"):
            return config
    return config if info.get("cached") else config.replace(inversion=str(path))


def execute(unit: Unit, *, reporter: Any = None, worker: str = "", fetch: Callable[[], bytes] | None = None) -> Outcome:
    """Run one unit in this process and say how it went; never raises for a failed unit.

    An edit removes its output's sidecar first and writes it after the output is complete (the
    output itself is renamed into place only when whole), so an interrupted or killed edit never
    leaves an output that looks up to date.
    """
    from ..pipeline.edit import edit
    from ..pipeline.invert import invert_clip
    from ..runtime.allocator import configure_allocator

    configure_allocator()  # once per process, before the model loads: a worker process may not have run the CLI
    began = time.perf_counter()
    reporter = reporter if reporter is not None else Collect()
    loaded = False
    try:
        model, loaded = _load(unit.config)
        if unit.kind == "invert":
            config = unit.config
            result = invert_clip(unit.input, None, config, reporter=reporter, sd=model)
            if result.cache_path is not None:
                info = {"key": result.cache_path.stem, "path": str(result.cache_path), "cached": True}
            else:  # without the cache (--no-cache, or it cannot be written): a file of this batch's own
                target = _scratch(unit) / f"group-{unit.number}-{os.getpid()}.safetensors"
                result.trajectory.save(target)
                info = {"key": target.stem, "path": str(target), "cached": False}
            return Outcome(
                "done", seconds=time.perf_counter() - began, frames=result.trajectory.num_frames, inversion=result.how,
                forwards=(
                    {"inversion": result.trajectory.num_frames * config.inversion_steps}
                    if result.how == "computed" else {}
                ),
                warnings=list(result.warnings), worker=worker, model_loaded=loaded, trajectory=info,
            )  # fmt: skip
        assert unit.output is not None
        config = _materialize(unit, fetch)
        sidecar = sidecar_path(unit.output)
        if read_sidecar(unit.output) is not None:  # vedit wrote the output, maybe before it signed outputs
            config = config.replace(overwrite=True)
        sidecar.unlink(missing_ok=True)
        unit.output.parent.mkdir(parents=True, exist_ok=True)
        result = edit(unit.input, unit.output, config, reporter=reporter, sd=model)
        record = {
            "format": SIDECAR_FORMAT, "digest": unit.digest, "settings": unit.settings, "output": str(unit.output),
            "written": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "frames": result.frames,
            "seconds": round(result.seconds, 3), "model": result.model, "inversion": result.inversion,
        }  # fmt: skip
        write_json_atomically(sidecar, record)
        return Outcome(
            "done", seconds=time.perf_counter() - began, frames=result.frames, inversion=result.inversion,
            forwards=dict(result.forwards), warnings=list(result.warnings), worker=worker, model_loaded=loaded,
        )  # fmt: skip
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001 — every failure is this unit's outcome, reported once
        return Outcome("failed", reason=unit_failure(error), seconds=time.perf_counter() - began, worker=worker,
                       model_loaded=loaded)  # fmt: skip
