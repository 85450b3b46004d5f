"""What the engine tests share: the tiny model, every pass's inputs and eager outputs, and an eager whole run
of the shapes the engine runs use (8 frames of 64x48, B = 4, batch 8), so builds and runs share entries."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_clip
from vedit import plugins
from vedit.model.loading import load_model
from vedit.pipeline.edit import edit
from vedit.runtime.runner import Passes
from vedit_plugins.editors.pnp import CONV_LAYERS, QK_LAYERS

# The shapes of the whole runs (tests/e2e/test_engines.py: 8 frames of 64x48, B = 4, batch 8), so that the per-pass
# builds and the runs share entries (and inductor's own cache, for compile).
H, W, K, B = 6, 8, 2, 4


ENGINES = ["torchscript", "onnxruntime", "compile"]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def sd():
    return load_model("tiny", device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engines")


def pass_inputs(sd, passes: Passes) -> dict[str, tuple[torch.Tensor, ...]]:
    """Inputs of every built-in pass, made by each pass's own example (the propagation pass's records
    from an eager keyframe pass), with the prompts' real embeddings."""
    gen = torch.Generator().manual_seed(4)
    embeds = sd.encode_prompt(["a cat", "", "a dog"])
    options = SimpleNamespace(max_joint_keyframes=2)  # three keyframes, each attending to two of them
    frames = {"plain": 8, "frames": B, "keyframe": K, "keyframe_bounded": 3, "propagation": B}
    inputs = {
        name: passes.example(name, n, (H, W), options=options, embeds=embeds, generator=gen)
        for name, n in frames.items()
    }
    inputs["frames"] = (*inputs["frames"][:3], torch.tensor([True, False]))  # conv injection on, Q/K off
    return inputs


def run_all(passes: Passes, inputs) -> dict[str, list[torch.Tensor]]:
    """Every pass run by name: ε, then the records of a pass that returns them."""
    out = {}
    for name, args in inputs.items():
        result = passes.run(name, args)
        out[name] = list(result) if isinstance(result, tuple) else [result]
    return out


@pytest.fixture(scope="module")
def eager_outputs(sd):
    with Passes(sd, [plugins.get("engine", "eager")], conv_layers=CONV_LAYERS, qk_layers=QK_LAYERS) as passes:
        inputs = pass_inputs(sd, passes)
        return inputs, run_all(passes, inputs)


def passes_with(sd, engine, cache, fn):
    with Passes(
        sd, [plugins.get("engine", engine)], strict=True, conv_layers=CONV_LAYERS, qk_layers=QK_LAYERS, cache=cache
    ) as passes:
        return fn(passes)


def frames_of(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]).astype(np.int16)


@pytest.fixture(scope="module")
def run_clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", frames=8, size=(64, 48))


RUN = dict(
    prompt="a watercolor",
    source_prompt="a test pattern",
    model="tiny",
    steps=2,
    inversion_steps=2,
    chunk_size=B,
    batch_size=8,
    size="64x48",
    output_size="working",
    seed=0,
    device="cpu",
    dtype="fp32",
)


@pytest.fixture(scope="module")
def eager_run(run_clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("eager") / "frames"
    result = edit(run_clip, out, engine="eager", no_cache=True, **RUN)
    return frames_of(out), result
