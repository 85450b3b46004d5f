"""The ``vedit`` command line: :func:`create_app` builds the Typer app (plugins add commands through a hook),
:func:`main` runs it."""

from .app import create_app, main

__all__ = ["create_app", "main"]
