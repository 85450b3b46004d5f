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

    with _registered(Plugin(), f"{editor.name}-plugin"):
        yield editor


@contextlib.contextmanager
def registered_family(family: Any) -> Iterator[Any]:
    """Model family ``family`` registered (through ``register_model_families``) while the block runs."""

    class Plugin:
        @hookimpl
        def register_model_families(self, register):
            register(family)

    with _registered(Plugin(), f"{family.name}-family-plugin"):
        yield family


@contextlib.contextmanager
def registered_annotator(annotator: Any) -> Iterator[Any]:
    """Annotator ``annotator`` registered (through ``register_annotators``) while the block runs."""

    class Plugin:
        @hookimpl
        def register_annotators(self, register):
            register(annotator)

    with _registered(Plugin(), f"{annotator.name}-annotator-plugin"):
        yield annotator


@contextlib.contextmanager
def _registered(plugin: Any, name: str) -> Iterator[None]:
    pm = plugins.get_plugin_manager()
    pm.register(plugin, name=name)
    try:
        yield
    finally:
        pm.unregister(plugin)
