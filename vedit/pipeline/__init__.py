"""The edit pipeline: read the clip → (invert, cached) → editor plan → propagator-coupled denoising → decode →
post-processors → write, as public stages with plain values between them. :func:`edit` is what
``vedit run`` does."""

from .stages import (
    EditResult,
    InversionResult,
    Preflight,
    Reconstruction,
    build_engines,
    edit,
    edit_latents,
    encode_clip,
    invert_clip,
    invert_latents,
    open_clip,
    planned_forwards,
    preflight,
    write_frames,
)

__all__ = [
    "EditResult", "InversionResult", "Preflight", "Reconstruction", "build_engines", "edit", "edit_latents",
    "encode_clip", "invert_clip", "invert_latents", "open_clip", "planned_forwards", "preflight", "write_frames",
]
