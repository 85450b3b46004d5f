"""Plugins: the hooks a plugin implements (:mod:`vedit.plugins.hookspecs`) and the manager that loads the
built-in and third-party plugins and builds registries on demand (:mod:`vedit.plugins.manager`)."""

from .manager import (
    ENTRY_POINT_GROUP,
    KINDS,
    PluginFailure,
    Registered,
    choose,
    failures,
    get,
    get_plugin_manager,
    register_commands,
    registered,
    reset,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "KINDS",
    "PluginFailure",
    "Registered",
    "choose",
    "failures",
    "get",
    "get_plugin_manager",
    "register_commands",
    "registered",
    "reset",
]
