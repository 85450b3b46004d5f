"""Benchmark suites behind ``vedit bench``, registered through the public ``register_commands`` hook.

Every figure is measured, never assumed: peak memory in a fresh process per configuration,
UNet work by the code's own forward counter, and wall time side by side in one run.
"""

from __future__ import annotations

from typing import Optional

import typer

from vedit.hookspecs import hookimpl


@hookimpl
def register_commands(app):
    bench = typer.Typer(help="Measure memory, UNet work and speed.", no_args_is_help=True)
    app.add_typer(bench, name="bench")

    @bench.command("memory")
    def memory(
        frames: str = typer.Option("16,64,256", help="Comma-separated frame counts."),
        model: str = typer.Option("tiny", help="Model spec (tiny, random:sd15, random:sd21, ...)."),
        size: str = typer.Option("64x64", help="Working size WxH."),
        steps: int = typer.Option(2, help="Sampling (and inversion) steps."),
        editor: str = typer.Option("pnp", help="Editor."),
        propagator: str = typer.Option("tokenflow", help="Propagator."),
        chunk_size: int = typer.Option(8, help="Chunk size B."),
        device: str = typer.Option("auto", help="Device."),
        dtype: str = typer.Option("auto", help="dtype."),
        save: Optional[str] = typer.Option(None, help="Also write the results as JSON to this file."),
    ) -> None:
        """Peak memory of whole edits at several frame counts (one fresh process each)."""
        from .memory import run_memory_suite

        run_memory_suite(
            [int(n) for n in frames.split(",")], model=model, size=size, steps=steps, editor=editor,
            propagator=propagator, chunk_size=chunk_size, device=device, dtype=dtype, save=save,
        )

    @bench.command("work")
    def work(
        frames: str = typer.Option("8,13,40", help="Comma-separated frame counts."),
        chunk_size: int = typer.Option(8, help="Chunk size B."),
        steps: int = typer.Option(2, help="Steps."),
        save: Optional[str] = typer.Option(None, help="Also write the results as JSON to this file."),
    ) -> None:
        """UNet image-forwards per frame per step for each propagator, counted by the code (tiny model)."""
        from .work import run_work_suite

        run_work_suite([int(n) for n in frames.split(",")], chunk_size=chunk_size, steps=steps, save=save)

    @bench.command("unet")
    def unet(
        model: str = typer.Option("random:sd21", help="Model spec."),
        size: str = typer.Option("512x512", help="Image size WxH."),
        frames: int = typer.Option(8, help="Frames per chunk (B); keyframes K = 1 per chunk."),
        chunks: int = typer.Option(2, help="Chunks (so K = chunks)."),
        repeats: int = typer.Option(3, help="Timed repetitions (after one warm-up)."),
        device: str = typer.Option("auto", help="Device."),
        dtype: str = typer.Option("auto", help="dtype."),
        engines: Optional[str] = typer.Option(None, help="Comma-separated engines to compare with eager (default: every one that runs here)."),
        engine_cache: Optional[str] = typer.Option(None, help="Engine cache folder (default: a new temporary one, so builds are timed)."),
        save: Optional[str] = typer.Option(None, help="Also write the results as JSON to this file."),
    ) -> None:
        """Time the UNet passes (plain, keyframe, propagation) through every engine, as ratios to eager."""
        from .unet import run_unet_suite

        run_unet_suite(model=model, size=size, frames=frames, chunks=chunks, repeats=repeats, device=device,
                       dtype=dtype, save=save, engines=engines, engine_cache=engine_cache)

    @bench.command("consistency")
    def consistency(
        seeds: str = typer.Option("0,1,2", help="Comma-separated model seeds."),
        frames: int = typer.Option(12, help="Frames of the translating clip."),
        size: str = typer.Option("128x128", help="Working size WxH (the clip moves 8 px per frame)."),
        steps: int = typer.Option(10, help="Sampling (and inversion) steps."),
        editor: str = typer.Option("pnp", help="Editor."),
        chunk_size: int = typer.Option(4, help="Chunk size B."),
        save: Optional[str] = typer.Option(None, help="Also write the results as JSON to this file."),
    ) -> None:
        """Warp error of tokenflow against none on a translating pattern (consistency test model, CPU)."""
        from .consistency import run_consistency_suite

        run_consistency_suite(
            [int(s) for s in seeds.split(",")], frames=frames, size=size, steps=steps, editor=editor,
            chunk_size=chunk_size, save=save,
        )
