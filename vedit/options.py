"""Options: one schema, declared where the setting belongs, from which every surface is derived.

A plugin (an editor, propagator, engine, NN or flow backend, post-processor, …) declares its settings
as a nested ``Options`` class, the way ``llm`` plugins do::

    import vedit

    class Smooth:
        name = "smooth"

        class Options(vedit.Options):
            strength: float = vedit.option(0.5, help="How strongly to smooth.", min=0.0, max=1.0)
            verbose: bool = vedit.option(False, help="Print per-step figures.", affects_output=False)
            mask: str | None = vedit.option(None, help="A mask image.", path=True)

From that one declaration vedit derives the command line's flags (``--smooth-strength``, in a help
panel of their own), the ``[run.smooth]`` table of ``vedit.toml`` and job files, the Python API's
``options={"smooth": {"strength": 0.7}}``, the one-line errors for values out of range, what enters
cache keys and batch digests (``affects_output``), which values are paths made absolute relative to
the file that names them (``path``), and ``vedit plugins --options``.

Types: ``bool``, ``int``, ``float``, ``str``, any of them ``| None``, and ``int | str`` (a number or
a word such as ``auto``). Every number passes :func:`check_number`: NaN and ±inf are
refused wherever they come from. vedit's own settings may also be ``tuple[str, ...]`` (a list: a
repeatable flag, a list in a file), which a plugin's options cannot be yet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import ConfigError


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


# Whether messages speak to a user of the command line (set by the CLI) or of the Python API.
_COMMAND_LINE: ContextVar[bool] = ContextVar("vedit_command_line", default=False)


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """Within it, :func:`option_label` names options as flags (``vedit``'s commands run in it)."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def option_label(key: str) -> str:
    """An option as a message names it: the flag (``--inversion-steps``) under the command line,
    the keyword (``inversion_steps``) under the Python API, where a flag means nothing."""
    key = key.removeprefix("--").replace("-", "_")
    return flag_name(key) if _COMMAND_LINE.get() else key


def option_value(key: str, value: Any, *, placeholder: bool = False) -> str:
    """An option with a value as the user would write it: ``--steps 20`` (a switch alone:
    ``--allow-short``) under the command line, ``steps=20``, ``size='64x48'`` or
    ``allow_short=True`` under the Python API. A ``placeholder`` (``TEXT``, ``PATH``) is never quoted."""
    if _COMMAND_LINE.get():
        return option_label(key) if value is True else f"{option_label(key)} {value}"
    return f"{option_label(key)}={value if placeholder else repr(value)}"


def _number(value: float | None) -> str:
    """A bound as a person writes it: 1, 0.5, 1000 (never 1e+03)."""
    if value is None or isinstance(value, int):
        return str(value)
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def range_text(low: float | None, high: float | None) -> str:
    """An inclusive range as a message says it: ``between 0 and 1``, ``1 or more``."""
    if low is None and high is None:
        return "any number"
    if high is None:
        return f"{_number(low)} or more"
    if low is None:
        return f"{_number(high)} or less"
    return f"between {_number(low)} and {_number(high)}"


def check_number(value: float, where: str, low: float | None = None, high: float | None = None) -> float:
    """``value`` when it is finite and within the inclusive bounds (None: unbounded), else a
    one-line ConfigError naming ``where`` (a flag, keyword or file key), the range and the value.

    Every number a user gives passes here. NaN fails no comparison, so a range check alone lets
    it through (a NaN guidance writes black frames), and no option means anything at ±inf.
    """
    if isinstance(value, float) and not math.isfinite(value):
        bounds = f" ({range_text(low, high)})" if low is not None or high is not None else ""
        raise ConfigError(f"{where} must be a finite number{bounds}, got {_number(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{where} must be {range_text(low, high)}, got {_number(value)}")
    return value


_MISSING: Any = object()
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_SCALARS = (bool, int, float, str)


@dataclass(frozen=True)
class OptionSpec:
    """One option: its default, what it means and the values it takes (made by :func:`option`)."""

    default: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    affects_output: bool = True  # enters cache keys and batch's up-to-date digest
    path: bool = False  # a relative value is relative to the file that names it
    aliases: tuple[str, ...] = ()  # more flag names (without "--"), also accepted as keys and keywords
    name: str = ""  # the attribute's name, set when its Options class is made
    kinds: tuple[type, ...] = ()  # the annotation's types (NoneType included when it is optional)

    @property
    def optional(self) -> bool:
        return type(None) in self.kinds

    @property
    def type_label(self) -> str:
        """The type as help and errors name it: ``float``, ``int or str`` (None is allowed or not, unsaid)."""
        if tuple in self.kinds:
            return "a list of str"
        return " or ".join(kind.__name__ for kind in self.kinds if kind is not type(None))

    def check(self, value: Any, where: str) -> Any:
        """``value`` converted to the option's type (an int where a float is wanted) and checked
        against its range and choices; a one-line :class:`ConfigError` naming ``where`` otherwise."""
        if value is None:
            if self.optional:
                return None
            raise ConfigError(f"{where} must be {self.type_label}, got none")
        if tuple in self.kinds:
            return _words(value, where)
        if isinstance(value, bool):
            if bool not in self.kinds:
                raise ConfigError(f"{where} must be {self.type_label}, got {value!r}")
        elif isinstance(value, int) and int in self.kinds:
            pass
        elif isinstance(value, (int, float)) and float in self.kinds:
            value = float(value)
        elif isinstance(value, str) and str in self.kinds:
            if int in self.kinds and self.choices is not None:  # a whole number, or one of a few words
                return self._number_or_word(value, where)
        else:
            raise ConfigError(f"{where} must be {self.type_label}, got {type(value).__name__} {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            check_number(value, where, self.min, self.max)
        if self.choices is not None and value not in self.choices and not (int in self.kinds and str in self.kinds):
            allowed = ", ".join(str(choice) for choice in self.choices)
            raise ConfigError(f"{where} must be one of {allowed}, got {value!r}")
        return value

    def _number_or_word(self, text: str, where: str) -> Any:
        word = text.strip().lower()
        if word.isdigit():
            return self.check(int(word), where)
        if word not in (self.choices or ()):
            words = " or ".join(str(choice) for choice in self.choices or ())
            raise ConfigError(f"{where} must be {words} or a whole number, got {text.strip()!r}")
        return word

    def parse(self, text: str, where: str) -> Any:
        """The value of ``text`` as a person types it on a command line or in ``name:key=value``, checked."""
        return self.check(self.convert(text, where), where)

    def convert(self, text: str, where: str) -> Any:
        """``text`` as a value of the option's type, not yet checked against its range or choices."""
        word = text.strip()
        if tuple in self.kinds:
            return (text,)
        if self.optional and word.lower() in ("", "none"):
            return None
        if bool in self.kinds:
            if word.lower() in _TRUE:
                return True
            if word.lower() in _FALSE:
                return False
            raise ConfigError(f"{where} must be true or false, got {text!r}")
        if int in self.kinds:
            try:
                return int(word)
            except ValueError:
                if str not in self.kinds and float not in self.kinds:
                    raise ConfigError(f"{where} must be an integer, got {text!r}") from None
        if float in self.kinds:
            try:
                return float(word)
            except ValueError:
                if str not in self.kinds:
                    raise ConfigError(f"{where} must be a number, got {text!r}") from None
        return text


def _words(value: Any, where: str) -> tuple[str, ...]:
    """A list option's value as a tuple: one word is a list of one (``lora = "a.safetensors"`` in a file)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise ConfigError(f"{where} must be a list of str, got {type(value).__name__} {value!r}")
    if any(not item.strip() for item in items):
        raise ConfigError(f"{where} must not hold an empty item, got {list(items)!r}")
    return tuple(items)


def option(
    default: Any = _MISSING,
    *,
    help: str = "",  # noqa: A002 (the word a user of this API expects)
    min: float | None = None,  # noqa: A002
    max: float | None = None,  # noqa: A002
    choices: Iterable[Any] | None = None,
    affects_output: bool = True,
    path: bool = False,
    aliases: Iterable[str] = (),
) -> Any:
    """Declare an option of a :class:`Options` class: its default (required), its help text, its
    inclusive range (numbers) or ``choices``, whether it changes what a run produces
    (``affects_output``: it then enters the cache keys and batch's digest; say False for settings
    such as verbosity), whether it is a ``path`` (made absolute relative to the file that names it)
    and ``aliases`` (more flag names, without ``--``)."""
    return OptionSpec(
        default=default, help=help, min=min, max=max, choices=None if choices is None else tuple(choices),
        affects_output=affects_output, path=path, aliases=tuple(aliases),
    )  # fmt: skip


def annotation_kinds(annotation: Any, where: str) -> tuple[type, ...]:
    """The scalar types an annotation allows (``float | None`` → (float, NoneType)); ``(tuple,)`` for a list of
    words (``tuple[str, ...]``)."""
    origin = typing.get_origin(annotation)
    if origin is tuple and typing.get_args(annotation) == (str, ...):
        return (tuple,)
    args = typing.get_args(annotation) if origin in (typing.Union, types.UnionType) else (annotation,)
    kinds = tuple(arg for arg in args if arg in _SCALARS or arg is type(None))
    if len(kinds) != len(args) or not any(kind in _SCALARS for kind in kinds):
        allowed = "bool, int, float, str or int | str (any of them | None), or tuple[str, ...]"
        raise TypeError(f"{where}: an option's type is {allowed}, not {annotation}")
    return kinds


class Options:
    """The base of every options class: subclass it with annotated fields whose defaults are
    :func:`option` (or plain values). Instances are immutable: :meth:`replace` makes a changed copy.

    ``Options(**values)`` checks each value (errors name the keyword); the host builds the instance a
    plugin receives from flags, files and keywords, with errors naming what the user wrote.
    """

    __options__: ClassVar[dict[str, OptionSpec]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        specs: dict[str, OptionSpec] = {}
        for base in reversed(cls.__mro__[1:]):
            specs.update(getattr(base, "__options__", {}))
        hints = typing.get_type_hints(cls)
        for name in cls.__dict__.get("__annotations__", {}):
            hint = hints[name]
            if name.startswith("_") or typing.get_origin(hint) is ClassVar or hint is ClassVar:
                continue
            where = f"{cls.__qualname__}.{name}"
            value = cls.__dict__.get(name, _MISSING)
            spec = value if isinstance(value, OptionSpec) else OptionSpec(default=value)
            if spec.default is _MISSING:
                raise TypeError(f"{where}: an option needs a default (vedit.option(default, ...))")
            spec = dataclasses.replace(spec, name=name, kinds=annotation_kinds(hint, where))
            if tuple in spec.kinds:  # cache keys and paths of a plugin's options take one value each
                raise TypeError(f"{where}: a plugin's option cannot be a list (tuple[str, ...]) yet")
            try:
                spec = dataclasses.replace(spec, default=spec.check(spec.default, where))
            except ConfigError as error:
                raise TypeError(f"the default of {error}") from None
            specs[name] = spec
            setattr(cls, name, spec.default)  # the class attribute reads as the default
        cls.__options__ = specs

    def __init__(self, **values: Any) -> None:
        for name, declared in self.__options__.items():
            object.__setattr__(self, name, declared.default)
        for key, value in values.items():
            spec = self.__options__.get(key)
            if spec is None:
                known = ", ".join(self.__options__) or "none"
                raise ConfigError(f"{type(self).__qualname__} has no option {key!r} (known: {known})")
            object.__setattr__(self, key, spec.check(value, key))

    @classmethod
    def specs(cls) -> tuple[OptionSpec, ...]:
        """Every option of the class, in the order they were declared (inherited ones first)."""
        return tuple(cls.__options__.values())

    def replace(self, **changes: Any) -> Options:
        """A copy with ``changes`` applied (and checked)."""
        return type(self)(**{**self.as_dict(), **changes})

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__options__}

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self.as_dict().items())

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__qualname__} is immutable: use .replace({name}=...)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Options) and type(other) is type(self) and other.as_dict() == self.as_dict()

    def __hash__(self) -> int:
        return hash((type(self), tuple(self.as_dict().items())))

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={value!r}" for name, value in self.as_dict().items())
        return f"{type(self).__qualname__}({values})"


def options_class(plugin: Any) -> type[Options] | None:
    """The ``Options`` class a plugin object declares, if any."""
    declared = getattr(plugin, "Options", None)
    return declared if isinstance(declared, type) and issubclass(declared, Options) else None


__all__ = [
    "Options",
    "OptionSpec",
    "option",
    "options_class",
    "check_number",
    "command_line",
    "flag_name",
    "option_label",
    "option_value",
    "range_text",
]
