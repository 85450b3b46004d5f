"""How a run tells what it is doing: progress, messages and warnings (no heavy imports here)."""

from __future__ import annotations

import warnings
from typing import Protocol


class Task(Protocol):
    def advance(self, amount: int = 1) -> None: ...


class Reporter(Protocol):
    """Receives progress: the CLI shows rich bars or plain lines; the Python API reports nothing.

    ``warning`` tells of something the user would want to know was lost or changed (a clip that
    ended early, a prompt cut short, a cache that could not be written); it is one line.
    """

    def task(self, description: str, total: int | None) -> Task: ...

    def message(self, text: str) -> None: ...

    def warning(self, text: str) -> None: ...


class VeditWarning(UserWarning):
    """What the Python API warns about (the CLI prints the same text as ``vedit: warning: ...``)."""


class SilentReporter:
    """No progress and no messages; warnings go through :mod:`warnings` (the Python API's default)."""

    def task(self, description: str, total: int | None) -> "SilentReporter":
        return self

    def advance(self, amount: int = 1) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def warning(self, text: str) -> None:
        warnings.warn(text, VeditWarning, stacklevel=4)
