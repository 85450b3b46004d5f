"""The cost plan of a run, known before any heavy work: the batch sizes each UNet pass runs at, the
images per frame of a UNet call, and the UNet image-forwards a run will make, by kind."""

from __future__ import annotations

from typing import Any

from ..config import RunConfig
from ..runtime.runner import Forwards


def batches_of(total: int, size: int) -> list[int]:
    """The batch sizes of ``total`` items taken ``size`` at a time: [size] and the remainder."""
    return sorted({min(size, total)} | ({total % size} if total % size else set()))


def _per_frame_with_source(editor: Any, propagator: Any) -> bool:
    """Whether per-frame UNet calls carry the source branch (PnP injection or a propagator that needs it)."""
    return bool(
        propagator.needs_source_branch or getattr(editor, "conv_layers", ()) or getattr(editor, "qk_layers", ())
    )


def branches(editor: Any, propagator: Any) -> int:
    """Images per frame in a ``--batch-size`` UNet call: 1 with tokenflow (only inversion is batched
    so), else the per-frame calls' 3 branches with the source, 2 without."""
    if propagator.name == "tokenflow":
        return 1
    return 3 if _per_frame_with_source(editor, propagator) else 2


def pass_batches(config: RunConfig, frames: int, editor: Any, propagator: Any) -> dict[str, list[int]]:
    """The batch sizes each pass runs at in a run of ``frames`` frames with these plugins."""
    n, b, size = frames, config.chunk_size, config.batch_size
    batches: dict[str, list[int]] = {}
    if editor.needs_inversion:
        batches["plain"] = batches_of(n, size)
    if propagator.name == "tokenflow":
        keys = -(-n // b)
        batches["keyframe" if keys <= config.max_joint_keyframes else "keyframe_bounded"] = [3 * keys]
        batches["propagation"] = [3 * x for x in batches_of(n, b)]
    elif _per_frame_with_source(editor, propagator):
        batches["frames"] = [3 * x for x in batches_of(n, size)]
    else:
        batches.setdefault("plain", [])
        batches["plain"] = sorted(set(batches["plain"]) | {2 * x for x in batches_of(n, size)})
    return batches


def planned_forwards(
    config: RunConfig, frames: int, editor: Any, propagator: Any, steps_run: int, *, inverting: bool = True
) -> Forwards:
    """The UNet image-forwards a run of ``frames`` frames will make, by kind (the keys of
    :attr:`~vedit.pipeline.edit.EditResult.forwards`), known before any heavy work. ``inverting``: the trajectory is
    computed in this run (not cached or given). A propagator other than the built-in ones may say
    with ``planned_forwards(frames, steps_run, config)``; without it, one per-frame call per frame
    and step is assumed."""
    forwards = Forwards()
    if editor.needs_inversion and inverting:
        forwards["inversion"] = frames * config.inversion_steps
    own = getattr(propagator, "planned_forwards", None)
    if own is not None:
        forwards.update(own(frames, steps_run, config))
    elif propagator.name == "tokenflow":
        keys = -(-frames // config.chunk_size)
        forwards["keyframe"] = 3 * keys * steps_run
        forwards["propagation"] = 3 * frames * steps_run
    else:
        forwards["frames"] = (3 if _per_frame_with_source(editor, propagator) else 2) * frames * steps_run
    return forwards
