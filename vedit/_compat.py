"""Old import paths keep working: vedit's modules used to sit side by side in one package, and plugins and
scripts written then import them by those names (``from vedit.hookspecs import hookimpl``,
``from vedit.denoise import EditPlan``). Each old path is an alias of the module(s) that hold its names now.

An old path that became one module *is* that module (patching it patches the real one); one that was split
gives a module holding the names of all its parts. Either way a :class:`DeprecationWarning` names the new
path. The finder is installed by ``vedit/__init__.py``; it acts only on the names below.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

MOVED: dict[str, tuple[str, ...]] = {
    "vedit.video": (
        "vedit.io.ffmpeg",
        "vedit.io.probe",
        "vedit.io.timing",
        "vedit.io.frames",
        "vedit.io.reader",
        "vedit.io.files",
        "vedit.io.writer",
    ),
    "vedit.streams": ("vedit.io.threads",),
    "vedit.models": (
        "vedit.model.stable_diffusion",
        "vedit.model.device",
        "vedit.model.loading",
        "vedit.model.builders",
    ),
    "vedit.unet": ("vedit.method.unet",),
    "vedit.attention": ("vedit.method.attention",),
    "vedit.passes": ("vedit.method.passes",),
    "vedit.denoise": ("vedit.method.denoise",),
    "vedit.inversion": ("vedit.method.ddim", "vedit.method.trajectory", "vedit.cache.inversions", "vedit.cache.files"),
    "vedit.checksums": ("vedit.cache.checksums",),
    "vedit.checkpoint": ("vedit.cache.checkpoints",),
    "vedit.engine": ("vedit.runtime.runner", "vedit.runtime.engine_cache"),
    "vedit.onnx_export": ("vedit.runtime.onnx_export",),
    "vedit.transfer": ("vedit.runtime.transfer",),
    "vedit.profiling": ("vedit.runtime.profiling",),
    "vedit.batching": ("vedit.runtime.batch_sizes",),
    "vedit.preview": ("vedit.pipeline.preview",),
    "vedit.flow": ("vedit.quality.flow",),
    "vedit.metrics": ("vedit.quality.metrics",),
    "vedit.clip_score": ("vedit.quality.clip_score",),
    "vedit.evaluate": ("vedit.quality.evaluate",),
    "vedit.postprocess": ("vedit.quality.postprocess",),
    "vedit.batch_cli": ("vedit.cli.batch",),
    "vedit.hookspecs": ("vedit.plugins.hookspecs",),
}


class _Alias(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        targets = MOVED[spec.name]
        warnings.warn(f"{spec.name} has moved: import {' or '.join(targets)} instead", DeprecationWarning, stacklevel=3)
        if len(targets) == 1:
            return importlib.import_module(targets[0])
        return None  # a fresh module, filled from the parts below

    def exec_module(self, module: ModuleType) -> None:
        targets = MOVED.get(module.__name__, ())
        if len(targets) == 1 and module.__name__ in targets:
            return
        for target in targets:
            part = importlib.import_module(target)
            module.__dict__.update({k: v for k, v in vars(part).items() if not k.startswith("__")})


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias())


def install() -> None:
    """Let the old module paths be imported (idempotent)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())
