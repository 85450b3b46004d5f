"""What the engine tests share: the tiny model, every pass's inputs and eager outputs, and an eager whole run
of the shapes the engine runs use (8 frames of 64x48, B = 4, batch 8), so builds and runs share entries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_clip
from vedit import plugins
from vedit.method.passes import joint_partners, select_keyframes
from vedit.method.unet import COND, SOURCE, UNCOND
from vedit.model.loading import load_model
from vedit.pipeline.edit import edit
from vedit.runtime.runner import Passes
from vedit_plugins.editors.pnp import CONV_LAYERS, QK_LAYERS
from vedit_plugins.propagators.tokenflow import blend_weights

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
    """Inputs of every pass, with real records from an eager keyframe pass."""
    gen = torch.Generator().manual_seed(4)
    embeds = dict(zip((SOURCE, UNCOND, COND), sd.encode_prompt(["a cat", "", "a dog"]).split(1)))
    text = lambda n: torch.cat([embeds[b].expand(n, -1, -1) for b in (SOURCE, UNCOND, COND)])  # noqa: E731
    t, flags = torch.tensor(601), torch.tensor([True, True])
    keyframe = (torch.randn(3 * K, 4, H, W, generator=gen), t, text(K), flags)
    _, records = passes.keyframe(*keyframe)
    chosen = select_keyframes(records, torch.tensor([1, 0]))
    weights = blend_weights(range(4, 8), 1, B)
    return {
        "plain": (torch.randn(8, 4, H, W, generator=gen), t, embeds[SOURCE].expand(8, -1, -1).contiguous()),
        "frames": (torch.randn(3 * B, 4, H, W, generator=gen), t, text(B), torch.tensor([True, False])),
        "keyframe": keyframe,
        # three keyframes, each attending to two of them (--max-joint-keyframes 2)
        "keyframe_bounded": (torch.randn(9, 4, H, W, generator=gen), t, text(3), flags, joint_partners(3, 2, gen)),
        "propagation": (torch.randn(3 * B, 4, H, W, generator=gen), t, text(B), flags, weights, *chosen),
    }


def run_all(passes: Passes, inputs) -> dict[str, list[torch.Tensor]]:
    out = {}
    for name, args in inputs.items():
        result = {
            "plain": passes.plain,
            "frames": passes.frames,
            "propagation": lambda *a: passes.propagate(*a[:5], a[5:]),
        }.get(name)
        if name in ("keyframe", "keyframe_bounded"):
            eps, records = passes.keyframe(*args)
            out[name] = [eps, *records]
        else:
            out[name] = [result(*args)]
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
