"""The plugin manager: loads built-in and third-party plugins and builds registries on demand.

The built-in plugins (:data:`DEFAULT_PLUGINS`) are loaded always, each under its own name, through
the same hooks as a third-party package's; entry points of the ``vedit`` group load third-party
plugins only. Registries are never cached: each ``get_*`` call asks every plugin again, so a
plugin registered late (in a test, say) simply appears.

Environment:
    VEDIT_PLUGINS          comma-separated entry-point names: load only these third-party plugins
                           (an empty value loads none); the built-ins are loaded whatever it says.
    VEDIT_TRACE_PLUGINS=1  print every hook call and its result to stderr.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy
from pluggy import HookImpl

from .. import __version__
from ..errors import PluginError
from ..options import options_class
from . import hookspecs

ENTRY_POINT_GROUP = "vedit"
# vedit's own plugins, by plugin name: loaded before any entry point, whatever VEDIT_PLUGINS says, so that no
# setting leaves vedit without its editors or its eager engine.
DEFAULT_PLUGINS: dict[str, str] = {
    "img2img": "vedit_plugins.editors.img2img",
    "pnp": "vedit_plugins.editors.pnp",
    "sdedit": "vedit_plugins.editors.sdedit",
    "passes": "vedit.method.passes",
    "tokenflow": "vedit_plugins.propagators.tokenflow",
    "perframe": "vedit_plugins.propagators.none",
    "eager": "vedit_engines.eager",
    "compile": "vedit_engines.compile",
    "torchscript": "vedit_engines.torchscript",
    "onnxruntime": "vedit_engines.onnxruntime",
    "tensorrt": "vedit_engines.tensorrt",
    "torch_tensorrt": "vedit_engines.torch_tensorrt",
    "torch_nn": "vedit_plugins.nn_backends.torch",
    "faiss_nn": "vedit_plugins.nn_backends.faiss",
    "opencv_flow": "vedit_plugins.flow_backends.dis",
    "raft_flow": "vedit_plugins.flow_backends.raft",
    "deflicker": "vedit_plugins.postprocessors.deflicker",
    "sd_families": "vedit_plugins.families.sd",
    "annotators": "vedit_plugins.annotators.builtin",
    "bench": "vedit_bench",
}
BUILT_IN_PACKAGE = "vedit"
KINDS = (
    "editor",
    "propagator",
    "engine",
    "nn_backend",
    "postprocessor",
    "flow_backend",
    "pass",
    "model_family",
    "annotator",
)
_HOOK_FOR_KIND = {
    "editor": "register_editors",
    "propagator": "register_propagators",
    "engine": "register_engines",
    "nn_backend": "register_nn_backends",
    "postprocessor": "register_postprocessors",
    "flow_backend": "register_flow_backends",
    "pass": "register_passes",
    "model_family": "register_model_families",
    "annotator": "register_annotators",
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
    def before(hook_name: str, impls: Sequence[HookImpl], kwargs: Mapping[str, Any]) -> None:
        names = ", ".join(impl.plugin_name for impl in impls)
        print(f"vedit: hook {hook_name}({', '.join(kwargs)}) -> [{names}]", file=sys.stderr)

    def after(outcome: Any, hook_name: str, impls: Sequence[HookImpl], kwargs: Mapping[str, Any]) -> None:
        try:
            result = outcome.get_result()
        except BaseException as error:  # report, then let pluggy re-raise
            print(f"vedit: hook {hook_name} raised {error!r}", file=sys.stderr)
            return
        print(f"vedit: hook {hook_name} returned {result!r}", file=sys.stderr)

    pm.add_hookcall_monitoring(before, after)


def _selected_entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    """The third-party entry points VEDIT_PLUGINS selects (all of them when it is not set)."""
    wanted = os.environ.get("VEDIT_PLUGINS")
    names = None if wanted is None else {n.strip() for n in wanted.split(",") if n.strip()}
    seen: set[str] = set()
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if names is not None and entry_point.name not in names:
            continue
        # An install of vedit made while its own plugins were entry points still lists them: they are loaded
        # from DEFAULT_PLUGINS.
        if _package(entry_point)[0].lower() == BUILT_IN_PACKAGE:
            continue
        # An editable install can list the same distribution twice; load each name once.
        key = f"{entry_point.name}={entry_point.value}"
        if key in seen:
            continue
        seen.add(key)
        yield entry_point


def _package(entry_point: importlib.metadata.EntryPoint) -> tuple[str, str]:
    """The name and version of the distribution that declares ``entry_point``."""
    dist = entry_point.dist
    return (dist.metadata["Name"], dist.version) if dist is not None else ("?", "?")


def _register(state: _State, name: str, package: str, version: str, load: Callable[[], Any]) -> None:
    """Import one plugin module with ``load`` and register it as ``name``; a failure is recorded, not raised."""
    try:
        module = load()
    except Exception as error:
        state.failures.append(PluginFailure(name, package, f"failed to import: {error}"))
        return
    if state.pm.get_plugin(name) is not None:
        owner = state.dists.get(name, ("?", "?"))[0]
        state.failures.append(PluginFailure(name, package, f"plugin name {name!r} is already used by package {owner}"))
        return
    try:
        state.pm.register(module, name=name)
    except Exception as error:
        state.failures.append(PluginFailure(name, package, f"failed to register: {error}"))
        return
    state.dists[name] = (package, version)


def _build() -> _State:
    pm = pluggy.PluginManager("vedit")
    pm.add_hookspecs(hookspecs)
    state = _State(pm=pm)
    for name, module in DEFAULT_PLUGINS.items():
        _register(state, name, BUILT_IN_PACKAGE, __version__, functools.partial(importlib.import_module, module))
    for entry_point in _selected_entry_points():
        _register(state, entry_point.name, *_package(entry_point), entry_point.load)
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
    """Forget loaded plugins so the next call loads them again and rediscovers entry points (tests, environment
    changes)."""
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


def hand_options(item: Any, config: Any = None) -> None:
    """Give ``item`` its options (``item.options``) when it declares them: those ``config`` (a RunConfig)
    holds for it, else the defaults."""
    declared = options_class(item)
    if declared is not None:
        item.options = config.plugin_options(item.name) if config is not None else declared()


def get(kind: str, name: str, *, config: Any = None) -> Any:
    """The registered item ``name`` of ``kind``; unknown or unusable names are one-line errors.

    An item that declares options is handed them first (``item.options``): those of ``config`` (a
    RunConfig), else the defaults; so whether it can run here may depend on them (a weights file given
    as an option), and ``self.options`` is there whenever it is used."""
    items = registered(kind)
    if name not in items:
        known = ", ".join(sorted(items)) or "none"
        label = kind.replace("_", " ")
        raise PluginError(f"unknown {label} {name!r}; available: {known} (see 'vedit plugins')")
    hand_options(items[name].item, config)
    reason = items[name].unavailable_reason()
    if reason:
        raise PluginError(f"{kind.replace('_', ' ')} {name!r} cannot run here: {reason}")
    return items[name].item


def choose(kind: str, requested: str, device: Any, *, tokens: int | None = None, config: Any = None) -> Any:
    """Resolve ``requested`` (a name or ``auto``) through the firstresult ``choose_*`` hooks.

    ``tokens`` (nn backends only): the largest tokens per frame the run searches, if known; ``config``:
    the run's options, whose the chosen item is handed (as :func:`get` does)."""
    if requested != "auto":
        return get(kind, requested, config=config)
    hooks = get_plugin_manager().hook
    if kind == "nn_backend":
        name = hooks.choose_nn_backend(device=device, tokens=tokens)
    else:
        name = {"engine": hooks.choose_engine}[kind](device=device)
    if name is None:
        raise PluginError(f"no {kind.replace('_', ' ')} plugin offers itself for {device}; name one explicitly")
    return get(kind, name, config=config)


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
