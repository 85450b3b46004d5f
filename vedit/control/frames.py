"""The control frames of a run: read from the user's control clips and folders of frames, or made by annotators from
the source's frames and cached beside the inversion (:mod:`vedit.cache.annotations`).

- :func:`check_controls` (in preflight, before the model loads or a frame is read): what ``--control`` names is
  an annotator that can run with its options, or a readable control clip with as many frames as the source;
- :func:`control_frames`: each control's frames, (N, H, W, 3) uint8 RGB at the working size, frame i going with
  the source's frame i.

A control clip is read as the source is (:meth:`vedit.io.reader.FrameReader.matching`): the same ``--frames`` and
``--max-frames`` selection, the working size and the timing (``--keep-timestamps``), so its frames are paired
with the source's by position.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from .. import plugins
from ..cache.annotations import AnnotationCache, annotation_key
from ..cache.files import gb_to_bytes
from ..config import RunConfig, option_value
from ..errors import InputError, PluginError
from ..io.probe import VideoInfo, probe
from ..io.reader import FrameReader
from ..report import Reporter, SilentReporter, Task, open_task
from .sources import Annotator, ControlSource, check_window, control_sources

ASPECT_TOLERANCE = 0.01  # a control clip whose shape differs from the source's by more is said to be stretched


class Clip(Protocol):
    """What the control frames need of the opened source (a :class:`vedit.pipeline.preflight.Clip`)."""

    reader: FrameReader  # its selected frames at the working size
    info: VideoInfo  # its probe


def check_controls(config: RunConfig, clip: Clip, *, reporter: Reporter | None = None) -> list[ControlSource]:
    """``--control``, ``--controlnet`` and ``--control-start``/``--control-end`` checked against the opened source
    ``clip``, in one line each before any heavy work: every annotator is known and its ``check()`` passes with the
    run's options for it; every control clip or folder is readable (the probe's own error) and gives as many
    frames as the source with the same selection (:class:`InputError`, exit 2). A control clip at another frame
    rate, or of another shape (it is stretched to the working size), is a warning through ``reporter``. Returns
    the controls, in order; [] without ``--control``."""
    if not config.control:
        control_sources((), config.controlnet, {})  # a --controlnet with no --control to go with is refused
        return []
    reporter = reporter or SilentReporter()
    annotators = {name: entry.item for name, entry in plugins.registered("annotator").items()}
    sources = control_sources(config.control, config.controlnet, annotators)
    check_window(config.control_start, config.control_end)
    for source in sources:
        if source.annotator is not None:
            _annotator(source, config).check()
        else:
            _check_control_clip(source, config, clip, reporter)
    return sources


def _annotator(source: ControlSource, config: RunConfig) -> Annotator:
    """The annotator ``source`` names, handed the run's options for it."""
    annotator: Annotator = plugins.get("annotator", source.annotator or "", config=config)
    return annotator


def _check_control_clip(source: ControlSource, config: RunConfig, clip: Clip, reporter: Reporter) -> None:
    where = option_value("control", source.text)
    try:
        info = probe(source.path or "")
    except InputError as error:  # the probe's own line, said to be about the control clip
        raise InputError(f"{where}: {error}") from None
    reader = clip.reader.matching(source.path, info=info)
    if len(reader) != len(clip.reader):
        selection = [
            option_value(name, getattr(config, name)) for name in ("frames", "max_frames") if getattr(config, name)
        ]
        picked = f" ({' and '.join(selection)} picking from both)" if selection else ""
        raise InputError(
            f"{where}: the control clip gives {len(reader)} frames and the source {len(clip.reader)}{picked}; "
            "a control clip needs one frame for each frame of the source"
        )
    if not (info.is_image_sequence or clip.info.is_image_sequence) and info.fps != clip.info.fps:
        reporter.warning(
            f"{where}: the control clip runs at {float(info.fps):g} fps and the source at {float(clip.info.fps):g}; "
            "their frames go together by position, not by time"
        )
    if abs(info.width * clip.info.height / (info.height * clip.info.width) - 1) > ASPECT_TOLERANCE:
        width, height = clip.reader.size
        reporter.warning(
            f"{where}: the control frames are {info.width}x{info.height} and the source's {clip.info.width}x"
            f"{clip.info.height}; they are stretched to the working size, {width}x{height}"
        )


def control_frames(
    sources: Sequence[ControlSource],
    config: RunConfig,
    clip: Clip,
    frames_sha: str,
    reporter: Reporter,
    *,
    frames: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """Each control's frames, (N, H, W, 3) uint8 RGB at the working size (``clip.reader.size`` is (W, H)), in the
    order of the run's selected frames: N is the number of source frames read (call it once they are, as
    :func:`vedit.pipeline.stages.encode_clip` reads them, whose sha256 is ``frames_sha``). With ``frames``,
    indices among them, only those frames, in that order (a preview).

    A control clip or folder is read again as the source is. An annotator's frames are made from the source's,
    read again, ``annotator.batch_size`` at a time, and kept in the annotation cache (memory-mapped when read
    from it): a later run of the same frames at the same size with the same annotator, version and options
    reuses them, whatever its prompt. With ``config.no_cache`` they are made and not kept; with ``frames`` they
    are sliced from the cache when the whole clip's are there, else made for those frames alone and not kept."""
    count = clip.reader.frames_read or len(clip.reader)
    positions = None if frames is None else [int(position) for position in frames]
    if positions is not None and any(not 0 <= position < count for position in positions):
        raise ValueError(f"frames {positions} are not all among the {count} frames of the run")
    made = []
    for source in sources:
        if source.annotator is None:
            where = option_value("control", source.text)
            made.append(_read(clip.reader.matching(source.path), count, positions, where))
        else:
            made.append(_annotations(_annotator(source, config), config, clip, count, frames_sha, reporter, positions))
    return made


def _read(reader: FrameReader, count: int, positions: list[int] | None, where: str) -> np.ndarray:
    """Frames 0 … count − 1 of ``reader`` (or those at ``positions``, in that order), (n, H, W, 3) uint8; reading
    stops after the last one wanted. A reader that ends before it is an :class:`InputError` naming both counts."""
    wanted = list(range(count)) if positions is None else positions
    slots = {position: slot for slot, position in enumerate(wanted)}
    width, height = reader.size
    out = np.empty((len(wanted), height, width, 3), np.uint8)
    last, read = max(wanted), 0
    for position, frame in enumerate(reader):  # leaving the loop early stops the reader's ffmpeg
        if position in slots:
            out[slots[position]] = frame
        read = position + 1
        if position == last:
            break
    if read <= last:
        raise InputError(
            f"{where}: the control clip ended after {read} frames and the source gave {count}; "
            "a control clip needs one frame for each frame of the source"
        )
    return out


def _annotation_options(annotator: Annotator) -> dict[str, Any]:
    """The options that change an annotator's control frames, by name: those declared ``affects_output``, but for
    the ones every annotator has (:class:`Annotator.Options`), which choose its ControlNet."""
    options = annotator.options
    if options is None:
        return {}
    shared = {spec.name for spec in Annotator.Options.specs()}
    return {
        spec.name: getattr(options, spec.name)
        for spec in type(options).specs()
        if spec.affects_output and spec.name not in shared
    }


def _annotations(
    annotator: Annotator,
    config: RunConfig,
    clip: Clip,
    count: int,
    frames_sha: str,
    reporter: Reporter,
    positions: list[int] | None,
) -> np.ndarray:
    width, height = clip.reader.size
    shape = (count, height, width, 3)
    cache = AnnotationCache(config.cache_dir, max_bytes=gb_to_bytes(config.cache_max_gb), warn=reporter.warning)
    key = annotation_key(
        frames_sha256=frames_sha, size=clip.reader.size, annotator=annotator.name, version=str(annotator.version),
        options=_annotation_options(annotator),
    )  # fmt: skip
    if not config.no_cache:
        cached = cache.get(key, shape)
        if cached is not None:
            reporter.message(f"reusing cached annotations {cache.path(key)}")
            return cached if positions is None else cached[positions]
    if positions is not None:  # a preview's frames alone: not the clip's annotations, so not kept
        return _annotate(annotator, _read(clip.reader.matching(), count, positions, str(clip.info.path)))
    description = f"annotate ({annotator.name})"
    writer = None if config.no_cache else cache.writer(key, shape)
    if writer is not None:
        with writer:
            for batch in _annotated(annotator, clip, count, open_task(reporter, description, count, 1)):
                writer.write(batch)
                if writer.failed:
                    break
            written = writer.finish()
        mapped = cache.get(key, shape) if written is not None else None
        if mapped is not None:
            return mapped
    # Not kept (--no-cache, or a cache that could not take them): made again, in memory.
    return np.concatenate(list(_annotated(annotator, clip, count, open_task(reporter, description, count, 1))))


def _annotated(annotator: Annotator, clip: Clip, count: int, task: Task) -> Iterator[np.ndarray]:
    """The control frames of the source's first ``count`` frames, read again, a batch at a time."""
    done = 0
    for batch in clip.reader.matching().batches(max(1, annotator.batch_size)):
        batch = batch[: count - done]
        yield _annotate(annotator, batch)
        done += len(batch)
        task.advance(len(batch))
        if done == count:
            break
    if done < count:
        raise InputError(
            f"{clip.info.path}: gave {done} frames when read again for the control frames, {count} the first time; "
            "was it changed during the run?"
        )


def _annotate(annotator: Annotator, frames: np.ndarray) -> np.ndarray:
    """``annotator.annotate(frames)``, checked: uint8 frames of the shape it was given."""
    made = np.asarray(annotator.annotate(frames))
    if made.shape != frames.shape or made.dtype != np.uint8:
        raise PluginError(
            f"annotator {annotator.name!r} made {made.dtype} frames of shape {made.shape} from {frames.shape}: "
            "annotate must return uint8 RGB frames of the shape it is given"
        )
    return made


__all__ = ["check_controls", "control_frames"]
