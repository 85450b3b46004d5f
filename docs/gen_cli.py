"""Write docs/reference/cli.md from the command line itself, so the reference cannot drift from the flags.

    python docs/gen_cli.py           # write the page
    python docs/gen_cli.py --check   # exit 1 when the committed page is not what the code gives now

Every command and subcommand of ``vedit.cli.create_app()`` that vedit itself ships (third-party plugins' commands
and options are left out, so the page is the same wherever it is made): its usage, help, arguments and options with
their help and defaults, as ``--help`` shows them. Nothing depends on the terminal: no line is wrapped.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PAGE = Path(__file__).resolve().parent / "reference" / "cli.md"
VEDITS_PACKAGES = ("vedit", "vedit_plugins", "vedit_engines", "vedit_bench")
_DEFAULT = re.compile(r"\s*\[default: (?P<value>.*)\]\s*$")
_REQUIRED = re.compile(r"\s*\[required\]\s*$")
# The value names --help shows differ between Typer versions (<int>, INTEGER): one spelling here.
_VALUE_NAMES = {
    "str": "TEXT",
    "text": "TEXT",
    "int": "INTEGER",
    "integer": "INTEGER",
    "float": "FLOAT",
    "path": "PATH",
    "file": "FILE",
    "directory": "DIRECTORY",
}
HEADER = """\
# Command line

<!-- Generated from vedit.cli.create_app() by docs/gen_cli.py: change the help in the code, then run
     `python docs/gen_cli.py`. The tests fail when this page is not what the code gives. -->

Every command of `vedit`, with what `--help` says of it. The options of `vedit run` and what each one does
are explained at length in [Options](options.md); exit codes are in [Exit codes](exit-codes.md).
"""


def _plain(markup: str) -> str:
    """Help text as the user reads it: vedit's help is rich markup (``\\[`` for a literal bracket)."""
    from rich.text import Text

    return " ".join(Text.from_markup(markup).plain.split())


def _cell(text: str) -> str:
    """Text inside a Markdown table cell, shown literally."""
    text = text.replace("\\", "\\\\").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([`*_\[\]|])", r"\\\1", text)


def _is_vedits(command: Any) -> bool:
    """Whether vedit ships this command (its own code, or a built-in plugin's), not a third-party plugin."""
    callback = getattr(command, "callback", None)
    module = getattr(callback, "__module__", "") or ""
    if module.split(".")[0] in VEDITS_PACKAGES:
        return True
    return any(_is_vedits(sub) for sub in getattr(command, "commands", {}).values())


def _foreign_flags() -> set[str]:
    """The flags of the options of plugins vedit does not ship: left out of the page as their commands are."""
    from vedit.plugins.manager import BUILT_IN_PACKAGE
    from vedit.plugins.options import declared

    return {
        flag
        for owner in declared().values()
        if owner.package != BUILT_IN_PACKAGE
        for spec in owner.options.specs()
        for flag in owner.flags(spec)
    }


def _subcommands(command: Any, ctx: Any) -> Iterator[tuple[str, Any, Any]]:
    for name in command.list_commands(ctx) if hasattr(command, "list_commands") else ():
        sub = command.get_command(ctx, name)
        if sub is None or sub.hidden or not _is_vedits(sub):
            continue
        yield name, sub, ctx.__class__(sub, info_name=name, parent=ctx)


def _usage(command: Any, ctx: Any) -> str:
    pieces = [ctx.command_path]
    if any(p.param_type_name == "option" and not p.hidden for p in command.params):
        pieces.append("[OPTIONS]")
    for param in command.params:
        if param.param_type_name == "argument":
            name = param.name.upper() + ("..." if param.nargs == -1 else "")
            pieces.append(name if param.required else f"[{name}]")
    if hasattr(command, "list_commands"):
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


def _value_name(param: Any, ctx: Any) -> str:
    if getattr(param, "is_flag", False):
        return ""
    shown = param.get_help_record(ctx)[0].split()[-1]
    bare = shown.strip("<>").lower()
    return _VALUE_NAMES.get(bare, shown.strip("<>").upper())


def _parameter_row(param: Any, ctx: Any) -> str:
    """One table row: names, value, default, help, as --help gives them."""
    help_text = _plain(param.help or "")
    default = ""
    if match := _DEFAULT.search(help_text):  # vedit's own help states its default
        help_text, default = help_text[: match.start()], match["value"]
    elif getattr(param, "show_default", False):  # else the default --help adds
        record = _REQUIRED.sub("", param.get_help_record(ctx)[1] or "")
        if match := _DEFAULT.search(record):
            default = match["value"]
    if param.param_type_name == "argument":
        names = f"`{param.name.upper()}`"
    else:
        names = ", ".join(f"`{name}`" for name in param.opts)
        if param.secondary_opts:
            names += " / " + ", ".join(f"`{name}`" for name in param.secondary_opts)
    if param.required:
        default = "(required)"
    value = _value_name(param, ctx)
    return f"| {names} | {value} | {_cell(default)} | {_cell(help_text)} |"


def _command_section(title: str, command: Any, ctx: Any, depth: int) -> list[str]:
    lines = [f"{'#' * depth} {title}", ""]
    if command.help:
        lines += [_plain(paragraph) for paragraph in inspect.cleandoc(command.help).split("\n\n")]
        lines.append("")
    lines += ["```", _usage(command, ctx), "```", ""]
    foreign = _foreign_flags()
    params = [p for p in command.params if not getattr(p, "hidden", False) and not foreign & set(p.opts)]
    if params:
        lines += ["| argument or option | value | default | |", "|---|---|---|---|"]
        lines += [_parameter_row(p, ctx) for p in params]
        lines.append("")
    children = list(_subcommands(command, ctx))
    if children:
        lines += ["| command | |", "|---|---|"]
        for _name, sub, sub_ctx in children:
            anchor = sub_ctx.command_path.replace(" ", "-")
            summary = _plain(sub.get_short_help_str(limit=10_000))
            lines.append(f"| [`{sub_ctx.command_path}`](#{anchor}) | {_cell(summary)} |")
        lines.append("")
        child_depth = depth if ctx.parent is None else depth + 1  # commands beside the root, subcommands below
        for _name, sub, sub_ctx in children:
            lines += _command_section(sub_ctx.command_path, sub, sub_ctx, child_depth)
    return lines


def render() -> str:
    """The page, from the app as vedit builds it."""
    import typer

    from vedit.cli import create_app

    command = typer.main.get_command(create_app())
    ctx = command.context_class(command, info_name="vedit")
    lines = [HEADER] + _command_section("vedit", command, ctx, 2) + _plugin_options()
    return "\n".join(lines).rstrip("\n") + "\n"


def _plugin_options() -> list[str]:
    """The options vedit's own plugins declare, as ``vedit plugins --options`` lists them."""
    from vedit.cli.plugins import OPTION_COLUMNS, option_rows
    from vedit.plugins.manager import BUILT_IN_PACKAGE

    lines = [
        "## Plugin options",
        "",
        "The options vedit's own plugins declare, as `vedit plugins --options` lists them (with those of every "
        "installed plugin). Each is a flag of `vedit run` and, where the command runs the plugin, of `vedit invert`, "
        "`vedit engines build` and `vedit eval`; in `vedit.toml` and job files it is a key of the plugin's "
        "`[run.<plugin>]` table, or its flag's name under `[run]`.",
        "",
        "| " + " | ".join(OPTION_COLUMNS) + " |",
        "|" + "---|" * len(OPTION_COLUMNS),
    ]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in option_rows([BUILT_IN_PACKAGE])]
    return lines + [""]


def main(argv: list[str] | None = None, page: Path = PAGE) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the page is not what the code gives now")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if page.is_file() and page.read_text() == text:
            return 0
        print(f"{page} is not what the command line gives now: run 'python docs/gen_cli.py'", file=sys.stderr)
        return 1
    page.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
