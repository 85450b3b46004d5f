"""What the commands' options share: help text with its default (:func:`option_help`), the run options of a
command as flags made from their one declaration (:func:`takes_run_options`) and read with vedit.toml and the
defaults (:func:`config_from_flags`), and the Typer group that ends a usage error in one line
(:class:`CommandGroup`)."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
import typer.core
from rich.markup import escape as rich_escape

from ..config import INVERSION_STEPS_HELP, RunConfig, command_line, host_specs, load_config
from ..errors import ConfigError
from ..options import OptionSpec, range_text
from .output import fail, unfolded, warn


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


def _default_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value if value else '""'
    if value is not None and not isinstance(value, bool):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return None


def option_help(text: str, key: str | None = None, default: str | None = None) -> str:
    """Help text shown literally (rich would eat "[...]"), with the default taken from RunConfig."""
    if key is not None and default is None:
        default = _default_text(RunConfig.__dataclass_fields__[key].default)
    if default is not None:
        text = f"{text} [default: {default}]"
    return rich_escape(text)


# Generated parameters' names: the option's, prefixed so as never to meet a command's own (vedit run's CLIP
# argument and the --clip option).
PREFIX = "option__"


def _flag_type(spec: OptionSpec) -> Any:
    """The type Typer parses a flag as: a number or a word (``int | str``) comes as text, checked by the spec."""
    if tuple in spec.kinds:
        return Optional[list[str]]  # a repeatable flag
    scalars = [kind for kind in spec.kinds if kind is not type(None)]
    return Optional[scalars[0]] if len(scalars) == 1 else Optional[str]


def _host_parameter(name: str, command: str) -> inspect.Parameter | None:
    spec, where = host_specs()[name]
    if command not in where.commands:
        return None
    hidden = command in where.hidden_in
    help_text = option_help(spec.help, default=where.default_text or _default_text(spec.default))
    flags = list(where.flags) or ["--" + name.replace("_", "-")]
    if bool in spec.kinds:
        if where.negatable:
            flags = [f"{flags[0]}/--no-{flags[0].removeprefix('--')}"]
            info = typer.Option(None, *flags, help=help_text, hidden=hidden)
            return inspect.Parameter(
                PREFIX + name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=Optional[bool]
            )
        info = typer.Option(False, *flags, help=help_text, hidden=hidden)
        return inspect.Parameter(PREFIX + name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=bool)
    info = typer.Option(None, *flags, help=help_text, hidden=hidden)
    return inspect.Parameter(PREFIX + name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=_flag_type(spec))


def _plugin_parameters(kinds: tuple[str, ...] | None) -> list[inspect.Parameter]:
    """One flag per plugin option (``--pnp-f-t``, and its aliases) of the plugins of ``kinds`` (None: every
    kind), in a help panel per plugin."""
    from ..config import host_names
    from ..plugins.options import declared, flat_names, identifier

    names = flat_names(host_names())
    parameters = []
    for owner in declared().values():
        if kinds is not None and owner.kind not in kinds:
            continue
        panel = f"{owner.kind.replace('_', ' ')} {owner.plugin!r}"
        for spec in owner.options.specs():
            text = spec.help + (f" ({describe_range(spec)})" if describe_range(spec) else "")
            shown = ("on" if spec.default else "off") if isinstance(spec.default, bool) else _default_text(spec.default)
            help_text = option_help(text, default=shown)
            flags = [flag for flag in owner.flags(spec) if names.get(identifier(flag[2:])) == (owner, spec)]
            if not flags:
                continue
            # the parameter's name is the one messages name the option by: its first alias, if it has one
            name = identifier((flags[1] if len(flags) > 1 else flags[0])[2:])
            flags = [*flags[1:], flags[0]]  # help shows the name it is best known by first
            annotation = _flag_type(spec)
            if bool in spec.kinds:
                flags = [f"{flags[0]}/--no-{flags[0].removeprefix('--')}", *flags[1:]]
            info = typer.Option(None, *flags, help=help_text, rich_help_panel=panel)
            parameters.append(
                inspect.Parameter(PREFIX + name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)
            )
    return parameters


def describe_range(spec: OptionSpec) -> str:
    """An option's range or choices as help shows them; "" when any value of its type goes."""
    if spec.choices is not None and not (int in spec.kinds and str in spec.kinds):
        return "one of " + ", ".join(str(choice) for choice in spec.choices)
    return range_text(spec.min, spec.max) if spec.min is not None or spec.max is not None else ""


def takes_run_options(
    command: str, *, plugin_kinds: tuple[str, ...] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the flags of every run option ``command`` takes, made from their declarations
    (:func:`vedit.config.setting`), and of the options of the installed plugins of ``plugin_kinds``
    (None: every kind; ``()``: none).

    The command function has a parameter ``options`` where these flags go (in help, in that place); it
    receives them there as a dict of the values given (None and unset switches left out)."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(function, eval_str=True)
        generated = [p for name in host_specs() if (p := _host_parameter(name, command)) is not None]
        generated += _plugin_parameters(plugin_kinds)
        names = {p.name for p in generated}
        own: list[inspect.Parameter] = []
        for parameter in signature.parameters.values():
            if parameter.name == "options":
                own += generated
            else:
                own.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        @functools.wraps(function)
        def command_function(**values: Any) -> Any:
            given = {name.removeprefix(PREFIX): values.pop(name) for name in names}
            given = {name: value for name, value in given.items() if value is not None and value is not False}
            given = {name: value for name, value in given.items() if value != []}  # a repeatable flag not given
            return function(**values, options=given)

        command_function.__signature__ = signature.replace(parameters=own)  # type: ignore[attr-defined]
        command_function.__annotations__ = {p.name: p.annotation for p in own}
        del command_function.__wrapped__  # Typer must read the new signature, not the function's
        return command_function

    return decorate


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


__all__ = [
    "INVERSION_STEPS_HELP",
    "CommandGroup",
    "config_from_flags",
    "describe_range",
    "option_help",
    "takes_run_options",
    "warn_ignored_seed",
]
