"""How the command line speaks: the consoles, one-line errors and warnings (:func:`fail`, :func:`user_errors`,
:func:`warn`), the progress reporters (:func:`reporting`: rich bars, plain lines or nothing), the width of output
that is not a terminal, and the summary tables."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Task as ProgressTask
from rich.table import Table
from rich.text import Text

from ..config import RunConfig
from ..errors import VeditError
from ..report import SilentReporter, Task, duration

if TYPE_CHECKING:
    from ..pipeline.edit import EditResult

# Nothing vedit prints is rich markup: paths, prompts and messages are shown literally
# (no "[faiss]" eaten as a tag, no ":100:" turned into an emoji, no numbers recoloured).
err_console = Console(stderr=True, emoji=False, highlight=False)
out_console = Console(emoji=False, highlight=False)
PROGRESS_INTERVAL = 10.0  # seconds between plain progress lines ($VEDIT_PROGRESS_INTERVAL)
UNFOLDED_WIDTH = 1 << 16  # columns of output that is not a terminal: wider than any line vedit prints


@contextlib.contextmanager
def unfolded() -> Iterator[None]:
    """Tables and summaries whole when they go to a pipe or a file: rich would fold them at 80
    columns there (or at the width of a terminal the process still has), cutting paths and
    breaking words. $COLUMNS, when set, still decides."""
    widened = [c for c in (out_console, err_console) if not c.is_terminal and not os.environ.get("COLUMNS")]
    for console in widened:
        console.width = UNFOLDED_WIDTH  # a table is only as wide as its content: nothing is padded to this
    try:
        yield
    finally:
        for console in widened:
            console.width = None  # rich's own choice again


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one line on stderr and return the exit to raise."""
    err_console.print(f"vedit: error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one line on stderr and a non-zero exit."""
    try:
        yield
    except VeditError as error:
        raise fail(str(error), error.exit_code) from None
    except (MemoryError, RuntimeError) as error:  # torch.OutOfMemoryError, and the CPU allocator's RuntimeError
        from ..model.device import is_out_of_memory, memory_hint

        if not is_out_of_memory(error):
            raise
        detail = str(error).splitlines()[0] if str(error) else "allocation failed"
        raise fail(f"out of memory ({detail[:120]}): {memory_hint(error)}", 7) from None
    except KeyboardInterrupt:
        raise fail("interrupted; nothing was written", 130) from None


def warn(text: str) -> None:
    """One warning line on stderr; printed even with --quiet, since it tells of something lost."""
    err_console.print(f"vedit: warning: {text}", markup=False, highlight=False, soft_wrap=True)


class QuietReporter(SilentReporter):
    """--quiet: no progress, no messages; warnings still reach the user, as lines on stderr."""

    def warning(self, text: str) -> None:
        warn(text)


class RichReporter(QuietReporter):
    """Progress bars on stderr for each stage (a terminal)."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def task(self, description: str, total: int | None, frames_per_unit: int | None = None, done: int = 0) -> Task:
        # rich's speed (and so the time left) comes from advances only: what was done before is not among them
        task_id = self.progress.add_task(description, total=total, completed=done, frames_per_unit=frames_per_unit)
        progress = self.progress

        class _Task:
            def advance(self, amount: int = 1) -> None:
                progress.advance(task_id, amount)

        return _Task()

    def message(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)

    def warning(self, text: str) -> None:
        self.progress.console.print(f"vedit: warning: {text}", markup=False, highlight=False, soft_wrap=True)


def _rate(units: float, seconds: float, frames_per_unit: int | None) -> str:
    """ ", 31.2 frames/s" for a task whose units stand for frames; "" when nothing can be said yet."""
    if not frames_per_unit or units <= 0 or seconds <= 0:
        return ""
    fps = units * frames_per_unit / seconds
    return f", {fps:.3g} frames/s" if fps < 100 else f", {fps:.0f} frames/s"


class _FrameRate(ProgressColumn):
    """Frames per second of a task whose units stand for frames (a denoising step: every frame)."""

    def render(self, task: ProgressTask) -> Text:
        speed = task.finished_speed or task.speed
        per_unit = task.fields.get("frames_per_unit")
        if not speed or not per_unit:
            return Text("")
        return Text(_rate(speed, 1.0, per_unit).removeprefix(", "))


class PlainReporter(QuietReporter):
    """Progress as plain lines, for stderr that is not a terminal (nohup, CI, a job scheduler).

    Each stage prints a line when it starts, one every ``interval`` seconds while it runs, and
    one when it is done, each flushed at once, so a log file shows where a long run is.
    """

    def __init__(self, stream: TextIO | None = None, interval: float | None = None):
        self.stream = stream or sys.stderr
        if interval is None:
            interval = float(os.environ.get("VEDIT_PROGRESS_INTERVAL", "") or PROGRESS_INTERVAL)
        self.interval = interval

    def _print(self, text: str) -> None:
        print(f"vedit: {text}", file=self.stream, flush=True)

    def task(self, description: str, total: int | None, frames_per_unit: int | None = None, done: int = 0) -> Task:
        reporter = self
        began = time.monotonic()
        already = f", {done} done before" if done else ""
        reporter._print(f"{description}: started" + (f", {total} to do{already}" if total else ""))
        first = done

        class _Task:
            last = began
            done = first

            def advance(self, amount: int = 1) -> None:
                self.done += amount
                now = time.monotonic()
                elapsed = now - began
                worked = self.done - first  # the units done before are not part of the rate
                rate = _rate(worked, elapsed, frames_per_unit)
                if total is not None and self.done >= total:
                    reporter._print(f"{description}: done, {self.done}/{total} in {duration(elapsed)}{rate}")
                elif now - self.last >= reporter.interval:
                    self.last = now
                    if total and worked:
                        left = elapsed / worked * (total - self.done)
                        reporter._print(
                            f"{description}: {self.done}/{total} ({100 * self.done // total}%){rate}, "
                            f"{duration(elapsed)} elapsed, about {duration(left)} left"
                        )
                    else:
                        reporter._print(f"{description}: {self.done} done{rate}, {duration(elapsed)} elapsed")

        return _Task()

    def message(self, text: str) -> None:
        self._print(text)


@contextlib.contextmanager
def reporting(quiet: bool) -> Iterator[QuietReporter]:
    """Rich bars on a terminal, plain lines otherwise, nothing but warnings with --quiet."""
    if quiet:
        yield QuietReporter()
        return
    if not err_console.is_terminal:
        yield PlainReporter()
        return
    progress = Progress(
        TextColumn("{task.description:<16}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        _FrameRate(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )
    with progress:
        yield RichReporter(progress)


def summary_table(result: EditResult, config: RunConfig) -> Table:
    """What was written and everything needed to repeat the run; every cell literal text."""
    rows: list[tuple[str, str]] = [("output", str(result.output))]
    frames = str(result.frames)
    if result.short_read is not None:
        got, promised = result.short_read
        frames += f" (the clip promised {promised}; it ends early)"
    rows.append(("frames", frames))
    size = f"{result.size[0]}x{result.size[1]} working, {result.output_size[0]}x{result.output_size[1]} written"
    if result.size_note:
        size += f" ({result.size_note})"
    rows.append(("size", size))
    if result.aspect_note:
        rows.append(("aspect", result.aspect_note))
    fps = f"{result.fps} ({float(result.fps):.3f})"
    if result.timing_note:
        fps += f"; {result.timing_note}"
    rows.append(("fps", fps))
    if result.dropped:
        rows.append(("dropped", "; ".join(result.dropped)))
    rows.append(("prompt", repr(config.prompt)))
    rows.append(("source prompt", repr(config.source_prompt)))
    if config.negative_prompt:
        rows.append(("negative prompt", repr(config.negative_prompt)))
    rows.append(("model", result.model))
    rows.append(("seed", str(config.seed)))
    if result.controls:
        rows.append(("control", "; ".join(result.controls)))
    rows.append(
        ("editor", f"{config.editor} + {config.propagator}, {result.steps_run} steps, inversion {result.inversion}")
    )
    if result.resumed_from is not None:
        rows.append(
            (
                "resumed",
                f"from the checkpoint after step {result.resumed_from} of {result.steps_run}; "
                f"{result.steps_run - result.resumed_from} steps run now",
            )
        )
    if result.inversion_path is not None:
        rows.append(("inversion", str(result.inversion_path)))
    rows.append(
        (
            "UNet",
            f"{sum(result.forwards.values())} image-forwards ({result.forwards_per_frame_step:.3f} per frame per step)",
        )
    )
    if result.engines:
        by_engine: dict[str, list[str]] = {}
        for name, engine in result.engines.items():
            by_engine.setdefault(engine, []).append(name)
        rows.append(("engine", "; ".join(f"{engine} ({', '.join(names)})" for engine, names in by_engine.items())))
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.stage_seconds.items())
    rows.append(("time", f"{result.seconds:.1f}s ({stages})"))
    if result.profile:
        rows.append(("profile", ", ".join(f"{k} {v:.2f}s" for k, v in result.profile.items())))
    if result.evaluation is not None:
        report = result.evaluation
        rows.append(("eval", f"{report.path}: {report.headline()}"))
    if result.warnings:
        rows.append(("warnings", f"{len(result.warnings)} (printed above)"))
    return rows_table(rows)


def rows_table(rows: list[tuple[str, str]]) -> Table:
    """A summary table of (label, text) rows, every cell literal text."""
    table = Table(show_header=False, box=None, pad_edge=False)
    for name, value in rows:
        table.add_row(Text(name), Text(value))
    return table
