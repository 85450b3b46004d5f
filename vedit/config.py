"""Run options: their defaults, the ``vedit.toml`` file that overrides them, and validation.

Precedence, lowest first: the defaults below, ``vedit.toml`` in the working directory (or the
file given with ``--config``), then command-line flags. A key in ``vedit.toml`` has the same
name as its flag (``negative-prompt``; ``negative_prompt`` is accepted too).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import typing
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import tomllib

from .errors import ConfigError

CONFIG_FILENAME = "vedit.toml"
DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"
MAX_SEED = 2**63 - 1  # the largest seed torch.manual_seed takes that is also a signed 64-bit number


@dataclass
class RunConfig:
    """Every option of ``vedit run``; the Python API takes the same names as keyword arguments."""

    prompt: str | None = None
    source_prompt: str = ""
    negative_prompt: str = ""
    editor: str = "pnp"
    propagator: str = "tokenflow"
    engine: str = "auto"
    engine_cache: str | None = None  # None: "engines" in the cache folder (cache_dir), beside the inversions
    nn_backend: str = "auto"
    model: str = DEFAULT_MODEL
    revision: str | None = None
    steps: int = 50
    inversion_steps: int = 50
    strength: float = 0.8
    start: float = 0.9
    guidance: float = 7.5
    pnp_f_t: float = 0.8
    pnp_attn_t: float = 0.5
    chunk_size: int = 8
    max_joint_keyframes: int = 32  # tokenflow: keyframes each keyframe attends to; all of them when K ≤ this
    keyframes: str | None = None
    checkpoint_every: int = 5  # denoising steps between checkpoints a killed run resumes from; 0: none
    inversion: str | None = None
    seed: int = 0
    size: str | None = None
    frames: str | None = None
    max_frames: int | None = None
    fps: str | None = None
    output_size: str = "source"
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | str = "auto"  # "auto": chosen from free device memory (8 on the CPU)
    postprocess: str | None = None
    flow: str = "dis"  # optical-flow backend for --eval and flow-guided post-processing
    clip: str = "openai/clip-vit-large-patch14"  # CLIP model for --eval's text and frame scores (local only)
    eval: bool = False
    cache_dir: str | None = None
    no_cache: bool = False
    cache_max_gb: float = 20.0
    allow_short: bool = False
    force_inversion: bool = False
    keep_timestamps: bool = False
    overwrite: bool = False  # replace an existing output that vedit did not write

    # Not an option (no annotation: not a field, so in no key, digest or file): the options the
    # user set, in vedit.toml, as flags or as keywords, so that a check can tell a value asked
    # for from the same value by default. load_config and the Python API fill it in.
    given = frozenset[str]()

    def replace(self, **changes: Any) -> RunConfig:
        copy = dataclasses.replace(self, **changes)
        copy.given = self.given
        return copy

    def giving(self, keys: Iterable[str]) -> RunConfig:
        """A copy that records ``keys`` (option names) as set by the user too."""
        copy = self.replace()
        copy.given = self.given | {key.replace("-", "_") for key in keys}
        return copy


# Inclusive bounds; None means unbounded on that side.
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "steps": (1, 1000),
    "inversion_steps": (1, 1000),
    "strength": (0.0, 1.0),
    "start": (0.0, 1.0),
    "pnp_f_t": (0.0, 1.0),
    "pnp_attn_t": (0.0, 1.0),
    "chunk_size": (1, 1024),
    "max_joint_keyframes": (1, None),
    "checkpoint_every": (0, 1000),
    "batch_size": (1, 4096),
    "max_frames": (1, None),
    "guidance": (0.0, 100.0),
    "seed": (0, MAX_SEED),
    "cache_max_gb": (0.0, None),
}


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


def field_types() -> dict[str, Any]:
    """Every run option's name (as in :class:`RunConfig`) mapped to its type annotation."""
    hints = typing.get_type_hints(RunConfig)
    return {f.name: hints[f.name] for f in fields(RunConfig)}


def _accepts(annotation: Any, value: Any) -> bool:
    allowed = typing.get_args(annotation) or (annotation,)
    for kind in allowed:
        if kind is type(None) and value is None:
            return True
        if kind is bool and isinstance(value, bool):
            return True
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if kind is str and isinstance(value, str):
            return True
    return False


def _type_label(annotation: Any) -> str:
    names = [
        getattr(a, "__name__", str(a)) for a in (typing.get_args(annotation) or (annotation,)) if a is not type(None)
    ]
    return " or ".join(names)


def _number(value: float | None) -> str:
    """A bound as a person writes it: 1, 0.5, 1000 (never 1e+03)."""
    if value is None or isinstance(value, int):
        return str(value)
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _range_text(low: float | None, high: float | None) -> str:
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
        bounds = f" ({_range_text(low, high)})" if low is not None or high is not None else ""
        raise ConfigError(f"{where} must be a finite number{bounds}, got {_number(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{where} must be {_range_text(low, high)}, got {_number(value)}")
    return value


def check_numbers(config: RunConfig) -> RunConfig:
    """``config`` when every number in it is finite and in range (a RunConfig built by hand has
    not been through :func:`validate`); the same one-line errors otherwise."""
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            check_number(value, option_label(f.name), *_RANGES.get(f.name, (None, None)))
    return config


def _batch_size(text: str, where: str) -> int | str:
    """``auto`` or a whole number given as text (as the command line gives it)."""
    text = text.strip().lower()
    if text == "auto":
        return "auto"
    if text.isdigit():
        return int(text)
    raise ConfigError(f"{where} must be auto or a whole number, got {text!r}")


def validate(values: dict[str, Any], origin: str | None = None) -> dict[str, Any]:
    """Normalise keys and check names, types and ranges; errors name the offending key.

    With ``origin`` (a file name) errors name the key as written in that file; without it the
    values came from the command line or the Python API and errors name the flag (``--max-frames``)
    or the keyword (``max_frames``), as :func:`option_label` does.
    """
    types = field_types()
    clean: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        where = f"{origin}: option {raw_key!r}" if origin else option_label(key)
        if key not in types:
            known = ", ".join(sorted(k.replace("_", "-") for k in types))
            prefix = f"{origin}: " if origin else ""
            raise ConfigError(f"{prefix}unknown option {raw_key!r} (known: {known})")
        if not _accepts(types[key], value):
            raise ConfigError(f"{where} must be {_type_label(types[key])}, got {type(value).__name__} {value!r}")
        if key == "batch_size" and isinstance(value, str):
            value = _batch_size(value, where)
        if types[key] is float or float in typing.get_args(types[key]):
            value = float(value) if value is not None else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            check_number(value, where, *_RANGES.get(key, (None, None)))
        clean[key] = value
    return clean


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file's tables; one-line ConfigErrors (``what`` names the kind of file) when it is
    missing, unreadable or not TOML."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise ConfigError(f"{what} {path} cannot be read: {error.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{what} {path} is not valid TOML: {error}") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The ``[run]`` table of a vedit.toml file, validated."""
    path = Path(path)
    data = read_toml(path)
    unknown = set(data) - {"run"}
    if unknown:
        raise ConfigError(f"{path}: unknown table or key {sorted(unknown)[0]!r} (options go under [run])")
    run = data.get("run", {})
    if not isinstance(run, dict):
        raise ConfigError(f"{path}: 'run' must be a table")
    return validate(run, str(path))


def load_config(config_path: str | Path | None = None, cwd: Path | None = None, **overrides: Any) -> RunConfig:
    """Defaults, then vedit.toml (``config_path`` or the working directory's), then ``overrides``.

    Overrides whose value is None are treated as not given.
    """
    values: dict[str, Any] = {}
    if config_path is not None:
        values.update(read_config_file(config_path))
    else:
        local = (cwd or Path.cwd()) / CONFIG_FILENAME
        if local.is_file():
            values.update(read_config_file(local))
    # A file that restates a default (a copy of the defaults, as the repository's vedit.toml is)
    # asks for nothing; a flag or keyword always asks.
    defaults = RunConfig()
    stated = {key for key, value in values.items() if value != getattr(defaults, key)}
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(validate(given))
    return RunConfig(**values).giving(stated | set(given))


def defaults_as_toml() -> str:
    """The defaults written as a vedit.toml ``[run]`` table (options without a default are left out)."""
    lines = ["[run]"]
    for f in fields(RunConfig):
        value = f.default
        if value is None or value is dataclasses.MISSING:
            continue
        key = f.name.replace("_", "-")
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value!r}")
    return "\n".join(lines) + "\n"


__all__ = [
    "RunConfig",
    "field_types",
    "load_config",
    "read_config_file",
    "validate",
    "flag_name",
    "defaults_as_toml",
    "check_number",
    "check_numbers",
    "command_line",
    "option_label",
    "option_value",
]
