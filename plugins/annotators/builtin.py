"""The built-in annotators (filled in below)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vedit.plugins.hookspecs import hookimpl


@hookimpl
def register_annotators(register: Callable[[Any], None]) -> None:
    """canny and softedge."""
