"""What the commands' options share: help text with its default (:func:`option_help`), the run options of a
command read from its flags, vedit.toml and the defaults (:func:`config_from_flags`), and the Typer group that ends
a usage error in one line (:class:`CommandGroup`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
import typer.core
from rich.markup import escape as rich_escape

from ..config import RunConfig, command_line, load_config
from ..errors import ConfigError
from .output import fail, unfolded, warn

CACHE_DIR_DEFAULT = "$VEDIT_CACHE_DIR or ~/.cache/vedit"  # --cache-dir's default, as help shows it
CACHE_DIR_HELP = "Cache folder: inversions, checkpoints and, unless --engine-cache, built engines."
ENGINE_CACHE_DEFAULT = "engines in the cache folder"
INVERSION_STEPS_HELP = (
    "DDIM inversion steps. Their schedule must pass through every timestep of the --steps one: with 50 steps, "
    "50, 100, 200, 250, 500 and 1000 do (a multiple of --steps alone is not enough); an error names the nearest "
    "multiple that does."
)


def warn_ignored_seed(seed: int | None, work: str) -> None:
    """``--seed`` of a command that draws nothing at random: it used to choose a built model's weights."""
    if seed is not None:
        warn(
            f"--seed is ignored: {work} draws nothing at random, and a built model's weights come from "
            f"its spec (--model tiny@{seed})"
        )


def _options(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def config_from_flags(config_path: Optional[Path], **values) -> RunConfig:
    return load_config(config_path, **_options(**values))


def option_help(text: str, key: str | None = None, default: str | None = None) -> str:
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


class CommandGroup(typer.core.TyperGroup):
    """Ends a usage error (bad flag, bad value) in one line and exit code 4, like every other bad option;
    runs every command under :func:`vedit.config.command_line`, with output to a pipe or file unfolded."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            with command_line(), unfolded():  # flags, not the Python API's keywords; whole lines in a pipe
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
