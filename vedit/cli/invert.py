"""``vedit invert``: DDIM-invert a clip into the cache, and optionally a trajectory file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..config import INVERT
from .options import config_from_flags, option_help, takes_run_options, warn_ignored_seed
from .output import out_console, reporting, user_errors


def add_to(app: typer.Typer) -> None:
    """Add ``vedit invert`` to ``app``."""

    @app.command()
    @takes_run_options(INVERT, plugin_kinds=("engine",))  # an inversion runs the engines, nothing else
    def invert(
        clip: Path = typer.Argument(..., help="Input video file, or a folder of numbered images."),
        output: Optional[Path] = typer.Option(
            None, "--output", "-o", help=option_help("Also write the trajectory to this .safetensors file.")
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help=option_help("Replace an existing -o file that is not a vedit trajectory.")
        ),
        options: dict = None,  # type: ignore[assignment]  (the flags of the run options inversion takes)
        check: bool = typer.Option(
            False,
            "--check",
            help=option_help(
                "Sample back from the inverted noise with the source prompt and report the PSNR against the clip."
            ),
        ),
        config: Optional[Path] = typer.Option(
            None, "--config", help=option_help("Read defaults from this vedit.toml.")
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help=option_help("No progress; warnings and errors only.")),
    ) -> None:
        """DDIM-invert CLIP into the cache (and optionally a file), for reuse by every later 'vedit run'."""
        from ..pipeline.invert import invert_clip

        with user_errors():
            seed = options.pop("seed", None)
            run_config = config_from_flags(config, **options, overwrite=overwrite or None)
            warn_ignored_seed(seed, "inversion")
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
