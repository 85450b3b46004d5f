"""A worker reporter for the batch tests that kill a worker mid-write: pool workers and Ray actors are
processes of their own, so it lives in a module they import (this folder is on their Python path) and
travels to them pickled, as :func:`vedit.batch.run.run_batch`'s ``worker_reporter``."""

from __future__ import annotations

import os
import signal
from typing import Any

from vedit.batch.workers import Unit


class KillOnceWhileWriting:
    """The worker process writing an output whose path contains ``text`` kills itself (SIGKILL) once, after
    its first frames are written, if ``marker`` does not exist yet; it creates ``marker`` first, so the
    retry writes the output whole."""

    def __init__(self, marker: str | os.PathLike, text: str):
        self.marker, self.text = os.fspath(marker), text

    def __call__(self, unit: Unit) -> Any:
        if unit.output is None or self.text not in str(unit.output):
            return None
        return _DiesWhileWriting(self.marker)


class _DiesWhileWriting:
    def __init__(self, marker: str):
        self.marker = marker

    def task(self, description: str, total: int | None) -> Any:
        return _Dies(self.marker) if description == "decode + write" else _Quiet()

    def message(self, text: str) -> None:
        pass

    def warning(self, text: str) -> None:
        pass


class _Quiet:
    def advance(self, amount: int = 1) -> None:
        pass


class _Dies:
    def __init__(self, marker: str):
        self.marker = marker

    def advance(self, amount: int = 1) -> None:
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGKILL)
