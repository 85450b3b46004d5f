"""Plugins registered in-process for one test, the way a test plugin package would register them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from vedit import plugins
from vedit.plugins.hookspecs import hookimpl


@contextlib.contextmanager
def registered_editor(editor: Any) -> Iterator[Any]:
    """``editor`` registered (through ``register_editors``) while the block runs, then unregistered."""

    class Plugin:
        @hookimpl
        def register_editors(self, register):
            register(editor)

    pm = plugins.get_plugin_manager()
    plugin = Plugin()
    pm.register(plugin, name=f"{editor.name}-plugin")
    try:
        yield editor
    finally:
        pm.unregister(plugin)
