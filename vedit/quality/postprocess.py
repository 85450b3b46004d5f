"""Post-processors: the plugin protocol, the ``--postprocess`` spec and the chain that runs them.

A post-processor is registered through the ``register_postprocessors`` hook. It has

- ``name`` (what ``--postprocess`` calls it) and, optionally, ``description``;
- optionally ``unavailable_reason() -> str | None`` (as every plugin kind);
- optionally ``options: dict[str, default]``: the settings it accepts and their defaults. A
  setting's type is its default's type (``int``, ``float``, ``bool`` or ``str``); the user's text
  is parsed to it;
- optionally ``check(settings, context)``: raise ``ValueError(message)`` for a setting out of
  range (the run stops in preflight with a one-line error naming the post-processor), or any
  :class:`~vedit.errors.VeditError`, which is passed on as it is;

and one of two ways to see frames:

1. stateless: ``process(frames, start) -> frames``. ``frames`` is a ``(b, H, W, 3)`` uint8 batch
   and ``start`` the index of its first frame in the clip; it returns the same number of frames,
   the same size. Such a post-processor takes no settings.
2. streaming: ``open(context, **settings) -> filter``, called once per run with the
   :class:`Context` and every setting (defaults filled in; a ``-`` in a key becomes ``_``). The
   filter has ``push(frames, start) -> frames``, which takes the next ``(b, H, W, 3)`` uint8 batch
   (``start``: how many frames it was given before) and returns the frames that are now ready, in
   order: none, some or many, possibly behind what was pushed; and ``finish() -> frames``, which
   returns the rest once the clip has ended. Over a run it must return exactly as many frames as
   it was given, each the size it came in. It may have ``close()``, called at the end of the run
   whether it succeeded or not. A filter that needs neighbouring frames keeps its own window:
   frames arrive a batch at a time, never the whole clip.

A spec (``--postprocess``, or ``postprocess = "..."`` in vedit.toml) lists post-processors to
apply in order, separated by commas, each ``name[:key=value[:key=value...]]``::

    deflicker-luma,deflicker-flow:strength=0.7

:func:`resolve` parses and checks one before any heavy work; :class:`Chain` runs the result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol

import numpy as np

from ..config import check_number, option_label
from ..errors import ConfigError, PluginError, VeditError
from ..options import options_class
from .flow import DEFAULT_FLOW

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass
class Context:
    """What a streaming post-processor knows about the run when it is opened.

        ``size`` is (width, height) of the frames it will be given and ``frames`` how many it will be
        given; ``flow`` names the run's optical-flow backend (``--flow``) and ``config`` holds the run's
    options (for a flow backend's own: ``flow_backend(name, context.config)``). ``source`` makes a fresh
        iterable of the source clip's frames; filters call :meth:`source_frames`, which opens it only
        then (reading the source costs a second decode).
    """

    fps: Fraction | float = Fraction(24)
    size: tuple[int, int] = (0, 0)
    frames: int = 0
    flow: str = DEFAULT_FLOW
    source: Callable[[], Iterable[np.ndarray]] | None = field(default=None, repr=False)
    config: Any = field(default=None, repr=False)  # the run's options (a RunConfig), when there is a run
    _opened: list[Iterator[np.ndarray]] = field(default_factory=list, repr=False)

    def source_frames(self) -> Iterator[np.ndarray]:
        """The source clip's frames, ``(H, W, 3)`` uint8 each, at the size and in the order of the
        frames the post-processors see. Each call starts a new pass over the clip."""
        if self.source is None:
            raise ValueError("this run has no source clip to read frames from")
        iterator = iter(self.source())
        self._opened.append(iterator)
        return iterator

    def close(self) -> None:
        """Stop every pass over the source that is still open (a reader's ffmpeg, say)."""
        opened, self._opened = self._opened, []
        for iterator in opened:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()


class Filter(Protocol):
    def push(self, frames: np.ndarray, start: int) -> np.ndarray: ...

    def finish(self) -> np.ndarray: ...


@dataclass
class Step:
    """One post-processor of a spec, found and its settings parsed and checked."""

    name: str
    plugin: Any
    settings: dict[str, Any] = field(default_factory=dict)  # keyword names ('-' → '_'), defaults filled in

    @property
    def streaming(self) -> bool:
        return callable(getattr(self.plugin, "open", None))

    def open(self, context: Context) -> Filter:
        if self.streaming:
            return self.plugin.open(context, **self.settings)
        return _Stateless(self.plugin)


class _Stateless:
    """A ``process(frames, start)`` post-processor seen as a filter that never holds a frame."""

    def __init__(self, plugin: Any):
        self.plugin = plugin

    def push(self, frames: np.ndarray, start: int) -> np.ndarray:
        return self.plugin.process(frames, start)

    def finish(self) -> np.ndarray | None:
        return None


def _key(text: str) -> str:
    return text.strip().replace("_", "-")


def _options(plugin: Any) -> dict[str, Any]:
    """A post-processor's settings and their defaults, by name as written (``max-gain``): from its
    :class:`vedit.Options` class, or from an ``options`` dict (the way before options classes)."""
    declared = options_class(plugin)
    if declared is not None:
        return {_key(spec.name): spec.default for spec in declared.specs()}
    options = getattr(plugin, "options", None) or {}
    return {_key(name): default for name, default in options.items()}


def _parse_value(text: str, default: Any) -> Any:
    """``text`` as the type of ``default``; ValueError says what was expected."""
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError("true or false")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError("an integer") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError("a number") from None
    return text


def parse(spec: str | None) -> list[tuple[str, list[tuple[str, str]]]]:
    """Split a spec into ``(name, [(key, value), ...])`` items, in order; blank items are skipped."""
    flag = option_label("postprocess")
    items = []
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        name, *pairs = part.split(":")
        name = name.strip()
        if not name:
            raise ConfigError(f"{flag} {part.strip()!r}: a post-processor's name comes first, as name:key=value")
        settings = []
        for pair in pairs:
            key, equals, value = pair.partition("=")
            if not equals or not key.strip():
                raise ConfigError(f"{flag} {name}: expected key=value, got {pair.strip()!r}")
            settings.append((key.strip(), value.strip()))
        items.append((name, settings))
    return items


def resolve(spec: str | None, context: Context | None = None, config: Any = None) -> list[Step]:
    """Find every post-processor a spec names and parse and check its settings; one-line errors
    (:class:`PluginError` for an unknown name, :class:`ConfigError` for a bad setting).

    A post-processor with a :class:`vedit.Options` class starts from its options in ``config`` (a
    RunConfig: ``--deflicker-flow-strength``, ``[run.deflicker-flow]``); the spec's ``key=value``
    settings override them for that step."""
    from .. import plugins

    context = context if context is not None else Context()
    flag = option_label("postprocess")
    steps = []
    for name, pairs in parse(spec):
        plugin = plugins.get("postprocessor", name)
        streaming = callable(getattr(plugin, "open", None))
        if not streaming and not callable(getattr(plugin, "process", None)):
            raise PluginError(f"post-processor {name!r} has neither open() nor process(); it cannot run")
        options = _options(plugin) if streaming else {}
        if pairs and not options:
            raise ConfigError(f"{flag} {name}: takes no settings, got {pairs[0][0]}={pairs[0][1]}")
        declared = options_class(plugin)
        values = dict(options)
        if declared is not None and config is not None:
            values = {_key(name): value for name, value in config.plugin_options(name).as_dict().items()}
        specs = {_key(s.name): s for s in declared.specs()} if declared is not None else {}
        given: set[str] = set()
        for raw_key, text in pairs:
            key = _key(raw_key)
            if key not in options:
                known = ", ".join(options)
                raise ConfigError(f"{flag} {name}: unknown setting {raw_key!r} (known: {known})")
            if key in given:
                raise ConfigError(f"{flag} {name}: {key} is given twice")
            given.add(key)
            where = f"{flag} {name}: {key}"
            if key in specs:
                parsed = specs[key].convert(text, where)
                if isinstance(parsed, float):
                    check_number(parsed, where)  # NaN and inf named as such before the range
                values[key] = specs[key].check(parsed, where)
                continue
            try:
                values[key] = _parse_value(text, options[key])
            except ValueError as expected:
                raise ConfigError(f"{where} must be {expected}, got {text!r}") from None
            if isinstance(values[key], float):
                check_number(values[key], where)
        settings = {key.replace("-", "_"): value for key, value in values.items()}
        check = getattr(plugin, "check", None)
        if check is not None:
            try:
                check(settings, context)
            except VeditError:
                raise
            except ValueError as error:
                raise ConfigError(f"{flag} {name}: {error}") from None
        steps.append(Step(name, plugin, settings))
    return steps


class _Stage:
    """One open filter with the counts that hold it to its contract."""

    def __init__(self, step: Step, context: Context):
        self.name = step.name
        self.filter = step.open(context)
        self.given = 0
        self.returned = 0

    def _checked(self, frames: Any, template: np.ndarray) -> np.ndarray:
        if frames is None or (isinstance(frames, (list, tuple)) and len(frames) == 0):
            return template[:0]
        frames = np.asarray(frames)
        if frames.ndim > 0 and len(frames) == 0:
            return template[:0]
        if frames.ndim != 4 or frames.shape[1:] != template.shape[1:] or frames.dtype != np.uint8:
            h, w = template.shape[1:3]
            raise ValueError(
                f"post-processor {self.name!r} returned {frames.dtype} {frames.shape}; "
                f"frames must come back as uint8 (b, {h}, {w}, 3)"
            )
        self.returned += len(frames)
        if self.returned > self.given:
            raise ValueError(
                f"post-processor {self.name!r} has returned {self.returned} frames but was given only {self.given}"
            )
        return frames

    def push(self, frames: np.ndarray) -> np.ndarray:
        start = self.given
        self.given += len(frames)
        return self._checked(self.filter.push(frames, start), frames)

    def finish(self, template: np.ndarray) -> np.ndarray:
        frames = self._checked(self.filter.finish(), template)
        if self.returned != self.given:
            raise ValueError(
                f"post-processor {self.name!r} returned {self.returned} frames in all for the {self.given} it was "
                "given; every frame must come back, in order"
            )
        return frames

    def close(self) -> None:
        close = getattr(self.filter, "close", None)
        if close is not None:
            close()


class Chain:
    """The post-processors of a run, composed in order.

    :meth:`push` takes the clip's next batch and returns what comes out of the last post-processor
    now; :meth:`finish` returns the rest. Each post-processor sees the frames in order, in the
    batches the one before it returned. Use as a context manager (or call :meth:`close`) so that
    filters and passes over the source are closed however the run ends.
    """

    def __init__(self, steps: Iterable[Step], context: Context):
        self.context = context
        self.stages: list[_Stage] = []
        self.given = 0
        self._template: np.ndarray | None = None
        try:
            for step in steps:
                self.stages.append(_Stage(step, context))
        except BaseException:
            self.close()
            raise

    def push(self, frames: np.ndarray, start: int | None = None) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"post-processing takes uint8 (b, H, W, 3) batches, got {frames.dtype} {frames.shape}")
        if start is not None and start != self.given:
            raise ValueError(f"post-processing got a batch starting at frame {start}; the next frame is {self.given}")
        self.given += len(frames)
        self._template = frames[:0]
        for stage in self.stages:
            if len(frames) == 0:
                break
            frames = stage.push(frames)
        return frames

    def finish(self) -> np.ndarray:
        template = self._template
        if template is None:
            width, height = self.context.size
            template = np.zeros((0, height, width, 3), dtype=np.uint8)
        frames = template
        for stage in self.stages:
            if len(frames):
                frames = stage.push(frames)
            rest = stage.finish(template)
            frames = np.concatenate([frames, rest])
        return frames

    def close(self) -> None:
        try:
            for stage in self.stages:
                stage.close()
        finally:
            self.context.close()

    def __enter__(self) -> Chain:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def apply(
    spec: str | list[Step], frames: np.ndarray, context: Context | None = None, *, batch_size: int = 8
) -> np.ndarray:
    """Run a spec over ``frames`` ((N, H, W, 3) uint8, in memory) in batches of ``batch_size``:
    for tests and experiments. ``context`` defaults to one describing ``frames``."""
    frames = np.asarray(frames)
    if context is None:
        context = Context(size=(frames.shape[2], frames.shape[1]), frames=len(frames))
    steps = resolve(spec, context) if isinstance(spec, str) else spec
    out = []
    with Chain(steps, context) as chain:
        for start in range(0, len(frames), batch_size):
            out.append(chain.push(frames[start : start + batch_size], start))
        out.append(chain.finish())
    return np.concatenate(out) if out else frames[:0]


__all__ = ["Chain", "Context", "Filter", "Step", "apply", "parse", "resolve"]
