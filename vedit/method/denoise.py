"""The denoising loop every editor and propagator shares, and the types they exchange.

An *editor* turns an :class:`EditJob` into an :class:`EditPlan` (start latents, the timesteps
to run, the source branch's latents and when PnP injection acts). A *propagator* produces the
guided noise prediction of every frame at one step, calling the :class:`Denoiser` on whatever
groups of frames it chooses with whatever attention handler it needs. The loop applies DDIM.

"Noise prediction" and ε here stand for the UNet's raw output, whatever the model predicts (ε, v or x0):
guidance is linear, so it is the same on any of them, and the run's scheduler, built from the model's own
config, reads it by its prediction type in its DDIM step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..errors import ConfigError
from ..options import option_value
from ..runtime import profiling
from ..runtime.transfer import to_device
from .passes import select_keyframes
from .unet import COND, SOURCE, UNCOND, AttentionHandler, CallContext, Injection


class SourceLatents(Protocol):
    """The source branch's latents of the given frames at timestep ``t``; ``frames=None`` is
    every frame, which is what the :class:`Denoiser` asks for, once per step."""

    def __call__(self, t: int, frames: torch.Tensor | None) -> torch.Tensor: ...


@dataclass(frozen=True)
class RunShape:
    """What is known of a run before any heavy work, for plugins' ``validate(config, shape)``."""

    frames: int  # frames selected (as many as the container promises)
    steps: int  # denoising steps the editor will run
    device: torch.device


@dataclass
class EditJob:
    """Everything an editor may use to plan an edit."""

    config: Any  # vedit.config.RunConfig
    model: Any  # vedit.model.stable_diffusion.StableDiffusion
    scheduler: Any  # a DDIMScheduler with set_timesteps(config.steps) applied
    clean_latents: torch.Tensor  # (N, 4, h, w), VAE posterior mean × scaling factor
    trajectory: Any | None = None  # vedit.method.trajectory.Trajectory when the editor needs inversion
    generator: torch.Generator | None = None
    options: Any = None  # the options (a vedit.Options) of the plugin this job is handed to; None: it has none

    @property
    def num_frames(self) -> int:
        return self.clean_latents.shape[0]

    def for_plugin(self, plugin: Any) -> EditJob:
        """This job as ``plugin`` sees it: with its own options (``job.options``): those the run's options
        hold for it, else those it carries (``plugin.options``)."""
        config = self.config
        options = config.plugin_options(plugin.name) if hasattr(config, "plugin_options") else None
        if options is None:
            options = getattr(plugin, "options", None)
        return dataclasses.replace(self, options=options)


@dataclass
class EditPlan:
    """An editor's decisions for one edit."""

    timesteps: torch.Tensor  # the steps actually run, noisiest first
    start_latents: torch.Tensor  # (N, 4, h, w) at timesteps[0]
    source: SourceLatents | None = None  # needed for PnP and for any propagator that matches tokens
    injection: Callable[[int], Injection] = field(default=lambda step: Injection())  # by index into timesteps
    conv_layers: tuple[str, ...] = ()
    qk_layers: tuple[str, ...] = ()
    needs_source_branch: bool = False


@dataclass(frozen=True)
class Step:
    """One denoising step: its position among the steps run and its timestep."""

    index: int
    t: torch.Tensor
    count: int  # steps run in all


def pick_frames(latents: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """``latents[frames]`` without a host-to-device wait: a run of consecutive host indices is a
    slice, other host indices are sent without blocking."""
    if frames.device.type == "cpu" and latents.device.type != "cpu":
        n = frames.numel()
        first = int(frames[0]) if n else 0
        if n and int(frames[-1]) - first == n - 1 and bool((frames.diff() == 1).all()):
            return latents[first : first + n]
        frames = to_device(frames, latents.device)
    return latents[frames]


class Denoiser:
    """Guided noise prediction for groups of frames, through the run's :class:`~vedit.runtime.runner.Passes`.

    ``__call__`` runs the plain (or, with a source branch, the injected per-frame) pass, or a
    plugin's own attention handler eagerly; :meth:`run` runs any registered pass by name
    (:mod:`vedit.plugins.passes`); ``keyframes``, ``joint`` and ``propagate`` are TokenFlow's two
    passes through it. Everything a pass takes is prepared here once per step: the timestep and the
    injection flags as device tensors, the text embeddings per batch size.
    """

    def __init__(
        self,
        passes: Any,
        plan: EditPlan,
        embeds: dict[str, torch.Tensor],
        guidance: float,
        with_source: bool,
        control: Any = None,
    ):
        """``control``: the run's :class:`~vedit.method.control.ControlFeed`; every call then takes the control
        frames of the frames it covers, and its passes run with the ControlNets inside."""
        self.passes = passes
        self.control = control
        self.plan = plan
        self.embeds = embeds  # branch name -> (1, L, D)
        self.guidance = guidance
        self.branches = (SOURCE, UNCOND, COND) if with_source else (UNCOND, COND)
        self.device = next(iter(embeds.values())).device
        self._texts: dict[int, torch.Tensor] = {}
        # Every step's timestep and injection flags go to the device once, before the loop.
        steps = len(plan.timesteps)
        self._timesteps = to_device(torch.as_tensor(plan.timesteps).to(torch.int64).reshape(steps), self.device)
        switches = [plan.injection(index) for index in range(steps)]
        self._flags = to_device(
            torch.tensor([[bool(i.conv), bool(i.qk)] for i in switches]).reshape(steps, 2), self.device
        )
        self._source: tuple[int, torch.Tensor] | None = None

    def _text(self, n: int) -> torch.Tensor:
        if n not in self._texts:
            self._texts[n] = torch.cat([self.embeds[b].expand(n, -1, -1) for b in self.branches]).contiguous()
        return self._texts[n]

    def _step_inputs(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        """The timestep (0-d int64) and injection flags (2,) bool of ``step``, already on the device."""
        return self._timesteps[step.index], self._flags[step.index]

    def source_latents(self, step: Step) -> torch.Tensor:
        """Every frame's source latents (N, 4, h, w) at ``step``, sent to the device once per step."""
        if self._source is None or self._source[0] != step.index:
            self._source = (step.index, to_device(self.plan.source(int(step.t), None), self.device))
        return self._source[1]

    def _batch(self, frames: torch.Tensor, latents: torch.Tensor, step: Step) -> torch.Tensor:
        parts = []
        for branch in self.branches:
            if branch == SOURCE:
                parts.append(pick_frames(self.source_latents(step), frames).to(latents))
            else:
                parts.append(latents)
        return torch.cat(parts)  # (branches·n, 4, h, w)

    def _guide(self, eps: torch.Tensor, n: int) -> torch.Tensor:
        eps_uncond, eps_cond = eps[-2 * n : -n], eps[-n:]
        return eps_uncond + self.guidance * (eps_cond - eps_uncond)

    def __call__(
        self,
        frames: torch.Tensor,
        latents: torch.Tensor,
        step: Step,
        attention: AttentionHandler | None = None,
        *,
        kind: str | None = None,
    ) -> torch.Tensor:
        """ε = ε_u + g (ε_c − ε_u) for ``latents`` (n, 4, h, w) of global frame indices ``frames``. Its
        forwards count as the pass that runs (``frames`` with a source branch, else ``plain``) unless
        ``kind`` names another; a plugin's own ``attention`` handler counts as ``kind`` or ``frames``."""
        n = latents.shape[0]
        batch, text = self._batch(frames, latents, step), self._text(n)
        t, flags = self._step_inputs(step)
        if attention is not None:
            ctx = CallContext(
                branches=self.branches, frames=n, attention=attention, injection=self.plan.injection(step.index),
                control=self._control(frames, step),
            )  # fmt: skip
            eps = self.passes.custom(batch, t, text, ctx, kind=kind or "frames")
        elif self.branches[0] == SOURCE:
            eps = self.passes.frames(batch, t, text, flags, kind=kind, **self._controlled(frames, step))
        else:  # the plain pass: every row is an image of its own, so each branch's row takes its frame's image
            control = self._controlled(frames, step, repeats=len(self.branches))
            eps = self.passes.plain(batch, t, text, kind=kind, **control)
        return self._guide(eps, n)

    def _control(self, frames: torch.Tensor, step: Step, repeats: int = 1) -> Any:
        """The control inputs of a call on ``frames`` at ``step``: None without controls, or at a step none acts
        in (the uncontrolled pass gives what every scale at 0 would, without running the ControlNets)."""
        if self.control is None or not self.control.acts(step.index):
            return None
        return self.control.inputs(frames, step.index, repeats)

    def _controlled(self, frames: torch.Tensor, step: Step, repeats: int = 1) -> dict[str, Any]:
        """A pass call's ``control`` keyword: none at all without controls (a plugin's Passes need not know it)."""
        control = self._control(frames, step, repeats)
        return {} if control is None else {"control": control}

    def run(
        self, name: str, frames: torch.Tensor, latents: torch.Tensor, step: Step, *inputs: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Registered pass ``name`` on ``latents`` (n, 4, h, w) of global frame indices ``frames``: the
        guided ε of those frames and the records the pass returns (none for a pass that returns ε
        alone). The pass takes ``(latents, t, text, flags, *inputs)``, one row per frame and branch;
        ``inputs`` are its own (on the device). Profiled and counted as the pass's kind."""
        spec = self.passes.spec(name)
        if spec.rows_per_frame != len(self.branches):
            raise ValueError(
                f"the {name} pass takes {spec.rows_per_frame} images per frame; this run's UNet calls have "
                f"{len(self.branches)} ({', '.join(self.branches)}): it needs the source branch"
            )
        n = latents.shape[0]
        t, flags = self._step_inputs(step)
        batch = self._batch(frames, latents, step)
        with profiling.stage(spec.kind):
            out = self.passes.run(name, (batch, t, self._text(n), flags, *inputs), **self._controlled(frames, step))
        if spec.returns_records:
            return self._guide(out[0], n), list(out[1:])
        return self._guide(out, n), []

    def keyframes(
        self, frames: torch.Tensor, latents: torch.Tensor, step: Step, partners: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """TokenFlow's keyframe pass on ``latents`` (K, 4, h, w); returns the per-block records
        ``[features₀ (K, seq, dim), outputs₀ (3K, seq, dim), features₁, …]``. Its ε is not used.
        ``partners`` (K, M) on the device bounds each keyframe's extended attention to those
        keyframes (:func:`vedit.method.passes.joint_partners`); None: all of them."""
        return self._keyframe_pass(frames, latents, step, partners)[1]

    def joint(
        self, frames: torch.Tensor, latents: torch.Tensor, step: Step, partners: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The keyframe pass used for its own noise prediction: guided ε of ``latents`` (n, 4, h, w)
        denoised jointly, with extended attention across all of them (``partners`` (n, M) on the
        device bounds it as in :meth:`keyframes`). Its records are let go. What a preview of
        keyframes alone runs (:mod:`vedit.pipeline.preview`)."""
        return self._keyframe_pass(frames, latents, step, partners)[0]

    def _keyframe_pass(
        self, frames: torch.Tensor, latents: torch.Tensor, step: Step, partners: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if partners is None:
            return self.run("keyframe", frames, latents, step)
        return self.run("keyframe_bounded", frames, latents, step, partners)

    def propagate(
        self,
        frames: torch.Tensor,
        latents: torch.Tensor,
        step: Step,
        records: list[torch.Tensor],
        slots: torch.Tensor,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        """TokenFlow's propagation pass: guided ε of ``latents`` (n, 4, h, w) from the records of
        keyframes ``slots`` = [i, i−1] (positions among the keyframes, on the device), blended with
        ``weights`` (n,), the weight of keyframe i."""
        return self.run("propagation", frames, latents, step, weights, *select_keyframes(records, slots))[0]


class Editor(Protocol):
    """Chooses start latents, the timesteps to run and PnP injection (see plugins/pnp.py).

    Optional: ``timesteps(scheduler, config)``, the timesteps ``plan`` will run, known before any
    heavy work (without it the whole schedule is assumed), and ``validate(config, shape)``.
    """

    name: str
    needs_inversion: bool

    def plan(self, job: EditJob) -> EditPlan: ...


class Propagator(Protocol):
    """Couples frames at each step (see plugins/propagators/tokenflow.py and plugins/propagators/none.py).

    Optional: ``validate(config, shape)``, called with a :class:`RunShape` before any heavy work,
    raising a :class:`~vedit.errors.VeditError` for options that cannot work; ``state_dict()``
    and ``load_state_dict(state)``, the state (name → tensor) that changes from step to step
    (a random generator's), which a checkpoint keeps so that a resumed run continues exactly. A
    propagator without them keeps no checkpoints; one that keeps no such state returns ``{}``.
    ``preview()`` returns the propagator that edits the few frames of a preview
    (:mod:`vedit.pipeline.preview`) instead of this one; without it, this one runs on those frames.

    Optional too, what a run will cost, asked before any heavy work with the propagator's own
    ``options`` (its :class:`vedit.Options` instance; None when it declares none;
    :mod:`vedit.pipeline.plan` has the defaults: one per-frame call per frame and step):
    ``planned_forwards(frames, steps_run, options) -> {kind: forwards}``;
    ``pass_batches(frames, batch_size, options) -> {pass: [rows]}``, the batch sizes of the passes it
    runs; ``batch_size_branches(branches, options) -> int``, images per frame of its calls of
    ``--batch-size`` frames; ``preview_frames(total, options) -> [frames]``, the frames a preview edits;
    ``nn_backend(options) -> str``, the nearest-neighbour backend its passes search with (a name or
    ``auto``; without it, none).
    """

    name: str
    needs_source_branch: bool

    def begin(self, job: EditJob, plan: EditPlan) -> None: ...

    def predict(self, step: Step, latents: torch.Tensor, denoiser: Denoiser) -> torch.Tensor: ...


def denoise(
    job: EditJob,
    plan: EditPlan,
    propagator: Propagator,
    passes: Any,
    embeds: dict[str, torch.Tensor],
    on_step: Callable[[Step], None] | None = None,
    *,
    resume: Any = None,
    after_step: Callable[[Step, torch.Tensor], None] | None = None,
    control: Any = None,
) -> torch.Tensor:
    """Run the plan's timesteps with DDIM (η = 0); returns the edited clean latents (N, 4, h, w).

    ``resume`` (a :class:`vedit.cache.checkpoints.Checkpoint`) continues a loop that stopped after
    ``resume.step`` steps, from its latents and the propagator's state (its
    ``load_state_dict``). ``after_step(step, latents)`` sees the latents after every step. ``control`` (a
    :class:`~vedit.method.control.ControlFeed`) guides every call with the run's ControlNets.
    """
    with_source = plan.needs_source_branch or propagator.needs_source_branch
    if with_source and plan.source is None:
        raise ConfigError(
            f"propagator {propagator.name!r} needs the source clip's latents at every step, which editor "
            f"{job.config.editor!r} does not provide; use {option_value('propagator', 'none')} with it"
        )
    denoiser = Denoiser(passes, plan, embeds, job.config.guidance, with_source, control)
    propagator.begin(job.for_plugin(propagator), plan)
    latents = plan.start_latents
    first = 0
    if resume is not None:
        latents = to_device(resume.latents, latents.device, latents.dtype)
        first = resume.step
        if resume.state:
            propagator.load_state_dict(resume.state)
    count = len(plan.timesteps)
    for index in range(first, count):
        t = plan.timesteps[index]
        step = Step(index=index, t=t, count=count)
        eps = propagator.predict(step, latents, denoiser)
        latents = job.scheduler.step(eps, t, latents, eta=0.0, return_dict=False)[0]
        if after_step is not None:
            after_step(step, latents)
        if on_step is not None:
            on_step(step)
    return latents
