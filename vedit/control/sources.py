"""What ``--control`` names, before anything heavy: annotators, control clips, their scales and ControlNets.

Torch-free: the options are checked here in preflight, before the model loads or a frame is read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..config import path_and_scale
from ..errors import ConfigError, InputError
from ..options import Options as PluginOptions
from ..options import option, option_label, option_value

MAX_SCALE = 10.0  # a ControlNet's conditioning scale: diffusers' pipelines use 0–2; past 10 nothing of the edit is left


class Annotator:
    """Makes control frames from source frames: subclass it and register an instance (``register_annotators``).

    ``annotate(frames)`` takes a batch of the source's selected frames at the working size, (b, H, W, 3) uint8 RGB,
    and returns the control frames the ControlNet sees, the same shape and dtype (a one-channel map repeated
    three times, as ControlNets are trained). Its options are in ``self.options`` when it runs
    (``--<name>-<option>`` flags, ``[run.<name>]`` tables): those of :class:`Annotator.Options`, which every
    annotator has, and those its own ``Options`` class, a subclass of it, adds.

    - ``version``: raise it whenever ``annotate`` computes something different: it enters the cache key of the
      annotations, which are computed once per clip and kept beside its inversion.
    - ``controlnets``: the ControlNet (hub id or folder) to use with it for each model family (``"sd1"``,
      ``"sd2"``, ``"sdxl"``) when ``--controlnet`` leaves it out; its option ``controlnet`` set by the user
      (``[run.canny] controlnet = "..."``) comes first.
    - ``check()``: raise a :class:`~vedit.errors.VeditError` when it cannot run (an annotator that needs weights
      it was not given says so here, in preflight, before any heavy work).
    - ``batch_size``: frames per ``annotate`` call.
    """

    class Options(PluginOptions):
        """The options every annotator has: they choose the ControlNet, not the control frames, so they stay out
        of the annotations' cache key."""

        controlnet: str | None = option(
            None,
            help="The ControlNet for these control frames when --controlnet leaves it out: a hub id in the local "
            "cache or a local diffusers folder (an absolute path).",
        )

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    controlnets: ClassVar[Mapping[str, str]] = {}
    batch_size: ClassVar[int] = 16
    options: Any = None

    def check(self) -> None:
        """Raise when the annotator cannot run with its options (missing weights, say); nothing by default."""

    def annotate(self, frames: Any) -> Any:
        """(b, H, W, 3) uint8 RGB source frames → (b, H, W, 3) uint8 RGB control frames."""
        raise NotImplementedError

    def controlnet_for(self, family: str) -> str | None:
        """The ControlNet for models of ``family``: the ``controlnet`` option when set, else :attr:`controlnets`'."""
        configured = getattr(self.options, "controlnet", None)
        return configured or self.controlnets.get(family)


@dataclass(frozen=True)
class ControlSource:
    """One ``--control``: where its control frames come from, how strongly it acts, and its ControlNet."""

    text: str  # as given: "canny:0.8", "/clips/depth.mp4"
    scale: float
    annotator: str | None  # the annotator's name, or None for a control clip or folder
    path: str | None  # the control clip or folder, or None for an annotator
    controlnet: str | None  # the --controlnet paired with it; None: the annotator's for the model's family

    @property
    def label(self) -> str:
        """How messages name it: ``canny`` or the clip's file name."""
        return self.annotator or Path(self.path or self.text).name


def control_sources(
    controls: Sequence[str], controlnets: Sequence[str], annotators: Mapping[str, Any]
) -> list[ControlSource]:
    """``--control`` and ``--controlnet`` resolved and checked (one-line errors): each control an annotator of
    ``annotators`` (name → registered item) or an existing clip or folder, with its scale; the ControlNets paired
    with the controls in order. More ControlNets than controls is an error; fewer leaves the rest to the
    annotators' defaults (a control clip has none: it needs its own)."""
    if len(controlnets) > len(controls):
        raise ConfigError(
            f"{len(controlnets)} {option_label('controlnet')} for {len(controls)} {option_label('control')}: each "
            f"ControlNet goes with the {option_label('control')} in the same position"
        )
    sources = []
    for position, text in enumerate(controls):
        where = option_value("control", text)
        head, given = path_and_scale(text, where, 0.0, MAX_SCALE)
        scale = 1.0 if given is None else given
        controlnet = controlnets[position] if position < len(controlnets) else None
        if head in annotators:
            sources.append(ControlSource(text, scale, head, None, controlnet))
            continue
        path = Path(head).expanduser()
        if not path.exists():
            known = ", ".join(sorted(annotators)) or "none"
            raise InputError(
                f"{where}: {head!r} is neither an annotator ({known}) nor an existing control clip or folder of frames"
            )
        if controlnet is None:
            given = option_value("controlnet", "ID_OR_PATH", placeholder=True)
            raise ConfigError(f"{where}: a control clip needs its ControlNet: pass {given} in the same position")
        sources.append(ControlSource(text, scale, None, str(path), controlnet))
    return sources


def check_window(start: float, end: float) -> None:
    """``--control-start`` before ``--control-end``: otherwise no step would see the controls."""
    if start >= end:
        raise ConfigError(
            f"{option_value('control_start', start)} must be before {option_value('control_end', end)}: "
            "no step would see the controls"
        )


def step_scales(steps: int, scales: Sequence[float], start: float, end: float) -> list[list[float]]:
    """Each control's scale at each of ``steps`` steps run, (steps, controls): its scale from the step whose
    start is at ``start`` of the steps run to the one that ends at ``end``, 0 outside, as diffusers' ControlNet
    pipelines keep a ControlNet (step i acts when i/steps ≥ start and (i+1)/steps ≤ end)."""
    rows = []
    for i in range(steps):
        keep = not (i / steps < start or (i + 1) / steps > end)
        rows.append([scale if keep else 0.0 for scale in scales])
    return rows


__all__ = ["Annotator", "ControlSource", "check_window", "control_sources", "step_scales"]
