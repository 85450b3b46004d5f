"""``vedit bench``: the suites registered as its commands."""

from __future__ import annotations

from helpers.cli import vedit


def test_bench_lists_its_commands():
    shown = vedit("bench", "--help")
    for command in (
        "edit",
        "invert",
        "unet",
        "nn",
        "calls",
        "memory",
        "work",
        "consistency",
        "quality",
        "checksums",
        "compare",
    ):
        assert command in shown.stdout
