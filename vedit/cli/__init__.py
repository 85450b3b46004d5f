"""The ``vedit`` command line: :func:`create_app` builds the Typer app, each command module adding its
command(s) and plugins theirs through a hook; :func:`main` runs it.

How the commands speak (consoles, errors, warnings, progress) is :mod:`vedit.cli.output`; what their options
share is :mod:`vedit.cli.options`. The names the former ``vedit/cli.py`` module offered are re-exported here,
so ``from vedit.cli import user_errors`` keeps working for plugin commands."""

from __future__ import annotations

import signal

import typer

from .. import __version__
from ..plugins.manager import register_commands
from . import batch, cache, engines, eval, invert, plugins, run
from .cache import CHECKPOINT_DAYS
from .options import INVERSION_STEPS_HELP, CommandGroup
from .output import (
    PROGRESS_INTERVAL,
    UNFOLDED_WIDTH,
    PlainReporter,
    QuietReporter,
    RichReporter,
    err_console,
    fail,
    out_console,
    reporting,
    user_errors,
    warn,
)


def create_app() -> typer.Typer:
    app = typer.Typer(
        name="vedit",
        cls=CommandGroup,
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
        version: bool = typer.Option(
            False, "--version", callback=version_callback, is_eager=True, help="Show the version."
        ),
    ) -> None:
        """vedit: prompt-driven, temporally consistent video editing."""

    # 'vedit --help' lists them in this order, the groups (engines, cache) after the single commands
    for module in (run, invert, eval, engines, cache, plugins, batch):
        module.add_to(app)
    register_commands(app)
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


__all__ = [
    "CHECKPOINT_DAYS",
    "INVERSION_STEPS_HELP",
    "PROGRESS_INTERVAL",
    "UNFOLDED_WIDTH",
    "PlainReporter",
    "QuietReporter",
    "RichReporter",
    "create_app",
    "err_console",
    "fail",
    "main",
    "out_console",
    "reporting",
    "user_errors",
    "warn",
]
