"""``vedit plugins``: list every plugin, its kind and package, and whether it can run here."""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from .. import plugins
from .output import err_console, out_console, user_errors


def add_to(app: typer.Typer) -> None:
    """Add ``vedit plugins`` to ``app``."""

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
                    cells = (
                        kind,
                        name,
                        item.version,
                        item.package,
                        item.plugin,
                        "yes" if not reason else f"no: {reason}",
                    )
                    table.add_row(*(Text(str(cell)) for cell in cells))
            out_console.print(table)
            for failure in plugins.failures():
                err_console.print(
                    f"vedit: plugin {failure.plugin!r} ({failure.package}) is not loaded: {failure.error}",
                    markup=False,
                    highlight=False,
                )
