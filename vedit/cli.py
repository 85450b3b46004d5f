"""The ``vedit`` command line, built by :func:`create_app` (plugins add commands through a hook)."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__, plugins
from .config import RunConfig, load_config
from .errors import VeditError

err_console = Console(stderr=True)
out_console = Console()


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one line on stderr and return the exit to raise."""
    err_console.print(f"vedit: error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one line on stderr and a non-zero exit."""
    import torch

    try:
        yield
    except VeditError as error:
        raise fail(str(error), error.exit_code) from None
    except (torch.OutOfMemoryError, MemoryError) as error:
        detail = str(error).splitlines()[0] if str(error) else "allocation failed"
        raise fail(
            f"out of memory ({detail[:120]}): try --dtype fp16, a smaller --size, --chunk-size or --batch-size", 7
        ) from None
    except KeyboardInterrupt:
        raise fail("interrupted; nothing was written", 130) from None


class RichReporter:
    """Progress bars on stderr for each stage."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def task(self, description: str, total: int | None):
        task_id = self.progress.add_task(description, total=total)
        progress = self.progress

        class _Task:
            def advance(self, amount: int = 1) -> None:
                progress.advance(task_id, amount)

        return _Task()

    def message(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)


@contextlib.contextmanager
def reporting(quiet: bool) -> Iterator[object | None]:
    if quiet:
        yield None
        return
    progress = Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
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


def create_app() -> typer.Typer:
    app = typer.Typer(
        name="vedit",
        help="Edit a whole video from a text prompt with Stable Diffusion, consistently across frames (TokenFlow).",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )

    def version_callback(value: bool) -> None:
        if value:
            out_console.print(f"vedit {__version__}")
            raise typer.Exit()

    @app.callback()
    def root(
        version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True, help="Show the version."),
    ) -> None:
        """vedit: prompt-driven, temporally consistent video editing."""

    @app.command()
    def run(
        clip: Path = typer.Argument(..., help="Input video file, or a folder of numbered images."),
        prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="What the edited video should show."),
        output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output .mp4/.mov/.mkv, or a folder for PNG frames. Default: <clip>-edited.mp4 here."),
        source_prompt: Optional[str] = typer.Option(None, help="What the input shows (inversion and source branch). [default: \"\"]"),
        negative_prompt: Optional[str] = typer.Option(None, help="Negative prompt. [default: \"\"]"),
        editor: Optional[str] = typer.Option(None, help="Editor plugin: pnp, sdedit, img2img, ... [default: pnp]"),
        propagator: Optional[str] = typer.Option(None, help="Propagator plugin: tokenflow, none, ... [default: tokenflow]"),
        engine: Optional[str] = typer.Option(None, help="UNet engine plugin, or auto. [default: auto]"),
        nn_backend: Optional[str] = typer.Option(None, help="Nearest-neighbour backend: torch, faiss or auto. [default: auto]"),
        model: Optional[str] = typer.Option(None, help="Hub id, local diffusers folder, 'tiny', 'random:sd15' or 'random:sd21'. [default: stabilityai/stable-diffusion-2-1-base]"),
        revision: Optional[str] = typer.Option(None, help="Model revision (hub branch, tag or commit)."),
        steps: Optional[int] = typer.Option(None, help="Sampling steps T. [default: 50]"),
        inversion_steps: Optional[int] = typer.Option(None, help="DDIM inversion steps (a multiple of --steps). [default: 50]"),
        strength: Optional[float] = typer.Option(None, help="img2img: fraction of the schedule to run. [default: 0.8]"),
        start: Optional[float] = typer.Option(None, help="sdedit: fraction of the schedule to run from the DDIM noise. [default: 0.9]"),
        guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale. [default: 7.5]"),
        pnp_f_t: Optional[float] = typer.Option(None, help="pnp: fraction of steps with conv feature injection. [default: 0.8]"),
        pnp_attn_t: Optional[float] = typer.Option(None, help="pnp: fraction of steps with self-attention Q/K injection. [default: 0.5]"),
        chunk_size: Optional[int] = typer.Option(None, help="tokenflow: frames per chunk B (one keyframe each). [default: 8]"),
        keyframes: Optional[str] = typer.Option(None, help="tokenflow: JSON keyframe schedule {\"keyframes\": [[k, ...], ...]}."),
        inversion: Optional[str] = typer.Option(None, help="Use this trajectory file (from 'vedit invert -o') instead of inverting."),
        seed: Optional[int] = typer.Option(None, help="Random seed (noise, keyframes, tiny weights). [default: 0]"),
        size: Optional[str] = typer.Option(None, help="Working size WxH (multiples of 8). Default: short side near 512."),
        frames: Optional[str] = typer.Option(None, help="Frame range START:STOP:STEP (source frame indices, STOP exclusive)."),
        max_frames: Optional[int] = typer.Option(None, help="At most this many frames."),
        fps: Optional[str] = typer.Option(None, help="Source frame rate override (folders of images default to 24)."),
        output_size: Optional[str] = typer.Option(None, help="'source', 'working' or WxH. [default: source]"),
        device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:N or mps. [default: auto]"),
        dtype: Optional[str] = typer.Option(None, help="auto, fp32, fp16 or bf16. [default: auto]"),
        batch_size: Optional[int] = typer.Option(None, help="Frames per VAE / per-frame UNet batch. [default: 8]"),
        postprocess: Optional[str] = typer.Option(None, help="Comma-separated post-processor plugins applied to decoded frames."),
        cache_dir: Optional[str] = typer.Option(None, help="Inversion cache folder. [default: $VEDIT_CACHE_DIR or ~/.cache/vedit]"),
        no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the inversion cache."),
        config: Optional[Path] = typer.Option(None, "--config", help="Read defaults from this vedit.toml instead of ./vedit.toml."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or summary."),
    ) -> None:
        """Edit CLIP so that it shows PROMPT."""
        from .pipeline import edit

        with user_errors():
            run_config = _config(
                config,
                prompt=prompt, source_prompt=source_prompt, negative_prompt=negative_prompt, editor=editor,
                propagator=propagator, engine=engine, nn_backend=nn_backend, model=model, revision=revision,
                steps=steps, inversion_steps=inversion_steps, strength=strength, start=start, guidance=guidance,
                pnp_f_t=pnp_f_t, pnp_attn_t=pnp_attn_t, chunk_size=chunk_size, keyframes=keyframes,
                inversion=inversion, seed=seed, size=size, frames=frames, max_frames=max_frames, fps=fps,
                output_size=output_size, device=device, dtype=dtype, batch_size=batch_size,
                postprocess=postprocess, cache_dir=cache_dir, no_cache=True if no_cache else None,
            )
            target = output or Path(f"{clip.stem if clip.suffix else clip.name}-edited.mp4")
            with reporting(quiet) as reporter:
                result = edit(clip, target, run_config, reporter=reporter)
        if not quiet:
            table = Table(show_header=False, box=None, pad_edge=False)
            table.add_row("output", str(result.output))
            table.add_row("frames", str(result.frames))
            table.add_row("size", f"{result.size[0]}x{result.size[1]} working, {result.output_size[0]}x{result.output_size[1]} written")
            table.add_row("fps", f"{result.fps} ({float(result.fps):.3f})")
            table.add_row("editor", f"{run_config.editor} + {run_config.propagator}, {result.steps_run} steps, inversion {result.inversion}")
            table.add_row("UNet", f"{sum(result.forwards.values())} image-forwards ({result.forwards_per_frame_step:.3f} per frame per step)")
            stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.stage_seconds.items())
            table.add_row("time", f"{result.seconds:.1f}s ({stages})")
            out_console.print(table)

    @app.command()
    def invert(
        clip: Path = typer.Argument(..., help="Input video file, or a folder of numbered images."),
        output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the trajectory to this .safetensors file."),
        source_prompt: Optional[str] = typer.Option(None, help="What the input shows. [default: \"\"]"),
        model: Optional[str] = typer.Option(None, help="Model (as for 'vedit run')."),
        revision: Optional[str] = typer.Option(None, help="Model revision."),
        steps: Optional[int] = typer.Option(None, help="Sampling steps T the trajectory is stored for. [default: 50]"),
        inversion_steps: Optional[int] = typer.Option(None, help="DDIM inversion steps. [default: 50]"),
        seed: Optional[int] = typer.Option(None, help="Seed (tiny/random weights)."),
        size: Optional[str] = typer.Option(None, help="Working size WxH."),
        frames: Optional[str] = typer.Option(None, help="Frame range START:STOP:STEP."),
        max_frames: Optional[int] = typer.Option(None, help="At most this many frames."),
        device: Optional[str] = typer.Option(None, help="auto, cpu, cuda, cuda:N or mps."),
        dtype: Optional[str] = typer.Option(None, help="auto, fp32, fp16 or bf16."),
        batch_size: Optional[int] = typer.Option(None, help="Frames per UNet batch."),
        cache_dir: Optional[str] = typer.Option(None, help="Inversion cache folder."),
        no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the inversion cache."),
        check: bool = typer.Option(False, "--check", help="Sample back from the inverted noise with the source prompt and report the PSNR against the clip."),
        config: Optional[Path] = typer.Option(None, "--config", help="Read defaults from this vedit.toml."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    ) -> None:
        """DDIM-invert CLIP into the cache (and optionally a file), for reuse by every later 'vedit run'."""
        from .pipeline import invert_clip

        with user_errors():
            run_config = _config(
                config, source_prompt=source_prompt, model=model, revision=revision, steps=steps,
                inversion_steps=inversion_steps, seed=seed, size=size, frames=frames, max_frames=max_frames,
                device=device, dtype=dtype, batch_size=batch_size, cache_dir=cache_dir,
                no_cache=True if no_cache else None,
            )
            with reporting(quiet) as reporter:
                result = invert_clip(clip, output, run_config, reporter=reporter, check=check)
        trajectory = result.trajectory
        if not quiet:
            where = f", written to {result.path}" if result.path else ""
            out_console.print(
                f"{trajectory.num_frames} frames, {len(trajectory.timesteps)} stored timesteps "
                f"(noisiest t={trajectory.noisiest}), {result.how}{where}",
                markup=False,
            )
        if result.reconstruction is not None:
            reconstruction = result.reconstruction
            out_console.print(
                f"reconstruction PSNR {reconstruction.psnr:.2f} dB (the VAE alone: {reconstruction.vae_psnr:.2f} dB)",
                markup=False,
            )

    cache_app = typer.Typer(help="Manage the inversion cache.", no_args_is_help=True)
    app.add_typer(cache_app, name="cache")

    @cache_app.command("list")
    def cache_list(cache_dir: Optional[str] = typer.Option(None, help="Cache folder.")) -> None:
        """List cached inversions."""
        from .inversion import InversionCache, describe_age

        cache = InversionCache(cache_dir)
        entries = cache.entries()
        if not entries:
            out_console.print(f"no cached inversions in {cache.root}", markup=False)
            return
        table = Table("key", "frames", "size", "model", "source prompt", "steps", "MB", "used")
        for entry in entries:
            m = entry.metadata
            table.add_row(
                entry.path.stem, m.get("frames", "?"), f"{m.get('width', '?')}x{m.get('height', '?')}",
                m.get("model", "?"), repr(m.get("source_prompt", "")), f"{m.get('inversion_steps', '?')}/{m.get('steps', '?')}",
                f"{entry.size_bytes / 2**20:.1f}", describe_age(entry.modified),
            )
        out_console.print(table)
        total = sum(e.size_bytes for e in entries)
        out_console.print(f"{len(entries)} entries, {total / 2**20:.1f} MB in {cache.root}", markup=False)

    @cache_app.command("clear")
    def cache_clear(cache_dir: Optional[str] = typer.Option(None, help="Cache folder.")) -> None:
        """Delete every cached inversion."""
        from .inversion import InversionCache

        files, freed = InversionCache(cache_dir).clear()
        out_console.print(f"removed {files} cached inversions ({freed / 2**20:.1f} MB)", markup=False)

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
                    table.add_row(kind, name, item.version, item.package, item.plugin, "yes" if not reason else f"no: {reason}")
            out_console.print(table)
            for failure in plugins.failures():
                err_console.print(
                    f"vedit: plugin {failure.plugin!r} ({failure.package}) is not loaded: {failure.error}",
                    markup=False, highlight=False,
                )

    plugins.register_commands(app)
    return app


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # A terminated run (a job scheduler's SIGTERM) cleans up like Ctrl-C: temporary output removed.
    signal.signal(signal.SIGTERM, _interrupt)
    app = create_app()
    app(prog_name="vedit")


if __name__ == "__main__":  # pragma: no cover
    main()
