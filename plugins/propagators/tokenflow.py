"""Propagator ``tokenflow``: TokenFlow (Geyer et al., ICLR 2024, Sec. 4) keyframe editing and propagation.

At every step the frames are split into chunks of B and one keyframe is drawn in each. The
keyframes are denoised jointly with extended self-attention (each keyframe attends to the tokens
of all keyframes of its branch) while every transformer block records its self-attention input of
the source branch and its self-attention output of all branches. Then every chunk is denoised
with self-attention replaced: each token takes the recorded output of its cosine nearest
neighbour (in the source branch's features) in keyframe i and in keyframe i−1, blended by
distance to the chunks' centres (Sec. 4.2, eq. 5).

The passes' modules are :mod:`vedit.method.passes`' public building blocks (the modules every
engine runs); this plugin registers them as ``keyframe``, ``keyframe_bounded`` and ``propagation``
(``register_passes``), with the functions that make their example inputs, chooses the keyframes and
the chunks, calls the passes through the :class:`Denoiser`, and answers what they cost.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

import vedit
from vedit import plugins
from vedit.errors import ConfigError
from vedit.method.denoise import Denoiser, EditJob, EditPlan, RunShape, Step
from vedit.method.passes import (
    BoundedKeyframePass,
    KeyframePass,
    PropagationPass,
    branched_example,
    joint_partners,
    select_keyframes,
)
from vedit.plugins.hookspecs import hookimpl
from vedit.plugins.passes import ExampleRequest, PassSpec
from vedit.runtime.transfer import to_device


def chunk_ranges(num_frames: int, chunk_size: int) -> list[range]:
    """Consecutive chunks of ``chunk_size`` frames; the last one may be shorter."""
    return [range(s, min(s + chunk_size, num_frames)) for s in range(0, num_frames, chunk_size)]


def blend_weights(frames: range, chunk: int, chunk_size: int) -> torch.Tensor:
    """w1 = sigmoid(d2 / (d1 + d2)): the weight of keyframe ``chunk`` against keyframe ``chunk − 1``."""
    s = torch.tensor(list(frames), dtype=torch.float32)
    d1 = (s - (chunk * chunk_size + chunk_size // 2)).abs()
    d2 = (s - ((chunk - 1) * chunk_size + chunk_size // 2)).abs()
    return torch.sigmoid(d2 / (d1 + d2))


def keyframe_pass(keys: int, max_joint_keyframes: int) -> str:
    """The keyframe pass a step of ``keys`` keyframes runs: bounded beyond ``max_joint_keyframes``."""
    return "keyframe" if keys <= max_joint_keyframes else "keyframe_bounded"


def read_keyframe_schedule(path: str | Path) -> list[list[int]]:
    """A keyframe schedule file: ``{"keyframes": [[k, ...], ...]}``, one list per step run."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"keyframe schedule {path} does not exist") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"keyframe schedule {path} is not readable JSON: {error}") from None
    schedule = data.get("keyframes") if isinstance(data, dict) else None
    if not isinstance(schedule, list) or not all(
        isinstance(step, list) and all(isinstance(k, int) and not isinstance(k, bool) for k in step)
        for step in schedule
    ):
        raise ConfigError(f'keyframe schedule {path} must be {{"keyframes": [[int, ...], ...]}}')
    return schedule


def check_keyframe_schedule(schedule: list[list[int]], chunks: list[range], steps: int, path: str) -> None:
    """ConfigError unless ``schedule`` has one list per step, each with one frame inside each chunk."""
    if len(schedule) != steps:
        raise ConfigError(f"keyframe schedule {path} has {len(schedule)} steps; this run denoises {steps}")
    for index, keys in enumerate(schedule):
        if len(keys) != len(chunks):
            raise ConfigError(f"keyframe schedule {path}, step {index}: {len(keys)} keyframes for {len(chunks)} chunks")
        for chunk, key in zip(chunks, keys):
            if key not in chunk:
                raise ConfigError(
                    f"keyframe schedule {path}, step {index}: "
                    f"frame {key} is not in chunk {chunk.start}-{chunk.stop - 1}"
                )


class TokenFlow:
    name = "tokenflow"
    description = "TokenFlow: joint keyframe editing with extended attention, propagated along NN correspondences"
    needs_source_branch = True

    class Options(vedit.Options):
        chunk_size: int = vedit.option(
            8, help="Frames per chunk B (one keyframe each).", min=1, max=1024, aliases=("chunk-size",)
        )
        max_joint_keyframes: int = vedit.option(
            32,
            help="Keyframes each keyframe's extended attention covers (itself, its neighbours, a seeded spread); "
            "all of them while K <= this.",
            min=1,
            aliases=("max-joint-keyframes",),
        )
        keyframes: str | None = vedit.option(
            None,
            help='JSON keyframe schedule file, {"keyframes": [[k, ...], ...]}, one list per step.',
            path=True,
            aliases=("keyframes",),
        )
        nn_backend: str = vedit.option(
            "auto",
            help="Nearest-neighbour backend: torch, faiss or auto.",
            affects_output=False,
            aliases=("nn-backend",),
        )

    # What the host asks before any heavy work. ``options`` are read for chunk_size and
    # max_joint_keyframes alone.
    def planned_forwards(self, frames: int, steps_run: int, options: Any) -> dict[str, int]:
        """Per step, the keyframe pass on K = ⌈N/B⌉ keyframes and the propagation pass on all N
        frames, three branches each: 3·(1 + K/N) forwards per frame and step."""
        keys = len(chunk_ranges(frames, options.chunk_size))
        return {"keyframe": 3 * keys * steps_run, "propagation": 3 * frames * steps_run}

    def pass_batches(self, frames: int, batch_size: int, options: Any) -> dict[str, list[int]]:
        """The keyframe pass on all K keyframes (bounded beyond ``max_joint_keyframes``), the propagation
        pass on every chunk's length; ``--batch-size`` plays no part."""
        chunks = chunk_ranges(frames, options.chunk_size)
        return {
            keyframe_pass(len(chunks), options.max_joint_keyframes): [3 * len(chunks)],
            "propagation": sorted({3 * len(chunk) for chunk in chunks}),
        }

    def batch_size_branches(self, branches: int, options: Any) -> int:
        """1: only the inversion runs ``--batch-size`` frames at a time; the passes take keyframes and chunks."""
        return 1

    def nn_backend(self, options: Any) -> str:
        """The NN backend the propagation pass searches with: ``--nn-backend``."""
        return options.nn_backend

    def preview_frames(self, total: int, options: Any) -> list[int]:
        """The K keyframes a preview edits: the centre of every chunk."""
        from vedit.pipeline.preview import default_frames

        return default_frames(total, options.chunk_size)

    def validate(self, config, shape: RunShape) -> None:
        """Before any heavy work: the NN backend exists and runs here, the keyframe file fits the run."""
        options = config.plugin_options(self.name)
        plugins.choose("nn_backend", options.nn_backend, shape.device)
        if options.keyframes:
            schedule = read_keyframe_schedule(options.keyframes)
            check_keyframe_schedule(
                schedule, chunk_ranges(shape.frames, options.chunk_size), shape.steps, options.keyframes
            )

    def begin(self, job: EditJob, plan: EditPlan) -> None:
        options = job.options
        self.chunk_size = options.chunk_size
        self.chunks = chunk_ranges(job.num_frames, options.chunk_size)
        self.max_joint = options.max_joint_keyframes
        self.generator = torch.Generator().manual_seed(job.config.seed)
        self._prepared = None
        self.schedule = None
        if options.keyframes:
            # Checked again: a clip that ended early (--allow-short) has fewer chunks than promised.
            self.schedule = read_keyframe_schedule(options.keyframes)
            check_keyframe_schedule(self.schedule, self.chunks, len(plan.timesteps), options.keyframes)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What changes from step to step: the generator that draws keyframes and partners."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def preview(self) -> JointKeyframes:
        """The propagator of a preview (:mod:`vedit.pipeline.preview`): its frames are the keyframes."""
        preview = JointKeyframes()
        preview.options = getattr(self, "options", None) or self.Options()  # its own, from the run
        return preview

    def keyframes(self, step: Step) -> torch.Tensor:
        """One keyframe per chunk for this step: from the schedule, else drawn with the seeded generator."""
        if self.schedule is not None:
            return torch.tensor(self.schedule[step.index])
        offsets = [int(torch.randint(len(chunk), (1,), generator=self.generator)) for chunk in self.chunks]
        return torch.tensor([chunk.start + o for chunk, o in zip(self.chunks, offsets)])

    def predict(self, step: Step, latents: torch.Tensor, denoiser: Denoiser) -> torch.Tensor:
        keys = to_device(self.keyframes(step), latents.device)  # moved once per step, without a wait
        partners = None
        if keyframe_pass(len(self.chunks), self.max_joint) == "keyframe_bounded":  # redrawn every step
            partners = to_device(joint_partners(len(self.chunks), self.max_joint, self.generator), latents.device)
        # The keyframe pass only records features; its noise prediction is not used.
        records = denoiser.keyframes(keys, latents[keys], step, partners)
        eps = torch.empty_like(latents)
        for chunk, frames, slots, weights in self._chunks(latents.device):
            eps[chunk.start : chunk.stop] = denoiser.propagate(
                frames, latents[chunk.start : chunk.stop], step, records, slots, weights
            )
        return eps

    def _chunks(self, device: torch.device) -> list[tuple[range, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per chunk, made once: its frames, the keyframe slots [i, i−1] and the blend weights on
        ``device``. Chunk 0 has one keyframe: slots [0, 0] with weight 1 (no Python branch in the pass)."""
        if getattr(self, "_prepared", None) is None or self._prepared[0] != device:
            prepared = []
            for i, chunk in enumerate(self.chunks):
                frames = torch.arange(chunk.start, chunk.stop)
                slots = to_device(torch.tensor([i, max(i - 1, 0)]), device)
                weights = torch.ones(len(chunk)) if i == 0 else blend_weights(chunk, i, self.chunk_size)
                prepared.append((chunk, frames, slots, to_device(weights, device)))
            self._prepared = (device, prepared)
        return self._prepared[1]


class JointKeyframes:
    """TokenFlow's preview form (``TokenFlow.preview()``): every frame it is given is a keyframe at
    every step, and they are denoised jointly by the keyframe pass alone, with extended attention
    across all of them, each frame stepping with that pass's own guided noise prediction. No
    propagation pass runs. Beyond ``--max-joint-keyframes`` frames the attention is bounded with
    partners drawn every step from a generator seeded with ``--seed``, as in :class:`TokenFlow`."""

    name = "tokenflow-preview"
    description = "TokenFlow's keyframes alone, denoised jointly (vedit run --preview)"
    needs_source_branch = True

    def begin(self, job: EditJob, plan: EditPlan) -> None:
        options = job.options if job.options is not None else job.config.plugin_options(TokenFlow.name)
        self.max_joint = options.max_joint_keyframes
        self.generator = torch.Generator().manual_seed(job.config.seed)

    def planned_forwards(self, frames: int, steps_run: int, options: Any) -> dict[str, int]:
        """One keyframe pass over all frames per step, three branches each."""
        return {"keyframe": 3 * frames * steps_run}

    def pass_batches(self, frames: int, batch_size: int, options: Any) -> dict[str, list[int]]:
        """The keyframe pass on all the frames at once."""
        return {keyframe_pass(frames, options.max_joint_keyframes): [3 * frames]}

    def batch_size_branches(self, branches: int, options: Any) -> int:
        """1: it makes no call of ``--batch-size`` frames."""
        return 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def predict(self, step: Step, latents: torch.Tensor, denoiser: Denoiser) -> torch.Tensor:
        count = latents.shape[0]
        partners = None
        if keyframe_pass(count, self.max_joint) == "keyframe_bounded":  # redrawn every step
            partners = to_device(joint_partners(count, self.max_joint, self.generator), latents.device)
        return denoiser.joint(torch.arange(count), latents, step, partners)


def _bounded_example(request: ExampleRequest) -> tuple[torch.Tensor, ...]:
    """The keyframe pass's inputs and each keyframe's partners: ``max_joint_keyframes`` of the run's
    options, else one fewer than the keyframes (so the example is bounded)."""
    limit = getattr(request.options, "max_joint_keyframes", None) or max(1, request.frames - 1)
    partners = joint_partners(request.frames, limit, request.generator)
    return (*branched_example(request), partners.to(request.device))


def _propagation_example(request: ExampleRequest) -> tuple[torch.Tensor, ...]:
    """A chunk's inputs with the records of keyframes [1, 0] of a two-keyframe pass (run eagerly through
    ``request.run``) and weights that blend both."""
    if request.run is None:
        raise ValueError("the propagation pass's example needs request.run: its records come from the keyframe pass")
    _, *records = request.run("keyframe", branched_example(dataclasses.replace(request, frames=2)))
    slots = torch.tensor([1, 0], device=request.device)
    weights = torch.linspace(0.9, 0.6, request.frames, device=request.device)
    return (*branched_example(request), weights, *select_keyframes(records, slots))


KEYFRAME = PassSpec(
    name="keyframe", build=KeyframePass, example=branched_example, returns_records=True,
    description="the keyframes denoised jointly with extended attention, recording each block's features and outputs",
)  # fmt: skip
KEYFRAME_BOUNDED = PassSpec(
    name="keyframe_bounded", build=BoundedKeyframePass, example=_bounded_example, returns_records=True,
    batched_inputs={"latents": "rows", "text": "rows", "partners": "frames"}, kind="keyframe",
    description="the keyframe pass with each keyframe attending to its partners only (--max-joint-keyframes)",
)  # fmt: skip
PROPAGATION = PassSpec(
    name="propagation", build=PropagationPass, example=_propagation_example, searches_nearest=True,
    batched_inputs={"latents": "rows", "text": "rows", "weights": "frames"},
    description="a chunk's self-attention taken from its two keyframes' along nearest-neighbour correspondences",
)  # fmt: skip


@hookimpl
def register_propagators(register):
    register(TokenFlow())


@hookimpl
def register_passes(register):
    register(KEYFRAME)
    register(KEYFRAME_BOUNDED)
    register(PROPAGATION)
