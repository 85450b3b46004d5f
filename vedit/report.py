"""How a run tells what it is doing: progress, messages and warnings (no heavy imports here)."""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Protocol


class Task(Protocol):
    def advance(self, amount: int = 1) -> None: ...


class Reporter(Protocol):
    """Receives progress: the CLI shows rich bars or plain lines; the Python API reports nothing.

    ``warning`` tells of something the user would want to know was lost or changed (a clip that
    ended early, a prompt cut short, a cache that could not be written); it is one line.

    ``task`` may also take the keywords ``frames_per_unit``, how many frames one unit of the task
    stands for (a denoising or inversion step covers every frame of the clip), so that progress
    can be shown in frames per second, and ``done``, units done before the task started (the
    steps of a resumed loop). Reporters whose ``task`` lacks them are called without them (see
    :func:`open_task`).
    """

    def task(self, description: str, total: int | None) -> Task: ...

    def message(self, text: str) -> None: ...

    def warning(self, text: str) -> None: ...


def open_task(
    reporter: Any, description: str, total: int | None, frames_per_unit: int | None = None, done: int = 0
) -> Task:
    """``reporter.task(description, total)``, with the keywords the reporter takes:
    ``frames_per_unit`` and ``done`` (units already done before the task started, such as the
    steps of a resumed loop: not work done now, so not part of a rate). A reporter without
    ``done`` is advanced by that much instead."""
    keywords = {"frames_per_unit": frames_per_unit, "done": done}
    taken = _keywords(reporter)
    task = reporter.task(description, total, **{k: v for k, v in keywords.items() if k in taken and v})
    if done and "done" not in taken:
        task.advance(done)
    return task


def _keywords(reporter: Any) -> set[str]:
    try:
        parameters = inspect.signature(reporter.task).parameters
    except (TypeError, ValueError):
        return set()
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return {"frames_per_unit", "done"}
    return set(parameters)


def duration(seconds: float) -> str:
    """A span of time as a person reads it: 42s, 3m05s, 2h10m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class VeditWarning(UserWarning):
    """What the Python API warns about (the CLI prints the same text as ``vedit: warning: ...``)."""


class SilentReporter:
    """No progress and no messages; warnings go through :mod:`warnings` (the Python API's default)."""

    def task(self, description: str, total: int | None) -> Task:
        return self

    def advance(self, amount: int = 1) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def warning(self, text: str) -> None:
        warnings.warn(text, VeditWarning, stacklevel=4)
