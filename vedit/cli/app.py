"""The ``vedit`` command line, built by :func:`create_app` (plugins add commands through a hook)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, TextIO

import typer
import typer.core
from rich.console import Console
from rich.markup import escape as rich_escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from .. import __version__
from .. import plugins
from ..config import RunConfig, check_number, command_line, load_config
from ..errors import ConfigError, VeditError
from ..report import SilentReporter, duration

# Nothing vedit prints is rich markup: paths, prompts and messages are shown literally
# (no "[faiss]" eaten as a tag, no ":100:" turned into an emoji, no numbers recoloured).
err_console = Console(stderr=True, emoji=False, highlight=False)
out_console = Console(emoji=False, highlight=False)
PROGRESS_INTERVAL = 10.0  # seconds between plain progress lines ($VEDIT_PROGRESS_INTERVAL)
UNFOLDED_WIDTH = 1 << 16  # columns of output that is not a terminal: wider than any line vedit prints
CHECKPOINT_DAYS = 30.0  # vedit cache prune: checkpoints of stopped runs older than this go
INVERSION_STEPS_HELP = (
    "DDIM inversion steps. Their schedule must pass through every timestep of the --steps one: with 50 steps, "
    "50, 100, 200, 250, 500 and 1000 do (a multiple of --steps alone is not enough); an error names the nearest "
    "multiple that does."
)


@contextlib.contextmanager
def _unfolded() -> Iterator[None]:
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
        from ..model.models import is_out_of_memory, memory_hint

        if not is_out_of_memory(error):
            raise
        detail = str(error).splitlines()[0] if str(error) else "allocation failed"
        raise fail(f"out of memory ({detail[:120]}): {memory_hint(error)}", 7) from None
    except KeyboardInterrupt:
        raise fail("interrupted; nothing was written", 130) from None


def warn(text: str) -> None:
    """One warning line on stderr; printed even with --quiet, since it tells of something lost."""
    err_console.print(f"vedit: warning: {text}", markup=False, highlight=False, soft_wrap=True)


def _ignored_seed(seed: int | None, work: str) -> None:
    """``--seed`` of a command that draws nothing at random: it used to choose a built model's weights."""
    if seed is not None:
        warn(f"--seed is ignored: {work} draws nothing at random, and a built model's weights come from "
             f"its spec (--model tiny@{seed})")


class QuietReporter(SilentReporter):
    """--quiet: no progress, no messages; warnings still reach the user, as lines on stderr."""

    def warning(self, text: str) -> None:
        warn(text)


class RichReporter(QuietReporter):
    """Progress bars on stderr for each stage (a terminal)."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def task(self, description: str, total: int | None, frames_per_unit: int | None = None, done: int = 0):
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
    """", 31.2 frames/s" for a task whose units stand for frames; "" when nothing can be said yet."""
    if not frames_per_unit or units <= 0 or seconds <= 0:
        return ""
    fps = units * frames_per_unit / seconds
    return f", {fps:.3g} frames/s" if fps < 100 else f", {fps:.0f} frames/s"


class _FrameRate(ProgressColumn):
    """Frames per second of a task whose units stand for frames (a denoising step: every frame)."""

    def render(self, task) -> Text:
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

    def task(self, description: str, total: int | None, frames_per_unit: int | None = None, done: int = 0):
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


def _options(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def _config(config_path: Optional[Path], **values) -> RunConfig:
    return load_config(config_path, **_options(**values))


def _help(text: str, key: str | None = None, default: str | None = None) -> str:
    """Help text shown literally (rich would eat "[...]"), with the default taken from RunConfig."""
    if key is not None and default is None:
        value = RunConfig.__dataclass_fields__[key].default
        if isinstance(value, str):
            default = value if value else '""'
        elif value is not None and not isinstance(value, bool):
            default = f"{value:g}" if isinstance(value, float) else str(value)
    if default is not None:
        text = f"{text} [default: {default}]"
    return rich_escape(text)


# Typer may vendor its own copy of click: take the exception classes from wherever it gets them.
_click_errors = sys.modules[typer.BadParameter.__module__]
_UsageError = _click_errors.UsageError
_ClickException = _click_errors.ClickException
_NoArgsIsHelp = getattr(_click_errors, "NoArgsIsHelpError", ())
_Aborts = tuple({typer.Abort, getattr(_click_errors, "Abort", typer.Abort)})


class _Group(typer.core.TyperGroup):
    """Ends a usage error (bad flag, bad value) in one line and exit code 4, like every other bad option;
    runs every command under :func:`vedit.config.command_line`, with output to a pipe or file unfolded."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            with command_line(), _unfolded():  # flags, not the Python API's keywords; whole lines in a pipe
                code = super().main(*args, standalone_mode=False, **kwargs)
        except _NoArgsIsHelp as error:
            error.show()
            code = error.exit_code
        except _UsageError as error:
            where = f"; see '{error.ctx.command_path} --help'" if error.ctx is not None and error.ctx.parent else ""
            message = " ".join(error.format_message().split()).rstrip(".")
            fail(f"{message}{where}")
            code = ConfigError.exit_code
        except _ClickException as error:
            fail(" ".join(error.format_message().split()))
            code = error.exit_code
        except _Aborts:
            fail("interrupted; nothing was written")
            code = 130
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _summary(result, config: RunConfig) -> Table:
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
    rows.append(("editor", f"{config.editor} + {config.propagator}, {result.steps_run} steps, inversion {result.inversion}"))
    if result.resumed_from is not None:
        rows.append(("resumed", f"from the checkpoint after step {result.resumed_from} of {result.steps_run}; "
                                f"{result.steps_run - result.resumed_from} steps run now"))
    if result.inversion_path is not None:
        rows.append(("inversion", str(result.inversion_path)))
    rows.append(("UNet", f"{sum(result.forwards.values())} image-forwards ({result.forwards_per_frame_step:.3f} per frame per step)"))
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
    return _rows(rows)


def _rows(rows: list[tuple[str, str]]) -> Table:
    """A summary table of (label, text) rows, every cell literal text."""
    table = Table(show_header=False, box=None, pad_edge=False)
    for name, value in rows:
        table.add_row(Text(name), Text(value))
    return table


def _print_checkpoints(entries, describe_age) -> None:
    """The checkpoints of stopped runs, oldest first: the same command resumes each."""
    table = Table("checkpoint", "clip", "prompt", "editor", "frames", "size", "step", "MB", "written")
    for column in table.columns:
        column.overflow = "fold"
    for entry in entries:
        m = entry.metadata
        table.add_row(
            Text(entry.key[:12]),
            Text("(unreadable)" if "error" in m else m.get("source", "?")),
            Text(repr(m.get("prompt", ""))),
            Text(m.get("editor", "?")),
            Text(m.get("frames", "?")),
            Text(f"{m.get('width', '?')}x{m.get('height', '?')}"),
            Text(f"{m.get('step', '?')}/{m.get('steps', '?')}"),
            Text(f"{entry.size_bytes / 2**20:.1f}"),
            Text(describe_age(entry.modified)),
        )
    out_console.print(table)
    total = sum(e.size_bytes for e in entries)
    out_console.print(
        f"{len(entries)} checkpoint{'s' if len(entries) != 1 else ''} of stopped runs, {total / 2**20:.1f} MB "
        f"(the same command resumes each; 'vedit cache clear' removes them)",
        markup=False, soft_wrap=True,
    )


def create_app() -> typer.Typer:
    app = typer.Typer(
        name="vedit",
        cls=_Group,
        help="Edit a whole video from a text prompt with Stable Diffusion, consistently across frames (TokenFlow).",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )

    def version_callback(value: bool) -> None:
        if value:
            out_console.print(f"vedit {__version__}", markup=False)
            raise typer.Exit()

    @app.callback()
    def root(
        version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True, help="Show the version."),
    ) -> None:
        """vedit: prompt-driven, temporally consistent video editing."""

    cache_dir_default = "$VEDIT_CACHE_DIR or ~/.cache/vedit"
    cache_dir_help = "Cache folder: inversions, checkpoints and, unless --engine-cache, built engines."
    engine_cache_default = "engines in the cache folder"

    @app.command()
    def run(
        clip: Path = typer.Argument(..., help="Input video file, or a folder of numbered images."),
        prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help=_help("What the edited video should show (required).")),
        output: Optional[Path] = typer.Option(None, "--output", "-o", help=_help("Output .mp4/.mov/.mkv (H.264), .webm (VP9), .gif, or a folder for PNG frames.", default="<clip>-edited.mp4 here")),
        overwrite: bool = typer.Option(False, "--overwrite", help=_help("Replace an existing output (video, frames, preview sheet, --eval report) that vedit did not write; what vedit wrote is replaced without it.")),
        source_prompt: Optional[str] = typer.Option(None, help=_help("What the input shows (inversion and source branch).", "source_prompt")),
        negative_prompt: Optional[str] = typer.Option(None, help=_help("Negative prompt (the unconditional branch).", "negative_prompt")),
        editor: Optional[str] = typer.Option(None, help=_help("Editor plugin: pnp, sdedit, img2img, or a plugin's.", "editor")),
        propagator: Optional[str] = typer.Option(None, help=_help("Propagator plugin: tokenflow, none, or a plugin's.", "propagator")),
        engine: Optional[str] = typer.Option(None, help=_help("UNet engine: eager, compile, torchscript, onnxruntime, tensorrt, torch-tensorrt, a plugin's, auto, or a comma-separated list to try in order.", "engine")),
        engine_cache: Optional[str] = typer.Option(None, help=_help("Folder of built engines (ONNX, TorchScript, TensorRT plans).", default=engine_cache_default)),
        nn_backend: Optional[str] = typer.Option(None, help=_help("Nearest-neighbour backend: torch, faiss or auto.", "nn_backend")),
        model: Optional[str] = typer.Option(None, help=_help("Hub id, local diffusers folder, tiny, random:sd15 or random:sd21 (tiny@N: weights from seed N).", "model")),
        revision: Optional[str] = typer.Option(None, help=_help("Model revision (hub branch, tag or commit).")),
        steps: Optional[int] = typer.Option(None, help=_help("Sampling steps T.", "steps")),
        inversion_steps: Optional[int] = typer.Option(None, help=_help(INVERSION_STEPS_HELP, "inversion_steps")),
        strength: Optional[float] = typer.Option(None, help=_help("img2img: fraction of the schedule to run.", "strength")),
        start: Optional[float] = typer.Option(None, help=_help("sdedit: fraction of the schedule to run from the DDIM noise.", "start")),
        guidance: Optional[float] = typer.Option(None, help=_help("Classifier-free guidance scale.", "guidance")),
        pnp_f_t: Optional[float] = typer.Option(None, help=_help("pnp: fraction of steps with conv feature injection.", "pnp_f_t")),
        pnp_attn_t: Optional[float] = typer.Option(None, help=_help("pnp: fraction of steps with self-attention Q/K injection.", "pnp_attn_t")),
        chunk_size: Optional[int] = typer.Option(None, help=_help("tokenflow: frames per chunk B (one keyframe each).", "chunk_size")),
        max_joint_keyframes: Optional[int] = typer.Option(None, help=_help("tokenflow: keyframes each keyframe's extended attention covers (itself, its neighbours, a seeded spread); all of them while K <= this.", "max_joint_keyframes")),
        keyframes: Optional[str] = typer.Option(None, help=_help('tokenflow: JSON keyframe schedule file, {"keyframes": [[k, ...], ...]}, one list per step.')),
        inversion: Optional[str] = typer.Option(None, help=_help("Use this trajectory file (from 'vedit invert -o') instead of inverting.")),
        force_inversion: bool = typer.Option(False, "--force-inversion", help=_help("Use the --inversion file even if it was made from another clip, model or source prompt.")),
        seed: Optional[int] = typer.Option(None, help=_help("Random seed of the img2img noise and the keyframe draws (a built model's weights come from its spec: tiny@N).", "seed")),
        size: Optional[str] = typer.Option(None, help=_help("Working size WxH (multiples of 8).", default="short side near 512")),
        frames: Optional[str] = typer.Option(None, help=_help("Frame range START:STOP:STEP (source frame indices, STOP exclusive).", default="all")),
        max_frames: Optional[int] = typer.Option(None, help=_help("At most this many frames.")),
        allow_short: bool = typer.Option(False, "--allow-short", help=_help("Accept a clip that ends before its container says: warn and edit the frames that could be read.")),
        fps: Optional[str] = typer.Option(None, help=_help("Source frame rate override (folders of images default to 24).", default="the source's")),
        keep_timestamps: bool = typer.Option(False, "--keep-timestamps", help=_help("Keep a variable-rate source's own frame times instead of resampling it to its average rate.")),
        output_size: Optional[str] = typer.Option(None, help=_help("source, working or WxH.", "output_size")),
        device: Optional[str] = typer.Option(None, help=_help("auto, cpu, cuda, cuda:N or mps.", "device")),
        dtype: Optional[str] = typer.Option(None, help=_help("auto, fp32, fp16 or bf16.", "dtype")),
        batch_size: Optional[str] = typer.Option(None, help=_help("Frames per VAE / inversion / per-frame UNet batch, or auto (from free device memory).", "batch_size")),
        postprocess: Optional[str] = typer.Option(None, help=_help("Post-processors applied to the decoded frames, in order: NAME[:KEY=VALUE...], comma-separated (deflicker-luma,deflicker-flow:strength=0.7).")),
        eval_: Optional[bool] = typer.Option(None, "--eval/--no-eval", help=_help("After writing, measure the edit as 'vedit eval' does and write the report beside the output (out.mp4 -> out.eval.json).")),
        flow: Optional[str] = typer.Option(None, help=_help("Optical-flow backend for --eval: dis, raft or a plugin's.", "flow")),
        clip_model: Optional[str] = typer.Option(None, "--clip", help=_help("CLIP model for --eval's text and frame scores: a hub id already in the local cache, or a folder (never downloaded).", "clip")),
        cache_dir: Optional[str] = typer.Option(None, help=_help(cache_dir_help, default=cache_dir_default)),
        cache_max_gb: Optional[float] = typer.Option(None, help=_help("Cache size cap in GB; the least recently used inversions are evicted.", "cache_max_gb")),
        no_cache: bool = typer.Option(False, "--no-cache", help=_help("Neither read nor write the inversion cache (nor checkpoints).")),
        preview: bool = typer.Option(False, "--preview", help=_help("Edit only the keyframes (one per chunk) and write them beside their source frames as a contact sheet PNG (-o FILE.png, or <output>.preview.png); the summary says what the full run will cost.")),
        preview_frames: Optional[str] = typer.Option(None, help=_help("With --preview: the frames to preview, indices among the selected frames, e.g. 0,40,80.", default="one per chunk")),
        checkpoint_every: Optional[int] = typer.Option(None, help=_help("Keep a checkpoint of the edited latents in the cache every this many steps; the same command resumes a stopped run from it. 0: none.", "checkpoint_every")),
        config: Optional[Path] = typer.Option(None, "--config", help=_help("Read defaults from this vedit.toml instead of ./vedit.toml.")),
        quiet: bool = typer.Option(False, "--quiet", "-q", help=_help("No progress or summary; warnings and errors only.")),
        profile: bool = typer.Option(False, "--profile", help=_help("Time each component (read, encode, invert, keyframe and propagation passes, NN search, decode, write) with device synchronisation, and show it in the summary.")),
    ) -> None:
        """Edit CLIP so that it shows PROMPT."""
        from ..pipeline.stages import edit

        with user_errors():
            run_config = _config(
                config,
                prompt=prompt, source_prompt=source_prompt, negative_prompt=negative_prompt, editor=editor,
                propagator=propagator, engine=engine, engine_cache=engine_cache, nn_backend=nn_backend, model=model,
                revision=revision,
                steps=steps, inversion_steps=inversion_steps, strength=strength, start=start, guidance=guidance,
                pnp_f_t=pnp_f_t, pnp_attn_t=pnp_attn_t, chunk_size=chunk_size, keyframes=keyframes,
                max_joint_keyframes=max_joint_keyframes,
                inversion=inversion, force_inversion=force_inversion or None, seed=seed, size=size, frames=frames,
                max_frames=max_frames, allow_short=allow_short or None, fps=fps,
                keep_timestamps=keep_timestamps or None, output_size=output_size, device=device, dtype=dtype,
                batch_size=batch_size, postprocess=postprocess, cache_dir=cache_dir, cache_max_gb=cache_max_gb,
                no_cache=no_cache or None, eval=eval_, flow=flow, clip=clip_model, checkpoint_every=checkpoint_every,
                overwrite=overwrite or None,
            )
            target = output or Path(f"{clip.stem if clip.suffix else clip.name}-edited.mp4")
            if preview_frames is not None and not preview:
                raise ConfigError("--preview-frames chooses the frames of a preview: add --preview")
            if preview:
                from ..pipeline.preview import preview as run_preview, preview_path, summary_rows

                sheet = target if target.suffix.lower() == ".png" else preview_path(target)
                with reporting(quiet) as reporter:
                    looked = run_preview(clip, sheet, run_config, reporter=reporter, preview_frames=preview_frames)
                if not quiet:
                    out_console.print(_rows(summary_rows(looked)))
                return
            with reporting(quiet) as reporter:
                result = edit(clip, target, run_config, reporter=reporter, profile=profile)
        if not quiet:
            out_console.print(_summary(result, run_config))

    @app.command()
    def invert(
        clip: Path = typer.Argument(..., help="Input video file, or a folder of numbered images."),
        output: Optional[Path] = typer.Option(None, "--output", "-o", help=_help("Also write the trajectory to this .safetensors file.")),
        overwrite: bool = typer.Option(False, "--overwrite", help=_help("Replace an existing -o file that is not a vedit trajectory.")),
        source_prompt: Optional[str] = typer.Option(None, help=_help("What the input shows.", "source_prompt")),
        model: Optional[str] = typer.Option(None, help=_help("Model (as for 'vedit run').", "model")),
        revision: Optional[str] = typer.Option(None, help=_help("Model revision.")),
        engine: Optional[str] = typer.Option(None, help=_help("UNet engine (as for 'vedit run').", "engine")),
        engine_cache: Optional[str] = typer.Option(None, help=_help("Folder of built engines.", default=engine_cache_default)),
        steps: Optional[int] = typer.Option(None, help=_help("Sampling steps T the trajectory is stored for.", "steps")),
        inversion_steps: Optional[int] = typer.Option(None, help=_help(INVERSION_STEPS_HELP, "inversion_steps")),
        seed: Optional[int] = typer.Option(None, hidden=True, help="Ignored: a built model's weights come from its spec (tiny@N)."),
        size: Optional[str] = typer.Option(None, help=_help("Working size WxH.", default="short side near 512")),
        frames: Optional[str] = typer.Option(None, help=_help("Frame range START:STOP:STEP.", default="all")),
        max_frames: Optional[int] = typer.Option(None, help=_help("At most this many frames.")),
        allow_short: bool = typer.Option(False, "--allow-short", help=_help("Accept a clip that ends before its container says.")),
        device: Optional[str] = typer.Option(None, help=_help("auto, cpu, cuda, cuda:N or mps.", "device")),
        dtype: Optional[str] = typer.Option(None, help=_help("auto, fp32, fp16 or bf16.", "dtype")),
        batch_size: Optional[str] = typer.Option(None, help=_help("Frames per UNet batch, or auto.", "batch_size")),
        cache_dir: Optional[str] = typer.Option(None, help=_help(cache_dir_help, default=cache_dir_default)),
        cache_max_gb: Optional[float] = typer.Option(None, help=_help("Cache size cap in GB.", "cache_max_gb")),
        no_cache: bool = typer.Option(False, "--no-cache", help=_help("Neither read nor write the inversion cache.")),
        check: bool = typer.Option(False, "--check", help=_help("Sample back from the inverted noise with the source prompt and report the PSNR against the clip.")),
        config: Optional[Path] = typer.Option(None, "--config", help=_help("Read defaults from this vedit.toml.")),
        quiet: bool = typer.Option(False, "--quiet", "-q", help=_help("No progress; warnings and errors only.")),
    ) -> None:
        """DDIM-invert CLIP into the cache (and optionally a file), for reuse by every later 'vedit run'."""
        from ..pipeline.stages import invert_clip

        with user_errors():
            run_config = _config(
                config, source_prompt=source_prompt, model=model, revision=revision, engine=engine,
                engine_cache=engine_cache, steps=steps,
                inversion_steps=inversion_steps, size=size, frames=frames, max_frames=max_frames,
                allow_short=allow_short or None, device=device, dtype=dtype, batch_size=batch_size,
                cache_dir=cache_dir, cache_max_gb=cache_max_gb, no_cache=no_cache or None, overwrite=overwrite or None,
            )
            _ignored_seed(seed, "inversion")
            with reporting(quiet) as reporter:
                result = invert_clip(clip, output, run_config, reporter=reporter, check=check)
        trajectory = result.trajectory
        if not quiet:
            where = f", written to {result.path}" if result.path else ""
            entry = f", cache entry {result.cache_path}" if result.cache_path else ""
            out_console.print(
                f"{trajectory.num_frames} frames, {len(trajectory.timesteps)} stored timesteps "
                f"(noisiest t={trajectory.noisiest}), {result.how}{entry}{where}",
                markup=False,
            )
        if result.reconstruction is not None:
            reconstruction = result.reconstruction
            out_console.print(
                f"reconstruction PSNR {reconstruction.psnr:.2f} dB (the VAE alone: {reconstruction.vae_psnr:.2f} dB)",
                markup=False,
            )

    @app.command("eval")
    def eval_command(
        edited: Path = typer.Argument(..., help="The edited video file, or folder of numbered frames."),
        source: Path = typer.Option(..., "--source", "-s", help=_help("The clip it was edited from; optical flow is computed on it.")),
        prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help=_help("The edit's prompt, for the CLIP text score.")),
        json_path: Optional[Path] = typer.Option(None, "--json", help=_help("Also write the report, with per-frame figures, to this JSON file.")),
        overwrite: bool = typer.Option(False, "--overwrite", help=_help("Replace an existing --json file that is not a vedit report.")),
        flow: Optional[str] = typer.Option(None, help=_help("Optical-flow backend: dis, raft or a plugin's.", "flow")),
        clip_model: Optional[str] = typer.Option(None, "--clip", help=_help("CLIP model: a hub id already in the local cache, or a folder (never downloaded).", "clip")),
        source_frames: Optional[str] = typer.Option(None, help=_help("The source frames the edit was made from, START:STOP:STEP (STOP exclusive).", default="from the first, as many as the edit has")),
        keep_timestamps: bool = typer.Option(False, "--keep-timestamps", help=_help("The edit was made with 'vedit run --keep-timestamps': read both clips frame by frame at their own times, not at the source's average rate.")),
        config: Optional[Path] = typer.Option(None, "--config", help=_help("Read --flow, --clip and --keep-timestamps defaults from this vedit.toml.")),
    ) -> None:
        """Measure an edit: warp error along the source's optical flow and CLIP scores, beside the source's own."""
        from ..quality.evaluate import check_report_path, evaluate, write_json
        from ..io.video import FrameRange

        with user_errors():
            run_config = _config(config, flow=flow, clip=clip_model, keep_timestamps=keep_timestamps or None, overwrite=overwrite or None)
            try:
                selection = FrameRange.parse(source_frames) if source_frames is not None else None
            except ConfigError as error:
                raise ConfigError(str(error).replace("--frames", "--source-frames")) from None
            target = None
            if json_path is not None:
                target = check_report_path(json_path, edited, source, overwrite=run_config.overwrite)
            with reporting(False) as reporter:
                report = evaluate(
                    edited, source, prompt=prompt, flow=run_config.flow, clip=run_config.clip,
                    source_frames=selection, reporter=reporter, keep_timestamps=run_config.keep_timestamps,
                )  # fmt: skip
            if target is not None:
                write_json(report, target, overwrite=run_config.overwrite)
        out_console.print(report.renderable())

    engines_app = typer.Typer(help="Build, list and clear compiled UNet engines.", no_args_is_help=True)
    app.add_typer(engines_app, name="engines")
    engine_cache_help = "Folder of built engines."

    @engines_app.command("build")
    def engines_build(
        engine: str = typer.Option(..., help="Engine, or a comma-separated list to try in order (as for 'vedit run')."),
        model: Optional[str] = typer.Option(None, help=_help("Model (as for 'vedit run').", "model")),
        revision: Optional[str] = typer.Option(None, help=_help("Model revision.")),
        size: str = typer.Option("512x512", help="Working size WxH the run will use."),
        frames: int = typer.Option(40, min=1, help="Frames the run will edit (decides the batch sizes built)."),
        editor: Optional[str] = typer.Option(None, help=_help("Editor plugin.", "editor")),
        propagator: Optional[str] = typer.Option(None, help=_help("Propagator plugin.", "propagator")),
        chunk_size: Optional[int] = typer.Option(None, help=_help("tokenflow: frames per chunk B.", "chunk_size")),
        max_joint_keyframes: Optional[int] = typer.Option(None, help=_help("tokenflow: keyframes each keyframe attends to.", "max_joint_keyframes")),
        batch_size: Optional[str] = typer.Option(None, help=_help("Frames per inversion / per-frame batch, or auto.", "batch_size")),
        device: Optional[str] = typer.Option(None, help=_help("auto, cpu, cuda, cuda:N or mps.", "device")),
        dtype: Optional[str] = typer.Option(None, help=_help("auto, fp32, fp16 or bf16.", "dtype")),
        seed: Optional[int] = typer.Option(None, hidden=True, help="Ignored: a built model's weights come from its spec (tiny@N)."),
        engine_cache: Optional[str] = typer.Option(None, help=_help(engine_cache_help, default=engine_cache_default)),
        config: Optional[Path] = typer.Option(None, "--config", help=_help("Read defaults from this vedit.toml.")),
        quiet: bool = typer.Option(False, "--quiet", "-q", help=_help("No progress; warnings and errors only.")),
    ) -> None:
        """Build every pass a run of this shape uses, ahead of the run (progress per pass)."""
        from ..pipeline.stages import build_engines
        from ..io.video import parse_size

        with user_errors():
            run_config = _config(
                config, engine=engine, model=model, revision=revision, editor=editor, propagator=propagator,
                chunk_size=chunk_size, max_joint_keyframes=max_joint_keyframes, batch_size=batch_size, device=device,
                dtype=dtype, engine_cache=engine_cache,
            )
            _ignored_seed(seed, "building engines")
            with reporting(quiet) as reporter:
                built = build_engines(run_config, frames, size=parse_size(size, "--size"), reporter=reporter)
        if not quiet:
            table = Table("pass", "batch", "engine", "seconds")
            for item in built:
                table.add_row(item.pass_name, str(item.batch), item.engine, f"{item.seconds:.1f}")
            out_console.print(table)

    @engines_app.command("list")
    def engines_list(engine_cache: Optional[str] = typer.Option(None, help=engine_cache_help, show_default=f"engines in {cache_dir_default}")) -> None:
        """List built engines: pass, engine, model, shapes, precision and what they were built with."""
        from ..runtime.engine import EngineCache
        from ..method.passes import PASS_VERSION

        cache = EngineCache.for_options(engine_cache)
        entries = cache.entries()
        if not entries:
            out_console.print(f"no built engines in {cache.root}", markup=False, soft_wrap=True)
            return
        table = Table("id", "pass", "engine", "model", "batches", "dtype", "MB")
        for column in table.columns:
            column.overflow = "fold"
        for name in ("pass", "engine"):
            next(c for c in table.columns if c.header == name).no_wrap = True
        libraries = set()
        for e in entries:
            library = ", ".join(f"{k} {e.parts[k]}" for k in ("onnxruntime", "tensorrt", "torch", "compute_capability") if k in e.parts)
            if e.parts.get("pass_version") != str(PASS_VERSION) and e.engine != "?":
                library += f" (pass code v{e.parts.get('pass_version', '?')}: stale)"
            libraries.add(library)
            table.add_row(Text(e.path.name.rsplit("-", 1)[-1][:8]), Text(e.pass_name), Text(e.engine), Text(e.model),
                          Text(e.parts.get("batches", "?")), Text(e.parts.get("dtype", "?")), f"{e.bytes / 1e6:.1f}")  # fmt: skip
        out_console.print(table)
        for library in sorted(libraries):
            out_console.print(f"built with {library}", markup=False, soft_wrap=True)

    @engines_app.command("clear")
    def engines_clear(engine_cache: Optional[str] = typer.Option(None, help=engine_cache_help, show_default=f"engines in {cache_dir_default}")) -> None:
        """Delete every built engine."""
        from ..runtime.engine import EngineCache

        cache = EngineCache.for_options(engine_cache)
        freed = cache.clear()
        out_console.print(f"removed {freed / 1e6:.1f} MB of built engines from {cache.root}", markup=False, soft_wrap=True)

    cache_app = typer.Typer(help="Manage the inversion cache and the checkpoints of stopped runs.", no_args_is_help=True)
    app.add_typer(cache_app, name="cache")

    @cache_app.command("list")
    def cache_list(cache_dir: Optional[str] = typer.Option(None, help="Cache folder.")) -> None:
        """List cached inversions, least recently used first, with the clip each came from, and checkpoints of stopped runs."""
        from rich.text import Text

        from ..method.inversion import InversionCache, describe_age, gb_to_bytes

        from ..cache.checkpoints import CheckpointStore

        with user_errors():
            cache = InversionCache(cache_dir)
            entries = cache.entries()
            checkpoints = CheckpointStore(cache_dir).entries()
        if checkpoints:
            _print_checkpoints(checkpoints, describe_age)
        if not entries:
            out_console.print(f"no cached inversions in {cache.root}", markup=False, soft_wrap=True)
            return
        table = Table("key", "clip", "content", "frames", "size", "model", "source prompt", "steps", "MB", "used")
        for column in table.columns:
            column.overflow = "fold"  # a cut path, prompt or key would be useless; fold it instead
        for entry in entries:
            m = entry.metadata
            unreadable = "error" in m
            # Text(...) everywhere: paths, prompts and model ids are shown as written, never as rich markup.
            table.add_row(
                Text(entry.key[:12]),
                Text("(unreadable)" if unreadable else entry.source or "?"),
                Text(entry.content or "?"),
                Text(m.get("frames", "?")),
                Text(f"{m.get('width', '?')}x{m.get('height', '?')}"),
                Text(m.get("model", "?")),
                Text(repr(m.get("source_prompt", ""))),
                Text(f"{m.get('inversion_steps', '?')}/{m.get('steps', '?')}"),
                Text(f"{entry.size_bytes / 2**20:.1f}"),
                Text(describe_age(entry.modified)),
            )
        out_console.print(table)
        total = sum(e.size_bytes for e in entries)
        cap = RunConfig.cache_max_gb
        share = f" ({100 * total / gb_to_bytes(cap):.0f}%)" if cap > 0 else ""
        out_console.print(
            f"{len(entries)} entries, {total / 2**20:.1f} MB in {cache.root}; "
            f"the default cap (--cache-max-gb) is {cap:g} GB{share}",
            markup=False, soft_wrap=True,
        )

    @cache_app.command("rm")
    def cache_rm(
        key: str = typer.Argument(..., help="An entry's key as 'vedit cache list' shows it, or any unique start of it."),
        cache_dir: Optional[str] = typer.Option(None, help="Cache folder."),
    ) -> None:
        """Delete one cached inversion, or one checkpoint of a stopped run."""
        from ..cache.checkpoints import CheckpointStore
        from ..method.inversion import InversionCache

        with user_errors():
            cache = InversionCache(cache_dir)
            wanted = key.strip().removesuffix("…").removesuffix(".safetensors").lower()
            store = CheckpointStore(cache_dir)
            kept = [entry for entry in store.entries() if wanted and entry.key.startswith(wanted)]
            inversions = [entry for entry in cache.entries() if wanted and entry.key.startswith(wanted)]
            if kept and not inversions:
                if len(kept) > 1:
                    raise ConfigError(f"{wanted!r} is the start of {len(kept)} checkpoints' keys; give more of the key")
                store.remove(kept[0].key)
                out_console.print(
                    f"removed checkpoint {kept[0].key} of {kept[0].metadata.get('source', '?')} "
                    f"({kept[0].size_bytes / 2**20:.1f} MB)",
                    markup=False, soft_wrap=True,
                )  # fmt: skip
                return
            entry = cache.find(key)
            cache.remove(entry)
        clip = f" of {entry.source}" if entry.source else ""
        out_console.print(
            f"removed cached inversion {entry.key}{clip} ({entry.size_bytes / 2**20:.1f} MB)", markup=False, soft_wrap=True
        )

    @cache_app.command("prune")
    def cache_prune(
        max_gb: float = typer.Option(
            RunConfig.cache_max_gb, "--max-gb", help="Delete least recently used inversions until the cache holds at most this much."
        ),
        checkpoint_days: float = typer.Option(
            CHECKPOINT_DAYS, "--checkpoint-days",
            help="Also delete checkpoints of stopped runs last written more than this many days ago (0: all of them).",
        ),
        cache_dir: Optional[str] = typer.Option(None, help="Cache folder."),
    ) -> None:
        """Shrink the cache: least recently used inversions down to a size, and old checkpoints."""
        from ..cache.checkpoints import CheckpointStore
        from ..method.inversion import InversionCache, gb_to_bytes

        with user_errors():
            check_number(max_gb, "--max-gb", 0.0)
            check_number(checkpoint_days, "--checkpoint-days", 0.0)
            cache = InversionCache(cache_dir)
            files, freed = cache.prune(gb_to_bytes(max_gb))
            left = cache.entries()
            store = CheckpointStore(cache_dir)
            kept_files, kept_freed = store.prune(checkpoint_days * 86400.0)
            kept_left = store.entries()
        out_console.print(
            f"removed {files} cached inversions ({freed / 2**20:.1f} MB); "
            f"{len(left)} left, {sum(e.size_bytes for e in left) / 2**20:.1f} MB",
            markup=False,
        )
        plural = "s" if kept_files != 1 else ""
        out_console.print(
            f"removed {kept_files} checkpoint{plural} older than {checkpoint_days:g} days "
            f"({kept_freed / 2**20:.1f} MB); {len(kept_left)} left",
            markup=False,
        )

    @cache_app.command("clear")
    def cache_clear(cache_dir: Optional[str] = typer.Option(None, help="Cache folder.")) -> None:
        """Delete every cached inversion and every checkpoint of a stopped run."""
        from ..cache.checkpoints import CheckpointStore
        from ..method.inversion import InversionCache

        with user_errors():
            files, freed = InversionCache(cache_dir).clear()
            kept, kept_bytes = CheckpointStore(cache_dir).clear()
        out_console.print(
            f"removed {files} cached inversions ({freed / 2**20:.1f} MB) and {kept} "
            f"checkpoint{'s' if kept != 1 else ''} ({kept_bytes / 2**20:.1f} MB)",
            markup=False,
        )

    @app.command("plugins")
    def list_plugins() -> None:
        """List every plugin: kind, name, version, source package and whether it can run here."""
        with user_errors():
            table = Table("kind", "name", "version", "package", "plugin", "runs here")
            for column in table.columns:
                column.overflow = "fold"  # never cut a name short on a narrow terminal
            for kind in plugins.KINDS:
                for name, item in sorted(plugins.registered(kind).items()):
                    reason = item.unavailable_reason()
                    cells = (kind, name, item.version, item.package, item.plugin, "yes" if not reason else f"no: {reason}")
                    table.add_row(*(Text(str(cell)) for cell in cells))
            out_console.print(table)
            for failure in plugins.failures():
                err_console.print(
                    f"vedit: plugin {failure.plugin!r} ({failure.package}) is not loaded: {failure.error}",
                    markup=False, highlight=False,
                )

    from .batch import add_batch_command

    add_batch_command(app)
    plugins.register_commands(app)
    return app


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    from ..runtime.allocator import configure_allocator

    # The C allocator's settings for this process, before anything large is allocated (the library
    # itself leaves the process alone: import vedit changes nothing).
    configure_allocator()
    # A terminated run (a job scheduler's SIGTERM) cleans up like Ctrl-C: temporary output removed.
    signal.signal(signal.SIGTERM, _interrupt)
    app = create_app()
    app(prog_name="vedit")


if __name__ == "__main__":  # pragma: no cover
    main()
