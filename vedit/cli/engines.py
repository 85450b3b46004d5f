"""``vedit engines``: build the compiled UNet engines a run will use, list them, clear them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from ..config import BUILD, CACHE_DIR_DEFAULT
from .options import config_from_flags, option_help, takes_run_options, warn_ignored_seed
from .output import out_console, reporting, user_errors


def add_to(app: typer.Typer) -> None:
    """Add ``vedit engines`` (build, list, clear) to ``app``."""
    engines_app = typer.Typer(help="Build, list and clear compiled UNet engines.", no_args_is_help=True)
    app.add_typer(engines_app, name="engines")
    engine_cache_help = "Folder of built engines."

    @engines_app.command("build")
    @takes_run_options(BUILD, plugin_kinds=("editor", "propagator", "engine"))  # what decides the passes
    def engines_build(
        engine: str = typer.Option(..., help="Engine, or a comma-separated list to try in order (as for 'vedit run')."),
        size: str = typer.Option("512x512", help="Working size WxH the run will use."),
        frames: int = typer.Option(40, min=1, help="Frames the run will edit (decides the batch sizes built)."),
        options: dict = None,  # type: ignore[assignment]  (the run options and plugin options a build depends on)
        config: Optional[Path] = typer.Option(
            None, "--config", help=option_help("Read defaults from this vedit.toml.")
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help=option_help("No progress; warnings and errors only.")),
    ) -> None:
        """Build every pass a run of this shape uses, ahead of the run (progress per pass)."""
        from ..io.frames import parse_size
        from ..pipeline.engines import build_engines

        with user_errors():
            seed = options.pop("seed", None)
            run_config = config_from_flags(config, engine=engine, **options)
            warn_ignored_seed(seed, "building engines")
            with reporting(quiet) as reporter:
                built = build_engines(run_config, frames, size=parse_size(size, "--size"), reporter=reporter)
        if not quiet:
            table = Table("pass", "batch", "engine", "seconds")
            for item in built:
                table.add_row(item.pass_name, str(item.batch), item.engine, f"{item.seconds:.1f}")
            out_console.print(table)

    @engines_app.command("list")
    def engines_list(
        engine_cache: Optional[str] = typer.Option(
            None, help=engine_cache_help, show_default=f"engines in {CACHE_DIR_DEFAULT}"
        ),
    ) -> None:
        """List built engines: pass, engine, model, shapes, precision and what they were built with."""
        from ..method.passes import PASS_VERSION
        from ..runtime.engine_cache import EngineCache

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
            library = ", ".join(
                f"{k} {e.parts[k]}" for k in ("onnxruntime", "tensorrt", "torch", "compute_capability") if k in e.parts
            )
            if e.parts.get("pass_version") != str(PASS_VERSION) and e.engine != "?":
                library += f" (pass code v{e.parts.get('pass_version', '?')}: stale)"
            libraries.add(library)
            table.add_row(Text(e.path.name.rsplit("-", 1)[-1][:8]), Text(e.pass_name), Text(e.engine), Text(e.model),
                          Text(e.parts.get("batches", "?")), Text(e.parts.get("dtype", "?")),
                          f"{e.bytes / 1e6:.1f}")  # fmt: skip
        out_console.print(table)
        for library in sorted(libraries):
            out_console.print(f"built with {library}", markup=False, soft_wrap=True)

    @engines_app.command("clear")
    def engines_clear(
        engine_cache: Optional[str] = typer.Option(
            None, help=engine_cache_help, show_default=f"engines in {CACHE_DIR_DEFAULT}"
        ),
    ) -> None:
        """Delete every built engine."""
        from ..runtime.engine_cache import EngineCache

        cache = EngineCache.for_options(engine_cache)
        freed = cache.clear()
        out_console.print(
            f"removed {freed / 1e6:.1f} MB of built engines from {cache.root}", markup=False, soft_wrap=True
        )
