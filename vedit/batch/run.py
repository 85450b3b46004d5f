"""Running a batch plan: :func:`run_batch` hands its units to a backend and records every result in the plan
and in the summary JSON (rewritten after each, so an interrupted batch leaves one too); :class:`BatchResult`
is what it returns."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import option_label
from ..errors import ConfigError
from .backends import choose_backend
from .plan import Plan, PlannedEdit, write_json_atomically
from .scheduler import DEFAULT_RETRIES, BatchEvents, Schedule
from .workers import WorkerReporter

SUMMARY_FORMAT = "vedit-batch-summary/1"
FAILED_EXIT_CODE = 8  # some edits of a batch failed (the others were done)


@dataclass
class BatchResult:
    plan: Plan
    seconds: float
    backend: str  # "serial", "pool" or "ray"
    workers: int
    model_loads: int
    summary: Path | None
    interrupted: bool = False

    @property
    def failed(self) -> list[PlannedEdit]:
        return [e for e in self.plan.edits if e.status == "failed"]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for e in self.plan.edits:
            counts[e.status] = counts.get(e.status, 0) + 1
        return counts


def default_summary_path(job_file: str | os.PathLike) -> Path:
    """``jobs.toml`` → ``jobs.summary.json`` beside it."""
    path = Path(job_file)
    return path.with_name(f"{path.stem}.summary.json")


def summary_document(plan: Plan, *, started: float, seconds: float, backend: str, workers: int, model_loads: int,
                     finished: bool) -> dict[str, Any]:  # fmt: skip
    counts: dict[str, int] = {}
    for e in plan.edits:
        counts[e.status] = counts.get(e.status, 0) + 1
    computed = sum(1 for g in plan.groups if g.status == "computed") + sum(
        1 for e in plan.edits if e.result.get("inversion") == "computed"
    )
    return {
        "format": SUMMARY_FORMAT,
        "job_file": str(plan.job_file.resolve()),
        "started": _dt.datetime.fromtimestamp(started).astimezone().isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "finished": finished,
        "backend": backend,
        "workers": workers,
        "model_loads": model_loads,
        "counts": {"edits": len(plan.edits), **counts},
        "inversions_computed": computed,
        "warnings": plan.warnings,
        "inversions": [g.record() for g in plan.groups],
        "edits": [e.record() for e in plan.edits],
    }


def run_batch(
    plan: Plan,
    *,
    workers: int | None = None,
    ray: str | None = None,
    retries: int = DEFAULT_RETRIES,
    events: BatchEvents | None = None,
    summary: str | os.PathLike | None = None,
    backend: Any = None,
    worker_reporter: WorkerReporter | None = None,
) -> BatchResult:
    """Run every ``todo`` edit of ``plan`` (see :func:`choose_backend` for where); failures of one
    edit do not stop the others. The summary JSON (``summary``; None writes none) is rewritten
    after every result, so an interrupted batch leaves one too. A plan with ``refused`` edits raises
    :class:`OutputsRefused` before anything runs. ``worker_reporter`` receives the stage progress of
    the units run in pool worker processes or Ray actors (see :func:`choose_backend`); ``events``
    that of the units run in this process."""
    plan.check_outputs()
    events = events or BatchEvents()
    if retries < 0:
        raise ConfigError(f"{option_label('retries')} must be 0 or more, got {retries}")
    began, wall = time.perf_counter(), time.time()
    scratch = tempfile.mkdtemp(prefix="vedit-batch-")
    schedule = Schedule(plan, retries, scratch)
    backend = backend or choose_backend(plan, workers=workers, ray=ray, events=events, worker_reporter=worker_reporter)
    summary_path = Path(summary) if summary is not None else None

    def write_summary(finished: bool) -> None:
        if summary_path is None:
            return
        doc = summary_document(plan, started=wall, seconds=time.perf_counter() - began, backend=backend.kind,
                               workers=backend.workers, model_loads=schedule.model_loads,
                               finished=finished)  # fmt: skip
        with contextlib.suppress(OSError):
            write_json_atomically(summary_path, doc)

    interrupted = False
    try:
        if summary_path is not None:
            summary_path.parent.mkdir(parents=True, exist_ok=True)
            # A summary that cannot be written is found now, not after hours of work.
            try:
                write_json_atomically(summary_path, summary_document(
                    plan, started=wall, seconds=0.0, backend=backend.kind, workers=backend.workers, model_loads=0,
                    finished=False))  # fmt: skip
            except OSError as error:
                from ..errors import OutputError

                raise OutputError(
                    f"{summary_path}: cannot write the batch summary: {error.strerror or error}"
                ) from None
        while schedule.pending():
            for slot in backend.idle():
                unit = schedule.take(backend.prefer(slot))
                if unit is None:
                    break
                events.started(unit, backend.submit(slot, unit))
            for unit, outcome in backend.wait(timeout=0.5):
                settled = schedule.finish(unit, outcome)
                events.finished(unit, outcome, settled)
                if settled:
                    write_summary(False)
    except KeyboardInterrupt:
        interrupted = True
        schedule.abandon()
        raise
    finally:
        backend.close(interrupted=interrupted)
        write_summary(not interrupted)
        shutil.rmtree(scratch, ignore_errors=True)
    return BatchResult(plan, time.perf_counter() - began, backend.kind, backend.workers, schedule.model_loads,
                       summary_path)  # fmt: skip
