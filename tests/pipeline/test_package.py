"""The pipeline package: the public names of the module it replaced, and its own modules."""

from __future__ import annotations

import importlib

import vedit.pipeline as pipeline

# The __all__ of vedit/pipeline.py before it became a package: scripts import these from vedit.pipeline.
FORMER_PUBLIC_NAMES = [
    "edit", "invert_clip", "preflight", "Preflight", "encode_clip", "invert_latents", "edit_latents", "write_frames",
    "build_engines", "planned_forwards", "EditResult", "InversionResult", "Reconstruction", "Reporter",
    "VeditWarning", "open_clip",
]  # fmt: skip


def test_the_package_keeps_every_public_name_of_the_former_module():
    from vedit.report import Reporter, VeditWarning

    assert sorted(pipeline.__all__) == sorted(FORMER_PUBLIC_NAMES)
    assert all(callable(getattr(pipeline, name)) for name in FORMER_PUBLIC_NAMES)
    assert pipeline.Reporter is Reporter and pipeline.VeditWarning is VeditWarning


def test_the_functions_keep_their_names_over_the_modules_that_hold_them():
    """``vedit.pipeline.edit`` and ``vedit.pipeline.preflight`` are the functions, as they were; their
    modules are reached by import (``from vedit.pipeline.edit import load_for_edit``)."""
    edit_module = importlib.import_module("vedit.pipeline.edit")
    preflight_module = importlib.import_module("vedit.pipeline.preflight")
    assert pipeline.edit is edit_module.edit and pipeline.preflight is preflight_module.preflight
    assert edit_module.load_for_edit.__module__ == "vedit.pipeline.edit"
    assert preflight_module.Clip.__module__ == "vedit.pipeline.preflight"
