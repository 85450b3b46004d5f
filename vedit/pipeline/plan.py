"""The cost plan of a run, known before any heavy work: the batch sizes each UNet pass runs at, the
images per frame of a ``--batch-size`` UNet call, and the UNet image-forwards a run will make, by kind.

The host knows only the inversion and the per-frame calls; what a propagator does beyond them it
answers itself (:class:`vedit.method.denoise.Propagator`): ``planned_forwards``, ``pass_batches`` and
``batch_size_branches``. A propagator without them makes one per-frame call per frame and step, in
batches of ``--batch-size``: the ``frames`` pass (three branches) when the editor injects or the
propagator needs the source branch, else the ``plain`` pass on the uncond and cond branches.
"""

from __future__ import annotations

from typing import Any

from .. import plugins
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


def editor_layers(editor: Any, family: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The (conv, Q/K) layers ``editor`` injects into in a model of ``family``: its ``injection_layers(family)``
    where it has one, else its ``conv_layers`` and ``qk_layers`` (none: an editor that does not inject)."""
    choose = getattr(editor, "injection_layers", None)
    if choose is not None:
        conv, qk = choose(family)
        return tuple(conv), tuple(qk)
    return tuple(getattr(editor, "conv_layers", ())), tuple(getattr(editor, "qk_layers", ()))


def own_options(plugin: Any, config: RunConfig) -> Any:
    """The options a plugin's methods are handed: those ``config`` holds for it, else those it carries
    (``plugin.options``: a form of a plugin under another name, such as tokenflow's preview, carries its
    plugin's); None for a plugin that declares none."""
    options = config.plugin_options(plugin.name)
    return options if options is not None else getattr(plugin, "options", None)


def nearest_backend(propagator: Any, config: RunConfig, device: Any, tokens: int | None = None) -> Any:
    """The nearest-neighbour backend the propagator's passes search with: the one its
    ``nn_backend(options)`` names (or ``auto``: the ``choose_nn_backend`` hook's), with its options; None
    for a propagator that searches none."""
    own = getattr(propagator, "nn_backend", None)
    requested = own(own_options(propagator, config)) if callable(own) else None
    if requested is None:
        return None
    return plugins.choose("nn_backend", requested, device, tokens=tokens, config=config)


def per_frame_pass(editor: Any, propagator: Any) -> tuple[str, int]:
    """The pass of a per-frame UNet call and its images per frame: ``frames`` and 3 with the source
    branch, ``plain`` and 2 (uncond and cond) without."""
    return ("frames", 3) if _per_frame_with_source(editor, propagator) else ("plain", 2)


def branches(editor: Any, propagator: Any, config: RunConfig) -> int:
    """Images per frame in a ``--batch-size`` UNet call, for ``--batch-size auto``: the propagator's
    ``batch_size_branches(branches, options)`` (tokenflow: 1, only inversion is batched so), else the
    per-frame calls' 3 branches with the source, 2 without."""
    per_frame = per_frame_pass(editor, propagator)[1]
    own = getattr(propagator, "batch_size_branches", None)
    return int(own(per_frame, own_options(propagator, config))) if own is not None else per_frame


def pass_batches(config: RunConfig, frames: int, editor: Any, propagator: Any) -> dict[str, list[int]]:
    """The batch sizes (rows) each pass runs at in a run of ``frames`` frames with these plugins: the
    inversion's, and the propagator's ``pass_batches(frames, batch_size, options)`` (else its per-frame
    calls')."""
    batches: dict[str, list[int]] = {}
    if editor.needs_inversion:
        batches["plain"] = batches_of(frames, config.batch_size)
    own = getattr(propagator, "pass_batches", None)
    if own is not None:
        planned = own(frames, config.batch_size, own_options(propagator, config))
    else:
        name, images = per_frame_pass(editor, propagator)
        planned = {name: [images * x for x in batches_of(frames, config.batch_size)]}
    for name, sizes in planned.items():
        batches[name] = sorted(set(batches.get(name, [])) | set(sizes))
    return batches


def planned_forwards(
    config: RunConfig, frames: int, editor: Any, propagator: Any, steps_run: int, *, inverting: bool = True
) -> Forwards:
    """The UNet image-forwards a run of ``frames`` frames will make, by kind (the keys of
    :attr:`~vedit.pipeline.edit.EditResult.forwards`), known before any heavy work. ``inverting``: the
    trajectory is computed in this run (not cached or given). The propagator's own
    ``planned_forwards(frames, steps_run, options)``; without it, one per-frame call per frame and step."""
    forwards = Forwards()
    if editor.needs_inversion and inverting:
        forwards["inversion"] = frames * config.inversion_steps
    own = getattr(propagator, "planned_forwards", None)
    if own is not None:
        forwards.update(own(frames, steps_run, own_options(propagator, config)))
    else:
        name, images = per_frame_pass(editor, propagator)
        forwards[name] = images * frames * steps_run
    return forwards
