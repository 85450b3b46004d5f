"""The quality report of an edit (``vedit eval``, ``vedit run --eval``): temporal consistency as
warp error along the source clip's optical flow (:mod:`vedit.quality.metrics`), and CLIP text score and
frame consistency (:mod:`vedit.quality.clip_score`), each beside the source clip's own figure, the floor.

Everything streams: the edited clip and the source are read once, in order, frame by frame; flow
is computed on the source frames a few pairs at a time, and CLIP embeds frames a batch at a time.
The source is read at the edited clip's size, so flow, warping and the edit share one grid, and on
the timeline the edit was made on: at the source's constant average rate, as ``vedit run`` reads
by default, or each frame once at its own time (``keep_timestamps``). Read at the constant rate, a
clip whose timestamps leave gaps repeats frames there; a pair of two showings of one source frame
is not measured (:func:`vedit.io.timing.resampling` says which pairs those are).

Where the report goes: ``out.mp4`` → ``out.eval.json`` beside it; a folder of PNG frames ``out/``
→ ``out.eval.json`` beside the folder (not inside it: the folder holds only numbered frames).
JSON files are written atomically (a temporary file renamed into place), so no half-written
report is ever left.
"""

from __future__ import annotations

import json
import math
import os
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError, OutputError, VeditError
from ..io.files import check_replaceable, write_atomically
from ..io.frames import FrameRange
from ..io.probe import VideoInfo, probe
from ..io.reader import FrameReader
from ..io.timing import Resampling, resampling
from ..options import option_label, option_value
from ..report import Reporter, SilentReporter
from .clip_score import (
    DEFAULT_CLIP,
    ClipFigures,
    ClipScorer,
    ClipUnavailable,
    FrameScores,
    load_clip,
    unavailable_reason,
)
from .flow import DEFAULT_FLOW, flow_backend
from .metrics import WARP_ERROR_UNIT, WarpError, warp_errors

if TYPE_CHECKING:
    from rich.console import Group
    from rich.table import Table

REPORT_FORMAT = "vedit-eval/1"
REPORT_SUFFIX = ".eval.json"
_NOT_RESAMPLED = Resampling(dropped=0, repeated=0, variable=False)

# CLIP models already found missing, per reporter: check_eval warns once and evaluate_run, which
# gets the same reporter, stays quiet about it.
_missing_clip: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()


def _remember_missing(reporter: Any, spec: str, reason: str) -> None:
    try:
        _missing_clip.setdefault(reporter, {})[spec] = reason
    except TypeError:  # a reporter that cannot be weakly referenced: it may be warned twice
        pass


def _known_missing(reporter: Any, spec: str) -> str | None:
    try:
        return _missing_clip.get(reporter, {}).get(spec)
    except TypeError:
        return None


def _clip_left_out(reason: str) -> str:
    return f"CLIP scores are left out: {reason}"


# --------------------------------------------------------------------------- the report


def _number(value: float | None) -> float | None:
    """JSON has no NaN: a figure that does not exist is null."""
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass
class Figures:
    """One clip's figures: warp error along the source's flow, and CLIP scores when measured."""

    warp: WarpError
    clip: ClipFigures | None = None

    @property
    def warp_error(self) -> float | None:
        """Mean of the per-pair warp errors ×10⁻³ (None when no pair kept a pixel)."""
        return _number(self.warp.value)

    @property
    def warp_error_pairs(self) -> list[float | None]:
        """Per pair (t, t+1), ×10⁻³; None for a pair not measured."""
        return [_number(v) for v in self.warp.scaled_pairs]

    @property
    def skipped_pairs(self) -> int:
        """Pairs not measured: with no pixel kept, or of a repeated source frame."""
        return self.warp.skipped

    @property
    def repeated_pairs(self) -> int:
        """Pairs of a repeated source frame: not measured."""
        return self.warp.repeated

    @property
    def measured_pairs(self) -> int:
        return self.warp.measured

    @property
    def clip_text_score(self) -> float | None:
        return self.clip.text_score if self.clip is not None else None

    @property
    def clip_frame_consistency(self) -> float | None:
        return self.clip.frame_consistency if self.clip is not None else None

    def as_dict(self) -> dict[str, Any]:
        clip = self.clip
        return {
            "warp_error": self.warp_error,
            "warp_error_pairs": self.warp_error_pairs,
            "measured_pairs": self.measured_pairs,
            "skipped_pairs": self.skipped_pairs,
            "repeated_pairs": self.repeated_pairs,
            "clip_text_score": _number(self.clip_text_score),
            "clip_text_frames": list(clip.text_frames) if clip is not None and clip.text_frames else None,
            "clip_frame_consistency": _number(self.clip_frame_consistency),
            "clip_frame_pairs": [_number(v) for v in clip.consistency_pairs] if clip is not None else None,
        }


@dataclass
class Report:
    """What ``vedit eval`` measured: the edit's figures and the source's own (the floor)."""

    edited: Path
    source: Path
    source_frames: str  # START:STOP:STEP of the source frames compared, STOP exclusive
    frames: int  # frames compared, of each clip
    size: tuple[int, int]  # (W, H) both clips were compared at: the edited clip's
    flow: str
    prompt: str | None
    clip_model: str | None  # the CLIP model used; None when the CLIP scores are left out
    clip_missing: str | None  # why they are left out
    edit: Figures
    floor: Figures  # the source clip's own figures
    notes: list[str] = field(default_factory=list)
    path: Path | None = None  # where the JSON report was written, if it was
    keep_timestamps: bool = False  # both clips read each frame once at its own time
    # The source's constant rate both clips were read at (None when read frame by frame), and what
    # that did to the source frames compared.
    fps: Fraction | None = None
    resampled: Resampling = _NOT_RESAMPLED

    @property
    def pairs(self) -> int:
        return max(0, self.frames - 1)

    def timeline(self) -> str:
        """How both clips were read, in words."""
        if self.fps is None:
            return "each frame once" + (
                f", at its own time ({option_label('keep_timestamps')})" if self.keep_timestamps else ""
            )
        change = self.resampled
        counts = (
            f": {change.dropped} frames dropped, {change.repeated} repeated"
            if change.dropped or change.repeated
            else ""
        )
        return f"at the source's average {self.fps} fps{counts}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "files": {"edited": str(self.edited), "source": str(self.source), "source_frames": self.source_frames},
            "frames": self.frames,
            "pairs": self.pairs,
            "timeline": {
                "keep_timestamps": self.keep_timestamps,
                "fps": str(self.fps) if self.fps is not None else None,
                "dropped_frames": self.resampled.dropped,
                "repeated_frames": self.resampled.repeated,
            },
            "size": list(self.size),
            "prompt": self.prompt,
            "flow": self.flow,
            "clip": {"model": self.clip_model, "missing": self.clip_missing},
            "warp_error_unit": WARP_ERROR_UNIT,
            "edit": self.edit.as_dict(),
            "source": self.floor.as_dict(),
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        """The report as JSON text; warp errors are multiples of ``warp_error_unit`` (1e-3)."""
        return json.dumps(self.as_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    def headline(self) -> str:
        """The clip figures in one line, for a run's summary."""
        parts = [f"warp error {_fmt(self.edit.warp_error, 3)} x1e-3 (source {_fmt(self.floor.warp_error, 3)})"]
        if self.floor.repeated_pairs:
            parts.append(f"{self.floor.repeated_pairs} of {self.pairs} pairs skipped as repeated frames")
        if self.clip_model is None:
            parts.append("no CLIP scores")
        else:
            if self.edit.clip_text_score is not None:
                parts.append(f"CLIP text {_fmt(self.edit.clip_text_score, 4)}")
            parts.append(
                f"CLIP frame consistency {_fmt(self.edit.clip_frame_consistency, 4)} "
                f"(source {_fmt(self.floor.clip_frame_consistency, 4)})"
            )
        return ", ".join(parts)

    def details(self) -> Table:
        """Key/value table of what was compared, with what (rich; every cell literal text)."""
        from rich.table import Table
        from rich.text import Text

        rows = [
            ("edited", str(self.edited)),
            ("source", f"{self.source} (frames {self.source_frames})"),
            ("frames", f"{self.frames} ({self.pairs} pairs) at {self.size[0]}x{self.size[1]}"),
            ("read", self.timeline()),
            ("flow", self.flow),
            ("CLIP", self.clip_model if self.clip_model is not None else f"none: {self.clip_missing}"),
            ("prompt", repr(self.prompt) if self.prompt is not None else "none (no CLIP text score)"),
        ]
        if self.path is not None:
            rows.append(("report", str(self.path)))
        table = Table(show_header=False, box=None, pad_edge=False)
        for name, value in rows:
            table.add_row(Text(name), Text(value))
        return table

    def table(self) -> Table:
        """The figures, edit beside source (rich)."""
        from rich.table import Table
        from rich.text import Text

        table = Table("figure", "edit", "source (floor)")
        for column in table.columns[1:]:
            column.justify = "right"
        table.add_row(
            Text("warp error (x1e-3)"), Text(_fmt(self.edit.warp_error, 3)), Text(_fmt(self.floor.warp_error, 3))
        )
        table.add_row(
            Text("pairs measured"),
            Text(f"{self.edit.measured_pairs} of {self.pairs}"),
            Text(f"{self.floor.measured_pairs} of {self.pairs}"),
        )
        if self.floor.repeated_pairs:
            table.add_row(
                Text("pairs skipped: repeated frame"),
                Text(str(self.edit.repeated_pairs)),
                Text(str(self.floor.repeated_pairs)),
            )
        absent = "-" if self.clip_model is None else None
        text_absent = absent or (f"- (no {option_label('prompt')})" if self.prompt is None else None)
        table.add_row(
            Text("CLIP text score"),
            Text(text_absent or _fmt(self.edit.clip_text_score, 4)),
            Text(text_absent or _fmt(self.floor.clip_text_score, 4)),
        )
        table.add_row(
            Text("CLIP frame consistency"),
            Text(absent or _fmt(self.edit.clip_frame_consistency, 4)),
            Text(absent or _fmt(self.floor.clip_frame_consistency, 4)),
        )
        return table

    def renderable(self) -> Group:
        """Details, then the figures table."""
        from rich.console import Group

        return Group(self.details(), self.table())


def _fmt(value: float | None, digits: int) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


# --------------------------------------------------------------------------- writing


def report_path(output: str | os.PathLike) -> Path:
    """Where ``vedit run --eval`` puts the report of ``output``: ``out.mp4`` → ``out.eval.json``;
    a PNG-frame folder ``out`` → ``out.eval.json`` beside it."""
    output = Path(os.path.abspath(output))
    if output.is_dir() or not output.suffix:
        return output.parent / f"{output.name}{REPORT_SUFFIX}"
    return output.with_suffix(REPORT_SUFFIX)


def is_report(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a report vedit wrote: JSON whose ``format`` is :data:`REPORT_FORMAT`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == REPORT_FORMAT


def check_report_path(path: str | os.PathLike, *inputs: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse a JSON destination that cannot be written (before any work is done); an existing file
    that is not a vedit report is replaced only with ``overwrite``."""
    path = Path(os.path.abspath(path))
    for other in inputs:
        if Path(os.path.abspath(other)) == path:
            raise OutputError(f"{path}: this is an input clip; choose another file for the JSON report")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name for the JSON report")
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"{parent}: folder does not exist; create it or choose another path for the JSON report")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{parent}: folder is not writable; choose another path for the JSON report")
    check_replaceable(path, overwrite, is_report)
    return path


def write_json(report: Report, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``report`` to ``path`` atomically: a temporary file beside it, renamed into place
    (over an existing file that is not a vedit report only with ``overwrite``)."""
    path = check_report_path(path, overwrite=overwrite)
    try:
        write_atomically(path, report.to_json().encode("utf-8"))
    except OSError as error:
        raise OutputError(f"{path}: cannot write the report: {error.strerror or error}") from None
    report.path = path
    return path


# --------------------------------------------------------------------------- measuring


def check_eval(config: Any, reporter: Reporter | None = None) -> None:
    """Before a run with ``eval``: the flow backend must resolve (else a one-line error now); a
    CLIP model that is not here is one warning that its scores will be left out."""
    reporter = reporter or SilentReporter()
    flow_backend(config.flow, config)
    reason = unavailable_reason(config.clip)
    if reason:
        reporter.warning(_clip_left_out(reason))
        _remember_missing(reporter, config.clip, reason)


def _clip_scorer(clip: str | ClipScorer | None, reporter: Reporter) -> tuple[ClipScorer | None, str | None]:
    """The CLIP model to score with, or None and why (warned once per reporter and model)."""
    if isinstance(clip, ClipScorer):
        return clip, None
    spec = clip or ""
    known = _known_missing(reporter, spec)
    if known is not None:
        return None, known
    try:
        return load_clip(spec), None
    except ClipUnavailable as error:
        reporter.warning(_clip_left_out(error.reason))
        _remember_missing(reporter, spec, error.reason)
        return None, error.reason


def _edited_count(path: Path, info: VideoInfo, keep_timestamps: bool) -> int:
    """How many frames the edited clip gives: exact for folders and ``keep_timestamps``; at the
    constant rate, as many as its time span holds where its packets carry times; otherwise the
    container's count, or its estimate capped by the packet count."""
    reader = FrameReader(path, size=(info.width, info.height), info=info, keep_timestamps=keep_timestamps)
    count = len(reader)
    if info.is_image_sequence or keep_timestamps:
        return count
    shown = resampling(info).shown
    if shown:
        return min(count, len(shown))
    if info.frames_from == "count":
        return count
    import av

    from ..io.probe import count_packets, first_real_video_stream

    try:
        with av.open(str(path)) as container:
            stream = first_real_video_stream(container)
            if stream is None:
                return count
            packets = count_packets(container, stream)
    except Exception:  # the reader will say what is wrong with the file
        return count
    return min(count, packets) if packets else count


class _Tap:
    """Passes frames through, counting them and feeding them to CLIP on the way."""

    def __init__(self, frames: Iterable[np.ndarray], scores: FrameScores | None, advance=None):
        self.frames, self.scores, self.advance = frames, scores, advance
        self.count, self.ended = 0, False

    def __iter__(self) -> Iterator[np.ndarray]:
        for frame in self.frames:
            self.count += 1
            if self.scores is not None:
                self.scores.add(frame)
            if self.advance is not None:
                self.advance(1)
            yield frame
        self.ended = True


def evaluate(
    edited_path: str | os.PathLike,
    source_path: str | os.PathLike,
    *,
    prompt: str | None = None,
    flow: str = DEFAULT_FLOW,
    clip: str | ClipScorer | None = DEFAULT_CLIP,
    source_frames: FrameRange | None = None,
    reporter: Reporter | None = None,
    frames: int | None = None,
    keep_timestamps: bool = False,
    allow_short: bool = False,
    source_info: VideoInfo | None = None,
    config: Any = None,
) -> Report:
    """Measure the edit at ``edited_path`` against the clip it was made from.

    ``source_frames`` selects the source frames the edit's frames correspond to (default: from
    the first); when it selects more than the edit has, the first ones are used and a note says
    so. A selection with fewer frames than the edit, an input that is not a video, or a clip
    with under two frames is an :class:`~vedit.errors.InputError`; an unknown or unusable
    ``flow`` a :class:`~vedit.errors.PluginError`. ``clip`` is a CLIP hub id or folder (local
    only), an already loaded :class:`~vedit.quality.clip_score.ClipScorer`, or None; without a usable
    one, ``reporter`` gets one warning and the report has no CLIP scores.

    Both clips are read on the timeline the edit was made on: at the source's constant average
    rate, as ``vedit run`` reads it by default, or with ``keep_timestamps`` each frame once at its
    own time, as ``vedit run --keep-timestamps`` does. At the constant rate, pairs whose two
    source frames are one frame shown twice are not measured, and a note gives what the
    resampling dropped and repeated. The report's ``frames`` are those compared.

    ``frames`` (how many frames the edit has, when the caller knows) and ``allow_short`` are for
    :func:`evaluate_run`, which repeats the run's reading of the source.
    """
    reporter = reporter or SilentReporter()
    backend = flow_backend(flow, config)
    edited_path, source_path = Path(edited_path), Path(source_path)
    edited_info = probe(edited_path)
    source_info = source_info if source_info is not None else probe(source_path)
    size = (edited_info.width, edited_info.height)
    count = frames if frames is not None else _edited_count(edited_path, edited_info, keep_timestamps)
    if count < 2:
        raise InputError(f"{edited_path}: has {count} frame{'s' * (count != 1)}; temporal consistency needs at least 2")
    selection = source_frames or FrameRange()
    notes: list[str] = []

    def source_reader(frame_range: FrameRange) -> FrameReader:
        return FrameReader(
            source_path, frames=frame_range, size=size, info=source_info, allow_short=allow_short,
            keep_timestamps=keep_timestamps,
        )  # fmt: skip

    try:
        available = source_reader(selection)
    except InputError as error:
        if source_frames is not None:  # the reader names the run's option
            error.args = (str(error).replace(option_label("frames"), option_label("source_frames")),)
        raise
    # At the constant rate the selection gives as many frames as its time span holds: fewer than
    # the clip has when its timestamps leave gaps (the packets say how many, and which repeat).
    change = None if keep_timestamps else resampling(source_info, selection)
    have = available.indices[: len(change.shown)] if change is not None and change.shown else available.indices
    chosen = f" ({option_value('source_frames', str(selection))})" if source_frames is not None else ""
    if len(have) < count:
        resampled = change is not None and (change.dropped or change.repeated)
        raise InputError(
            f"{source_path}: has {len(have)} frames{chosen} but the edit has {count}; "
            "give the source the edit was made from, or the frame range it was made from"
            + (f", and {option_label('keep_timestamps')} if the edit was made with it" if resampled else "")
        )
    if len(have) > count:
        if frames is None:  # a caller that gives the count (a run) already knows how the two line up
            notes.append(
                f"the source has {len(have)} frames ({_range_text(have)}), the edit {count}: "
                f"comparing with source frames {_range_text(have[:count])}"
            )
            reporter.message(f"note: {notes[-1]}")
        selection = replace(selection, max_frames=count)
        available = source_reader(selection)
        change = None if keep_timestamps else resampling(source_info, selection)
    repeated_pairs = change.repeated_pairs if change is not None else ()
    edited_reader = FrameReader(
        edited_path, frames=FrameRange(max_frames=count), size=size, info=edited_info, keep_timestamps=keep_timestamps
    )
    apart = _times_apart(edited_reader, available) if keep_timestamps else None
    if apart is not None:
        notes.append(
            f"{edited_path}: its frame times are not the source's ({apart}); an edit made without "
            f"{option_label('keep_timestamps')} is evaluated without it"
        )
        reporter.warning(notes[-1])

    scorer, missing = _clip_scorer(clip, reporter) if clip is not None else (None, "no CLIP model given")
    text_embedding = None
    if scorer is not None and prompt:
        tokens = scorer.prompt_tokens(prompt)
        if tokens > scorer.max_tokens:
            notes.append(f"the prompt is {tokens} CLIP tokens; the CLIP text score reads the first {scorer.max_tokens}")
            reporter.message(f"note: {notes[-1]}")
        text_embedding = scorer.embed_text(prompt)
    edit_scores = FrameScores(scorer, text_embedding, repeated_pairs) if scorer is not None else None
    floor_scores = FrameScores(scorer, text_embedding, repeated_pairs) if scorer is not None else None

    task = reporter.task("evaluate", count)
    source_tap = _Tap(available, floor_scores)
    edited_tap = _Tap(edited_reader, edit_scores, task.advance)
    try:
        floor, (result,) = warp_errors(source_tap, [edited_tap], backend=backend, repeated_pairs=repeated_pairs)
    except ValueError as error:
        if source_tap.ended and source_tap.count < count:
            raise InputError(
                f"{source_path}: ends after {source_tap.count} frames{chosen}, "
                f"before the edit's {count}; give the source the edit was made from"
            ) from None
        if edited_tap.ended:
            raise InputError(
                f"{edited_path}: ends after {edited_tap.count} frames, before the {count} it promised"
            ) from None
        raise VeditError(f"evaluating {edited_path} failed: {error}") from None

    compared = source_tap.count  # the edit gave as many: warp_errors refuses clips of unequal length
    if change is not None and compared < len(change.shown):  # both ended early: count what was compared
        change = resampling(source_info, replace(selection, max_frames=compared))
    if change is not None and (change.dropped or change.repeated):
        repeats = len(change.repeated_pairs)
        skipped = f"; {repeats} pair{'s' * (repeats != 1)} of a repeated frame not measured" if repeats else ""
        notes.append(
            f"{change.summary(source_info.fps)}{skipped} "
            f"({option_label('keep_timestamps')} reads each frame once, at its own time)"
        )
        if frames is None:  # a run's summary already says how it read the source
            reporter.message(f"note: {notes[-1]}")
    return Report(
        edited=edited_path.resolve(),
        source=source_path.resolve(),
        source_frames=_range_text(available.indices[:compared]),
        frames=compared,
        size=size,
        flow=getattr(backend, "name", flow),
        prompt=prompt or None,
        clip_model=scorer.name if scorer is not None else None,
        clip_missing=missing,
        edit=Figures(result, edit_scores.finish() if edit_scores is not None else None),
        floor=Figures(floor, floor_scores.finish() if floor_scores is not None else None),
        notes=notes,
        keep_timestamps=keep_timestamps,
        fps=source_info.fps if change is not None and not source_info.is_image_sequence else None,
        resampled=change if change is not None else _NOT_RESAMPLED,
    )


def _times_apart(edited: FrameReader, source: FrameReader) -> str | None:
    """Where, read frame by frame, the edited clip's frame times leave the source's by more than
    half a frame (None where they keep together, or a folder of frames has no times)."""
    if edited.info.is_image_sequence or source.info.is_image_sequence:
        return None
    tolerance = 0.5 / float(source.info.fps)
    edited_start, source_start = edited.timestamps[0], source.timestamps[0]
    for index, (edited_time, source_time) in enumerate(zip(edited.timestamps, source.timestamps)):
        edited_time, source_time = edited_time - edited_start, source_time - source_start
        if abs(edited_time - source_time) > tolerance:
            return f"frame {index} is at {edited_time:.3f} s, the source's at {source_time:.3f} s"
    return None


def _range_text(indices: range) -> str:
    """``START:STOP:STEP`` (STOP exclusive: one step past the last index) of a range."""
    if len(indices) == 0:
        return f"{indices.start}:{indices.start}:{indices.step}"
    return f"{indices[0]}:{indices[-1] + indices.step}:{indices.step}"


def evaluate_run(output: Path, clip: Any, config: Any, reporter: Reporter | None = None) -> Report:
    """After ``vedit run --eval``: evaluate ``output`` against exactly the source frames the run
    edited (``clip`` is the pipeline's opened clip) and write the report beside it
    (:func:`report_path`). An error says that the edit itself was written."""
    reporter = reporter or SilentReporter()
    reader = clip.reader
    count = reader.frames_read or len(reader)
    try:
        report = evaluate(
            output, clip.info.path, prompt=config.prompt, flow=config.flow, clip=config.clip,
            source_frames=reader.frames, reporter=reporter, frames=count, keep_timestamps=config.keep_timestamps,
            allow_short=config.allow_short or reader.short_read is not None, source_info=clip.info, config=config,
        )  # fmt: skip
        write_json(report, report_path(output), overwrite=config.overwrite)
    except VeditError as error:
        error.args = (f"the edit was written to {output}, but evaluating it failed: {error}",)
        raise
    reporter.message(f"evaluation written to {report.path}")
    return report


__all__ = [
    "REPORT_FORMAT",
    "Figures",
    "Report",
    "check_eval",
    "check_report_path",
    "evaluate",
    "evaluate_run",
    "is_report",
    "report_path",
    "write_json",
]
