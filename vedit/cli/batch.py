"""``vedit batch``: edit many clips with many prompts from a job file; the plan, progress and result tables."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from ..batch.backends import choose_backend
from ..batch.jobfile import JobFileError
from ..batch.plan import OutputsRefused, Plan, PlannedEdit, plan_batch
from ..batch.run import FAILED_EXIT_CODE, default_summary_path, run_batch
from ..batch.scheduler import DEFAULT_RETRIES, BatchEvents
from ..batch.workers import Outcome, Unit
from ..report import Task
from .options import option_help
from .output import PlainReporter, err_console, fail, out_console, user_errors, warn


def _forwards_text(forwards: dict[str, int]) -> str:
    total = sum(forwards.values())
    parts = ", ".join(f"{kind} {count:,}" for kind, count in forwards.items())
    return f"{total:,}" + (f" ({parts})" if parts else "")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _short(path: Path, base: Path) -> str:
    """A path relative to the working directory when it is under it (tables stay readable)."""
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _what(edit: PlannedEdit, base: Path) -> str:
    return f"{edit.label}: {_short(edit.input, base)} {edit.prompt!r} seed {edit.seed} -> {_short(edit.output, base)}"


def plan_table(plan: Plan, base: Path) -> Table:
    """The dry run's table: every edit, what will happen to it, and its UNet work."""
    first_of = {g.number: (g.todo[0].index if g.todo else None) for g in plan.groups}
    own = {g.number: g.own_unit for g in plan.groups}
    table = Table("#", "job", "input", "prompt", "seed", "output", "frames", "will", "inversion", "UNet forwards")
    for column in table.columns:
        column.overflow = "fold"
    for e in plan.edits:
        if e.status == "skipped":
            will, inversion = "skip: up to date", "-"
        elif e.status == "failed":
            will, inversion = f"fail: {e.reason}", "-"
        elif e.status == "refused":
            will, inversion = f"refuse: {e.reason}", "-"
        else:
            will = "run, replacing a file vedit did not write (--overwrite)" if e.replaces else "run"
            if e.group is None:
                inversion = "none" if e.config.inversion is None else "from its file"
            elif own[e.group]:
                inversion = f"group {e.group} (inverted first, shared)"
            elif first_of[e.group] == e.index:
                inversion = f"group {e.group} (its own)"
            else:
                inversion = f"group {e.group}"
        forwards = _forwards_text(e.forwards) if e.status == "todo" else "-"
        cells = (str(e.index), e.job_name or str(e.job), _short(e.input, base), repr(e.prompt), str(e.seed),
                 _short(e.output, base), str(e.frames or "?"), will, inversion, forwards)  # fmt: skip
        table.add_row(*(Text(c) for c in cells))
    return table


def plan_totals(plan: Plan) -> str:
    todo, skipped, failing = len(plan.todo), plan.count("skipped"), plan.count("failed")
    refused, replacing = plan.count("refused"), sum(1 for e in plan.todo if e.replaces)
    groups = plan.inversions_to_compute
    clips = len({g.input for g in groups})
    line = f"{len(plan.edits)} edits: {todo} to run, {skipped} up to date, {failing} failing"
    if replacing:
        line += f", {replacing} replacing files vedit did not write"
    if refused:
        line += f", {refused} refused (their outputs exist and vedit did not write them: --overwrite replaces them)"
    line += (f"; {len(groups)} inversion{'s' if len(groups) != 1 else ''} of {clips} clip{'s' if clips != 1 else ''} "
             f"to compute (one already in the cache costs none); UNet image-forwards "
             f"{_forwards_text(plan.planned_forwards())}")  # fmt: skip
    return line


def result_table(plan: Plan, base: Path) -> Table:
    """The final table: job, output, frames, time, status."""
    table = Table("#", "job", "output", "frames", "time", "inversion", "status")
    for column in table.columns:
        column.overflow = "fold"
    for e in plan.edits:
        status = e.status if not e.reason or e.status == "done" else f"{e.status}: {e.reason}"
        frames = e.result.get("frames") or e.frames
        cells = (str(e.index), e.job_name or str(e.job), _short(e.output, base), str(frames or "-"),
                 _duration(e.result.get("seconds")), e.result.get("inversion") or "-", status)  # fmt: skip
        table.add_row(*(Text(c) for c in cells))
    return table


class _Display(BatchEvents):
    """One overall progress display: a bar of edits done, a line per running unit (and, for units
    run in this process, their stages); plain lines when stderr is not a terminal."""

    def __init__(self, plan: Plan, mode: str, base: Path):
        self.plan, self.mode, self.base = plan, mode, base
        self.console = err_console
        self.progress: Any = None
        self.rows: dict[str, list[Any]] = {}
        self.done = 0
        self.total = len(plan.todo)
        self.seen_warnings: set[str] = set()
        self.edits = {e.index: e for e in plan.edits}
        self.groups = {g.number: g for g in plan.groups}

    @contextlib.contextmanager
    def shown(self) -> Iterator[_Display]:
        if self.mode != "rich":
            yield self
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=self.console, transient=False,
        )  # fmt: skip
        self.overall = self.progress.add_task("edits", total=self.total)
        with self.progress:
            yield self

    def _line(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            self.console.print(f"vedit: {text}", markup=False, highlight=False, soft_wrap=True)

    def _describe(self, unit: Unit) -> str:
        if unit.kind == "invert":
            group = self.groups[unit.number]
            return f"invert {_short(group.input, self.base)} for {len(group.todo)} edits"
        return _what(self.edits[unit.number], self.base)

    def started(self, unit: Unit, worker: str) -> None:
        retry = f" (attempt {unit.attempts})" if unit.attempts > 1 else ""
        if self.mode == "plain":
            self._line(f"[{self.done}/{self.total}] {worker}: {self._describe(unit)}{retry}")
        elif self.mode == "rich":
            row = self.progress.add_task(f"{worker}: {self._describe(unit)}{retry}", total=None)
            self.rows[unit.uid] = [row]

    def reporter(self, unit: Unit) -> Any:
        if self.mode == "plain":

            class _NoWarnings(PlainReporter):
                def warning(self, text: str) -> None:  # the batch prints each unit's warnings once, at its end
                    pass

            return _NoWarnings()
        if self.mode != "rich":
            return None
        display, uid = self, unit.uid

        class _Stages:
            def task(self, description: str, total: int | None) -> Task:
                row = display.progress.add_task(f"  {description}", total=total)
                display.rows.setdefault(uid, []).append(row)
                progress = display.progress

                class _Task:
                    def advance(self, amount: int = 1) -> None:
                        progress.advance(row, amount)

                return _Task()

            def message(self, text: str) -> None:
                pass

            def warning(self, text: str) -> None:
                pass

        return _Stages()

    def finished(self, unit: Unit, outcome: Outcome, settled: list[Any]) -> None:
        for row in self.rows.pop(unit.uid, []):
            self.progress.remove_task(row)
        where = self._describe(unit)
        for text in outcome.warnings:
            if text not in self.seen_warnings:
                self.seen_warnings.add(text)
                if self.progress is not None:
                    self._line(f"vedit: warning: {text}")
                else:
                    warn(text)
        if outcome.status == "died":
            self._line(f"{outcome.reason}; {where}: trying again")
            return
        edits = [s for s in settled if isinstance(s, PlannedEdit)]
        self.done += len(edits)
        if self.progress is not None and edits:
            self.progress.advance(self.overall, len(edits))
        for e in edits:
            if e.status == "failed":
                self._line(f"failed: {_what(e, self.base)}: {e.reason}")
            elif self.mode == "plain":
                self._line(f"[{self.done}/{self.total}] done: {_short(e.output, self.base)} "
                           f"({e.result.get('frames')} frames, {_duration(e.result.get('seconds'))})")  # fmt: skip
        if unit.kind == "invert" and outcome.status == "failed":
            self._line(f"failed: {where}: {outcome.reason}")


def _backend_text(backend: Any, plan: Plan) -> str:
    if not plan.todo:
        return "nothing to do"
    if backend.kind == "serial":
        return "in this process"
    if backend.kind == "pool":
        devices = [d for d in backend.devices if d]
        on = f" on {', '.join(devices)}" if devices else " on the CPU"
        return f"on a local pool of {backend.workers} worker processes{on}"
    each = "one GPU each" if getattr(backend, "gpus", 0) else "one CPU each"
    return f"on Ray, {backend.workers} worker{'s' if backend.workers != 1 else ''} ({each})"


def add_to(app: typer.Typer) -> None:
    """Add ``vedit batch`` to ``app``."""

    @app.command("batch")
    def batch(
        job_file: Path = typer.Argument(
            ..., help=option_help("The job file (TOML): shared options under [run], one [[job]] table per job.")
        ),
        dry_run: bool = typer.Option(
            False,
            "--dry-run",
            "-n",
            help=option_help("Print the plan (edits, inversions, UNet forwards) and run nothing."),
        ),
        force: bool = typer.Option(
            False, "--force", help=option_help("Redo every edit, even those whose output is up to date.")
        ),
        overwrite: bool = typer.Option(
            False,
            "--overwrite",
            help=option_help(
                "Replace existing outputs that vedit did not write "
                "(without it such edits are refused, and --dry-run shows them)."
            ),
        ),
        workers: Optional[int] = typer.Option(
            None,
            "--workers",
            "-w",
            help=option_help(
                "Worker processes of the local pool, or Ray workers.",
                default="one per GPU; 1 (this process) without GPUs; on Ray, the cluster's GPUs or CPUs",
            ),
        ),
        ray: Optional[str] = typer.Option(
            None,
            "--ray",
            help=option_help(
                "Run on Ray: auto (the running cluster, else a local one), local (a new local one), "
                "or a cluster ADDRESS."
            ),
        ),
        retries: int = typer.Option(
            DEFAULT_RETRIES, "--retries", help=option_help("Times a unit whose worker process died is tried again.")
        ),
        summary: Optional[Path] = typer.Option(
            None,
            "--summary",
            help=option_help("Write the summary JSON here.", default="<job file>.summary.json beside the job file"),
        ),
        config: Optional[Path] = typer.Option(
            None,
            "--config",
            help=option_help(
                "Read defaults from this vedit.toml instead of ./vedit.toml (the job file's [run] wins over it)."
            ),
        ),
        quiet: bool = typer.Option(
            False, "--quiet", "-q", help=option_help("No progress or table; warnings and errors only.")
        ),
    ) -> None:
        """Edit many clips with many prompts from a job file: planned, up-to-date outputs skipped, locally or on Ray."""
        base = Path.cwd()
        with user_errors():
            try:
                plan = plan_batch(job_file, force=force, config_path=config, device_here=not ray, overwrite=overwrite)
                if not dry_run:
                    plan.check_outputs()
            except (JobFileError, OutputsRefused) as error:
                for line in error.errors:
                    fail(line)
                raise typer.Exit(error.exit_code) from None
            for text in plan.warnings:
                warn(text)
            if dry_run:
                out_console.print(plan_table(plan, base))
                out_console.print(Text(plan_totals(plan)))
                return
            summary_path = summary or default_summary_path(job_file)
            mode = "quiet" if quiet else ("rich" if err_console.is_terminal else "plain")
            display = _Display(plan, mode, base)
            backend = choose_backend(plan, workers=workers, ray=ray, events=display)
            for note in getattr(backend, "notes", []):
                warn(note)
            where = _backend_text(backend, plan)
            if not quiet:
                err_console.print(
                    f"vedit: {len(plan.todo)} of {len(plan.edits)} edits to run ({plan.count('skipped')} up to date), "
                    f"{len(plan.inversions_to_compute)} inversions, {where}",
                    markup=False, highlight=False, soft_wrap=True,
                )  # fmt: skip
            try:
                for e in plan.edits:
                    if e.status == "failed":  # found while planning (a clip that cannot be read)
                        display._line(f"failed: {_what(e, base)}: {e.reason}")
                with display.shown():
                    result = run_batch(plan, retries=retries, events=display, summary=summary_path, backend=backend)
            except KeyboardInterrupt:
                done = plan.count("done")
                raise fail(f"interrupted; {done} finished output{'s are' if done != 1 else ' is'} kept "
                           f"(see {summary_path}); running it again does the rest", 130) from None  # fmt: skip
        failed = result.failed
        if not quiet:
            out_console.print(result_table(plan, base))
            counts = result.counts()
            computed = sum(1 for g in plan.groups if g.status == "computed") + sum(
                1 for e in plan.edits if e.result.get("inversion") == "computed")  # fmt: skip
            out_console.print(Text(
                f"{counts.get('done', 0)} done, {counts.get('skipped', 0)} up to date, "
                f"{counts.get('failed', 0)} failed in {_duration(result.seconds)} ({where}); "
                f"{computed} inversion{'s' if computed != 1 else ''} computed, "
                f"{result.model_loads} model load{'s' if result.model_loads != 1 else ''}; summary {summary_path}"
            ))  # fmt: skip
        if failed:
            raise fail(f"{len(failed)} of {len(plan.edits)} edits failed (see {summary_path})", FAILED_EXIT_CODE)


add_batch_command = add_to  # its name in vedit.batch_cli

__all__ = ["add_batch_command", "add_to", "plan_table", "plan_totals", "result_table"]
