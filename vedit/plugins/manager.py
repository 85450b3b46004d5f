"""The plugin manager: loads built-in and third-party plugins and builds registries on demand.

Registries are never cached: each ``get_*`` call asks every plugin again, so a plugin
registered late (in a test, say) simply appears.

Environment:
    VEDIT_PLUGINS          comma-separated entry-point names: load only these plugins
                           (built-ins included; an empty value loads none).
    VEDIT_TRACE_PLUGINS=1  print every hook call and its result to stderr.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from . import hookspecs
from ..errors import PluginError

ENTRY_POINT_GROUP = "vedit"
KINDS = ("editor", "propagator", "engine", "nn_backend", "postprocessor", "flow_backend")
_HOOK_FOR_KIND = {
    "editor": "register_editors",
    "propagator": "register_propagators",
    "engine": "register_engines",
    "nn_backend": "register_nn_backends",
    "postprocessor": "register_postprocessors",
    "flow_backend": "register_flow_backends",
}


@dataclass
class PluginFailure:
    """A plugin that could not be loaded or whose hook raised."""

    plugin: str
    package: str
    error: str


@dataclass
class Registered:
    """One registered item with where it came from."""

    kind: str
    name: str
    item: Any
    plugin: str
    package: str
    version: str

    def unavailable_reason(self) -> str | None:
        check = getattr(self.item, "unavailable_reason", None)
        if check is None:
            return None
        try:
            return check()
        except Exception as error:  # a broken check must not take `vedit plugins` down
            return f"availability check failed: {error}"


@dataclass
class _State:
    pm: pluggy.PluginManager
    dists: dict[str, tuple[str, str]] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)


_state: _State | None = None


def _trace_enabled() -> bool:
    return os.environ.get("VEDIT_TRACE_PLUGINS", "").lower() not in ("", "0", "false", "no")


def _enable_tracing(pm: pluggy.PluginManager) -> None:
    def before(hook_name: str, impls: list, kwargs: dict) -> None:
        names = ", ".join(impl.plugin_name for impl in impls)
        print(f"vedit: hook {hook_name}({', '.join(kwargs)}) -> [{names}]", file=sys.stderr)

    def after(outcome: Any, hook_name: str, impls: list, kwargs: dict) -> None:
        try:
            result = outcome.get_result()
        except BaseException as error:  # report, then let pluggy re-raise
            print(f"vedit: hook {hook_name} raised {error!r}", file=sys.stderr)
            return
        print(f"vedit: hook {hook_name} returned {result!r}", file=sys.stderr)

    pm.add_hookcall_monitoring(before, after)


def _selected_entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    wanted = os.environ.get("VEDIT_PLUGINS")
    names = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
    seen: set[str] = set()
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if names is not None and entry_point.name not in names:
            continue
        # An editable install can list the same distribution twice; load each name once.
        key = f"{entry_point.name}={entry_point.value}"
        if key in seen:
            continue
        seen.add(key)
        yield entry_point


def _build() -> _State:
    pm = pluggy.PluginManager("vedit")
    pm.add_hookspecs(hookspecs)
    state = _State(pm=pm)
    for entry_point in _selected_entry_points():
        dist = entry_point.dist
        package = dist.metadata["Name"] if dist is not None else "?"
        version = dist.version if dist is not None else "?"
        try:
            module = entry_point.load()
        except Exception as error:
            state.failures.append(PluginFailure(entry_point.name, package, f"failed to import: {error}"))
            continue
        if pm.get_plugin(entry_point.name) is not None:
            owner = state.dists.get(entry_point.name, ("?", "?"))[0]
            state.failures.append(
                PluginFailure(
                    entry_point.name, package, f"plugin name {entry_point.name!r} is already used by package {owner}"
                )
            )
            continue
        try:
            pm.register(module, name=entry_point.name)
        except Exception as error:
            state.failures.append(PluginFailure(entry_point.name, package, f"failed to register: {error}"))
            continue
        state.dists[entry_point.name] = (package, version)
    if _trace_enabled():
        _enable_tracing(pm)
    return state


def _get_state() -> _State:
    global _state
    if _state is None:
        _state = _build()
    return _state


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built on first use)."""
    return _get_state().pm


def reset() -> None:
    """Forget loaded plugins so the next call rediscovers entry points (tests, environment changes)."""
    global _state
    _state = None


def failures() -> list[PluginFailure]:
    """Plugins that failed to import or register so far."""
    return list(_get_state().failures)


def _origin(plugin_name: str) -> tuple[str, str]:
    state = _get_state()
    if plugin_name in state.dists:
        return state.dists[plugin_name]
    return ("(registered at runtime)", "-")


def registered(kind: str) -> dict[str, Registered]:
    """Every item of ``kind`` registered by the loaded plugins, keyed by name.

    Two plugins registering the same name is an error that names both.
    """
    if kind not in _HOOK_FOR_KIND:
        raise ValueError(f"unknown plugin kind {kind!r}")
    state = _get_state()
    pm = state.pm
    hook_name = _HOOK_FOR_KIND[kind]
    items: dict[str, Registered] = {}
    impls = getattr(pm.hook, hook_name).get_hookimpls()
    for impl in impls:
        others = [other.plugin for other in impls if other.plugin_name != impl.plugin_name]
        caller = pm.subset_hook_caller(hook_name, remove_plugins=others)
        package, version = _origin(impl.plugin_name)
        collected: list[Any] = []
        try:
            caller(register=collected.append)
        except Exception as error:
            failure = PluginFailure(impl.plugin_name, package, f"{hook_name} raised: {error}")
            if failure not in state.failures:
                state.failures.append(failure)
            continue
        for item in collected:
            name = getattr(item, "name", None)
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {impl.plugin_name!r} registered a {kind} without a name")
            if name in items:
                first = items[name]
                raise PluginError(
                    f"{kind} {name!r} is registered twice: by plugin {first.plugin!r} ({first.package}) "
                    f"and by plugin {impl.plugin_name!r} ({package}); uninstall one or limit VEDIT_PLUGINS"
                )
            items[name] = Registered(kind, name, item, impl.plugin_name, package, version)
    return items


def get(kind: str, name: str) -> Any:
    """The registered item ``name`` of ``kind``; unknown or unusable names are one-line errors."""
    items = registered(kind)
    if name not in items:
        known = ", ".join(sorted(items)) or "none"
        label = kind.replace("_", " ")
        raise PluginError(f"unknown {label} {name!r}; available: {known} (see 'vedit plugins')")
    reason = items[name].unavailable_reason()
    if reason:
        raise PluginError(f"{kind.replace('_', ' ')} {name!r} cannot run here: {reason}")
    return items[name].item


def choose(kind: str, requested: str, device: Any, *, tokens: int | None = None) -> Any:
    """Resolve ``requested`` (a name or ``auto``) through the firstresult ``choose_*`` hooks.

    ``tokens`` (nn backends only): the largest tokens per frame the run searches, if known."""
    if requested != "auto":
        return get(kind, requested)
    hooks = get_plugin_manager().hook
    if kind == "nn_backend":
        name = hooks.choose_nn_backend(device=device, tokens=tokens)
    else:
        name = {"engine": hooks.choose_engine}[kind](device=device)
    if name is None:
        raise PluginError(f"no {kind.replace('_', ' ')} plugin offers itself for {device}; name one explicitly")
    return get(kind, name)


def register_commands(app: Any) -> None:
    """Let every plugin add its commands to ``app``; a failing plugin is reported and skipped."""
    state = _get_state()
    pm = state.pm
    impls = pm.hook.register_commands.get_hookimpls()
    for impl in impls:
        others = [other.plugin for other in impls if other.plugin_name != impl.plugin_name]
        try:
            pm.subset_hook_caller("register_commands", remove_plugins=others)(app=app)
        except Exception as error:
            package, _ = _origin(impl.plugin_name)
            state.failures.append(PluginFailure(impl.plugin_name, package, f"register_commands raised: {error}"))
