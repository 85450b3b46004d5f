"""``vedit invert``: DDIM-invert a clip into the cache, and optionally a trajectory file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .options import (
    CACHE_DIR_DEFAULT,
    CACHE_DIR_HELP,
    ENGINE_CACHE_DEFAULT,
    INVERSION_STEPS_HELP,
    config_from_flags,
    option_help,
    warn_ignored_seed,
)
from .output import out_console, reporting, user_errors


def add_to(app: typer.Typer) -> None:
    """Add ``vedit invert`` to ``app``."""

    @app.command()
    def invert(
        clip: Path = typer.Argument(..., help="Input video file, or a folder of numbered images."),
        output: Optional[Path] = typer.Option(
            None, "--output", "-o", help=option_help("Also write the trajectory to this .safetensors file.")
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help=option_help("Replace an existing -o file that is not a vedit trajectory.")
        ),
        source_prompt: Optional[str] = typer.Option(None, help=option_help("What the input shows.", "source_prompt")),
        model: Optional[str] = typer.Option(None, help=option_help("Model (as for 'vedit run').", "model")),
        revision: Optional[str] = typer.Option(None, help=option_help("Model revision.")),
        engine: Optional[str] = typer.Option(None, help=option_help("UNet engine (as for 'vedit run').", "engine")),
        engine_cache: Optional[str] = typer.Option(
            None, help=option_help("Folder of built engines.", default=ENGINE_CACHE_DEFAULT)
        ),
        steps: Optional[int] = typer.Option(
            None, help=option_help("Sampling steps T the trajectory is stored for.", "steps")
        ),
        inversion_steps: Optional[int] = typer.Option(None, help=option_help(INVERSION_STEPS_HELP, "inversion_steps")),
        seed: Optional[int] = typer.Option(
            None, hidden=True, help="Ignored: a built model's weights come from its spec (tiny@N)."
        ),
        size: Optional[str] = typer.Option(None, help=option_help("Working size WxH.", default="short side near 512")),
        frames: Optional[str] = typer.Option(None, help=option_help("Frame range START:STOP:STEP.", default="all")),
        max_frames: Optional[int] = typer.Option(None, help=option_help("At most this many frames.")),
        allow_short: bool = typer.Option(
            False, "--allow-short", help=option_help("Accept a clip that ends before its container says.")
        ),
        device: Optional[str] = typer.Option(None, help=option_help("auto, cpu, cuda, cuda:N or mps.", "device")),
        dtype: Optional[str] = typer.Option(None, help=option_help("auto, fp32, fp16 or bf16.", "dtype")),
        batch_size: Optional[str] = typer.Option(
            None, help=option_help("Frames per UNet batch, or auto.", "batch_size")
        ),
        cache_dir: Optional[str] = typer.Option(None, help=option_help(CACHE_DIR_HELP, default=CACHE_DIR_DEFAULT)),
        cache_max_gb: Optional[float] = typer.Option(None, help=option_help("Cache size cap in GB.", "cache_max_gb")),
        no_cache: bool = typer.Option(
            False, "--no-cache", help=option_help("Neither read nor write the inversion cache.")
        ),
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
            run_config = config_from_flags(
                config,
                source_prompt=source_prompt,
                model=model,
                revision=revision,
                engine=engine,
                engine_cache=engine_cache,
                steps=steps,
                inversion_steps=inversion_steps,
                size=size,
                frames=frames,
                max_frames=max_frames,
                allow_short=allow_short or None,
                device=device,
                dtype=dtype,
                batch_size=batch_size,
                cache_dir=cache_dir,
                cache_max_gb=cache_max_gb,
                no_cache=no_cache or None,
                overwrite=overwrite or None,
            )
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
