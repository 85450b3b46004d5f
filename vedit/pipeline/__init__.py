"""The edit pipeline: read the clip → (invert, cached) → editor plan → propagator-coupled denoising → decode →
post-processors → write, as public stages with plain values between them. :func:`edit` is what
``vedit run`` does.

Its modules: :mod:`~vedit.pipeline.preflight` (the clip opened and every option checked before any heavy
work), :mod:`~vedit.pipeline.plan` (the batch sizes and UNet forwards a run will cost),
:mod:`~vedit.pipeline.stages` (encode, invert, edit, write), :mod:`~vedit.pipeline.edit`,
:mod:`~vedit.pipeline.invert`, :mod:`~vedit.pipeline.engines` and :mod:`~vedit.pipeline.preview` (what
``vedit run``, ``vedit invert``, ``vedit engines build`` and ``vedit run --preview`` do). As attributes of
the package, ``edit`` and ``preflight`` are the functions; their modules are imported by their full path
(``from vedit.pipeline.edit import load_for_edit``)."""

from ..report import Reporter, VeditWarning
from .edit import EditResult, edit
from .engines import build_engines
from .invert import InversionResult, Reconstruction, invert_clip
from .plan import planned_forwards
from .preflight import Preflight, open_clip, preflight
from .stages import edit_latents, encode_clip, invert_latents, write_frames

__all__ = [
    "EditResult",
    "InversionResult",
    "Preflight",
    "Reconstruction",
    "Reporter",
    "VeditWarning",
    "build_engines",
    "edit",
    "edit_latents",
    "encode_clip",
    "invert_clip",
    "invert_latents",
    "open_clip",
    "planned_forwards",
    "preflight",
    "write_frames",
]
