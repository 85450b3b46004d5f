"""Export a UNet pass module to ONNX (shared by the ``onnxruntime`` and ``tensorrt`` engines)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch

from ..method.passes import PassModule
from ..plugins.passes import pass_spec

OPSET = 18


@contextlib.contextmanager
def _quiet():
    """The exporter prints its progress and warns about every diffusers shape check; keep that off the user's screen."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_pass(
    module: PassModule, example: tuple[torch.Tensor, ...], path: str | Path, *, batches: tuple[int, ...] = ()
) -> Path:
    """Write ``module`` traced on ``example`` to ``path`` (weights beside it in ``path.data`` when large).

    With several ``batches`` the batch dimension is symbolic over their range: the inputs the pass's
    spec batches (:attr:`~vedit.PassSpec.batched_inputs`: the latents and text, and for instance the
    propagation pass's blend weights) share the frame count; every other input's shape stays fixed.
    """
    path = Path(path)
    spec = pass_spec(module.name)
    dynamic_shapes = None
    frames = sorted({b // spec.rows_per_frame for b in (*batches, example[0].shape[0])})
    if len(frames) > 1:
        dynamic_shapes = spec.dynamic_shapes(module, frames[0], frames[-1])
    with _quiet(), torch.no_grad():
        # Exported first, then converted: torch.onnx.export mangles dynamic shapes given for *records.
        program = torch.export.export(module, example, dynamic_shapes=dynamic_shapes, strict=False)
        torch.onnx.export(
            program,
            example,
            str(path),
            input_names=list(module.input_names),
            output_names=module.output_names(),
            opset_version=OPSET,
            dynamo=True,
            external_data=True,
            optimize=True,
            verbose=False,
        )
    if not path.exists():  # pragma: no cover - exporter contract
        raise RuntimeError(f"torch.onnx.export wrote nothing to {path}")
    return path
