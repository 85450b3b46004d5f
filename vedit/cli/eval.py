"""``vedit eval``: measure an edit against its source (warp error, CLIP scores)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..config import EVAL
from ..errors import ConfigError
from .options import config_from_flags, option_help, takes_run_options
from .output import out_console, reporting, user_errors


def add_to(app: typer.Typer) -> None:
    """Add ``vedit eval`` to ``app``."""

    @app.command("eval")
    @takes_run_options(EVAL, plugin_kinds=("flow_backend",))
    def eval_command(
        edited: Path = typer.Argument(..., help="The edited video file, or folder of numbered frames."),
        source: Path = typer.Option(
            ..., "--source", "-s", help=option_help("The clip it was edited from; optical flow is computed on it.")
        ),
        prompt: Optional[str] = typer.Option(
            None, "--prompt", "-p", help=option_help("The edit's prompt, for the CLIP text score.")
        ),
        json_path: Optional[Path] = typer.Option(
            None, "--json", help=option_help("Also write the report, with per-frame figures, to this JSON file.")
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help=option_help("Replace an existing --json file that is not a vedit report.")
        ),
        options: dict = None,  # type: ignore[assignment]  (--flow, --clip and the flow backends' options)
        source_frames: Optional[str] = typer.Option(
            None,
            help=option_help(
                "The source frames the edit was made from, START:STOP:STEP (STOP exclusive).",
                default="from the first, as many as the edit has",
            ),
        ),
        keep_timestamps: bool = typer.Option(
            False,
            "--keep-timestamps",
            help=option_help(
                "The edit was made with 'vedit run --keep-timestamps': read both clips frame by frame at their own "
                "times, not at the source's average rate."
            ),
        ),
        config: Optional[Path] = typer.Option(
            None,
            "--config",
            help=option_help("Read --flow, --clip and --keep-timestamps defaults from this vedit.toml."),
        ),
    ) -> None:
        """Measure an edit: warp error along the source's optical flow and CLIP scores, beside the source's own."""
        from ..io.frames import FrameRange
        from ..quality.evaluate import check_report_path, evaluate, write_json

        with user_errors():
            run_config = config_from_flags(
                config, **options, keep_timestamps=keep_timestamps or None, overwrite=overwrite or None
            )
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
                    config=run_config,
                )  # fmt: skip
            if target is not None:
                write_json(report, target, overwrite=run_config.overwrite)
        out_console.print(report.renderable())
