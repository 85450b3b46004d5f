"""What ``vedit engines build`` does: :func:`build_engines` builds (or finds in the engine cache) every
pass a run shape would use, so that the run itself starts at once."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from .. import plugins
from ..config import RunConfig, option_value
from ..errors import ConfigError
from ..plugins.options import configure
from ..report import Reporter, SilentReporter
from ..runtime.batch_sizes import choose_batches
from ..runtime.runner import engine_chain
from .plan import branches, editor_layers, nearest_backend, own_options, pass_batches
from .preflight import Preflight, Recording
from .stages import make_passes


@dataclass
class BuiltEngine:
    """One pass built (or found in the engine cache) by :func:`build_engines`."""

    pass_name: str
    batch: int
    engine: str
    seconds: float


@torch.no_grad()
def build_engines(
    config: RunConfig, frames: int, *, size: tuple[int, int], reporter: Reporter | None = None, sd: Any = None
) -> list[BuiltEngine]:
    """Build (or find in the engine cache) every pass a run of ``frames`` frames at ``size`` (W, H)
    would use, so that the run itself starts at once. What ``vedit engines build`` does."""
    from ..model.device import resolve_device, resolve_dtype
    from ..model.loading import load_model

    reporter = Recording(reporter or SilentReporter())
    editor = plugins.get("editor", config.editor)
    propagator = plugins.get("propagator", config.propagator)
    device = sd.device if sd is not None else resolve_device(config.device)
    dtype = sd.dtype if sd is not None else resolve_dtype(config.dtype, device)
    engines, strict, notes = engine_chain(config.engine, device)
    configure([*engines, editor, propagator], config)
    for note in notes:
        reporter.warning(note)
    if size[0] % 8 or size[1] % 8:
        raise ConfigError(f"{option_value('size', f'{size[0]}x{size[1]}')}: both sides must be multiples of 8")
    model = sd or load_model(
        config.model, device=device, dtype=dtype, revision=config.revision, model_config=config.model_config,
        lora=config.lora, embeddings=config.embedding, warn=reporter.warning,
    )  # fmt: skip
    config = config.replace(
        batch_size=choose_batches(model, config.batch_size, frames, size, branches(editor, propagator, config)).unet
    )
    checked = Preflight(None, editor, propagator, [], engines, strict, device, dtype, config.steps, None)  # type: ignore[arg-type]
    batches = pass_batches(config, frames, editor, propagator)
    latent_size = (size[1] // 8, size[0] // 8)
    gen = torch.Generator().manual_seed(0)
    layers = editor_layers(editor, model.family)
    built: list[BuiltEngine] = []
    task = reporter.task("build engines", sum(len(v) for v in batches.values()))
    nearest = nearest_backend(propagator, config, device)
    # The inversion runs the plain pass with no injection, as vedit run and vedit invert build it (the
    # layers are part of an engine's key); the denoising loop's passes take the editor's layers.
    inversion = {name: sizes for name, sizes in batches.items() if name == "plain"}
    loop = {name: sizes for name, sizes in batches.items() if name != "plain"}
    for group, group_layers in ((inversion, ((), ())), (loop, layers)):
        if not group:
            continue
        with make_passes(model, config, checked, reporter, conv_layers=group_layers[0], qk_layers=group_layers[1],
                         nearest=nearest, batches=group) as passes:  # fmt: skip
            for name, sizes in group.items():
                for batch in sizes:
                    mark = time.perf_counter()
                    frames_per_call = batch // passes.spec(name).rows_per_frame
                    inputs = passes.example(
                        name, frames_per_call, latent_size, options=own_options(propagator, config), generator=gen
                    )
                    passes.prepare(name, inputs)(*inputs)
                    built.append(BuiltEngine(name, batch, passes.used[name], time.perf_counter() - mark))
                    task.advance(1)
    return built
