"""``vedit run``: edit a clip so that it shows a prompt (or, with --preview, only its keyframes)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..config import RUN
from ..errors import ConfigError
from .options import config_from_flags, option_help, takes_run_options
from .output import out_console, reporting, rows_table, summary_table, user_errors


def add_to(app: typer.Typer) -> None:
    """Add ``vedit run`` to ``app``."""

    @app.command()
    @takes_run_options(RUN)
    def run(
        clip: Path = typer.Argument(..., help="Input video file, or a folder of numbered images."),
        output: Optional[Path] = typer.Option(
            None,
            "--output",
            "-o",
            help=option_help(
                "Output .mp4/.mov/.mkv (H.264), .webm (VP9), .gif, or a folder for PNG frames.",
                default="<clip>-edited.mp4 here",
            ),
        ),
        overwrite: bool = typer.Option(
            False,
            "--overwrite",
            help=option_help(
                "Replace an existing output (video, frames, preview sheet, --eval report) that vedit did not write; "
                "what vedit wrote is replaced without it."
            ),
        ),
        options: dict = None,  # type: ignore[assignment]  (every run option's flag: takes_run_options)
        preview: bool = typer.Option(
            False,
            "--preview",
            help=option_help(
                "Edit only the keyframes (one per chunk) and write them beside their source frames as a contact sheet "
                "PNG (-o FILE.png, or <output>.preview.png); the summary says what the full run will cost."
            ),
        ),
        preview_frames: Optional[str] = typer.Option(
            None,
            help=option_help(
                "With --preview: the frames to preview, indices among the selected frames, e.g. 0,40,80.",
                default="one per chunk",
            ),
        ),
        config: Optional[Path] = typer.Option(
            None, "--config", help=option_help("Read defaults from this vedit.toml instead of ./vedit.toml.")
        ),
        quiet: bool = typer.Option(
            False, "--quiet", "-q", help=option_help("No progress or summary; warnings and errors only.")
        ),
        profile: bool = typer.Option(
            False,
            "--profile",
            help=option_help(
                "Time each component (read, encode, invert, keyframe and propagation passes, NN search, decode, write) "
                "with device synchronisation, and show it in the summary."
            ),
        ),
    ) -> None:
        """Edit CLIP so that it shows PROMPT."""
        from ..pipeline.edit import edit

        with user_errors():
            run_config = config_from_flags(config, **options, overwrite=overwrite or None)
            target = output or Path(f"{clip.stem if clip.suffix else clip.name}-edited.mp4")
            if preview_frames is not None and not preview:
                raise ConfigError("--preview-frames chooses the frames of a preview: add --preview")
            if preview:
                from ..pipeline.preview import preview as run_preview
                from ..pipeline.preview import preview_path, summary_rows

                sheet = target if target.suffix.lower() == ".png" else preview_path(target)
                with reporting(quiet) as reporter:
                    looked = run_preview(clip, sheet, run_config, reporter=reporter, preview_frames=preview_frames)
                if not quiet:
                    out_console.print(rows_table(summary_rows(looked)))
                return
            with reporting(quiet) as reporter:
                result = edit(clip, target, run_config, reporter=reporter, profile=profile)
        if not quiet:
            out_console.print(summary_table(result, run_config))
