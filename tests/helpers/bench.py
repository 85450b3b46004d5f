"""What the ``vedit bench`` suites' tests share: the options of a quick run on the tiny model."""

from __future__ import annotations

__all__ = ["TINY"]

TINY = ["--model", "tiny", "--size", "64x64", "--device", "cpu", "--dtype", "fp32"]
