"""``vedit plugins``: list every plugin, its kind and package, and whether it can run here; with
``--options``, every installed plugin's options."""

from __future__ import annotations

from collections.abc import Collection

import typer
from rich.table import Table
from rich.text import Text

from .. import plugins
from .output import err_console, out_console, user_errors


def add_to(app: typer.Typer) -> None:
    """Add ``vedit plugins`` to ``app``."""

    @app.command("plugins")
    def list_plugins(
        options: bool = typer.Option(
            False,
            "--options",
            help="List every installed plugin's options instead: flags, type, default, range and help.",
        ),
    ) -> None:
        """List every plugin: kind, name, version, source package and whether it can run here."""
        with user_errors():
            if options:
                out_console.print(options_table())
                return
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


OPTION_COLUMNS = ("plugin", "flags", "type", "default", "range", "output", "help")


def option_rows(packages: Collection[str] | None = None) -> list[tuple[str, ...]]:
    """Every installed plugin's options (of the plugins from ``packages`` only, when given), one row
    each: its kind and name, the flags, type, default, range or choices, whether it changes the output
    (cache keys, batch digests) and the help."""
    from ..cli.options import describe_range
    from ..plugins.options import declared

    rows = []
    for owner in declared().values():
        if packages is not None and owner.package not in packages:
            continue
        for spec in owner.options.specs():
            flags = owner.flags(spec)
            rows.append((
                f"{owner.kind.replace('_', ' ')} {owner.plugin}",
                ", ".join([*flags[1:], flags[0]]),
                spec.type_label + (" or none" if spec.optional else ""),
                "none" if spec.default is None else repr(spec.default),
                describe_range(spec) or "-",
                "changes" if spec.affects_output else "-",
                spec.help + (" (a path: relative to the file that names it)" if spec.path else ""),
            ))  # fmt: skip
    return rows


def options_table() -> Table:
    """:func:`option_rows` as a table."""
    table = Table(*OPTION_COLUMNS)
    for column in table.columns:
        column.overflow = "fold"
    for row in option_rows():
        table.add_row(*(Text(cell) for cell in row))
    return table
