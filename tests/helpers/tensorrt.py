"""What the TensorRT tests share: the propagation chunks built for, stand-in pass inputs, a stand-in GPU and
a build target."""

from __future__ import annotations

import pytest
import torch

from vedit.runtime.engine_cache import EngineCache
from vedit.runtime.runner import BuildTarget

BATCHES = (9, 12)  # propagation chunks of 3 and 4 frames


def fake_inputs(pass_name: str, frames: int, blocks: int = 2) -> tuple[tuple[str, ...], tuple[torch.Tensor, ...]]:
    per = 1 if pass_name == "plain" else 3
    names = ["latents", "t", "text"]
    tensors = [torch.zeros(per * frames, 4, 8, 8), torch.tensor(501), torch.zeros(per * frames, 77, 32)]
    if pass_name != "plain":
        names.append("flags")
        tensors.append(torch.ones(2, dtype=torch.bool))
    if pass_name == "propagation":
        names.append("weights")
        tensors.append(torch.zeros(frames))
        for block in range(blocks):
            names += [f"features_{block}", f"outputs_{block}"]
            tensors += [torch.zeros(2, 64, 16), torch.zeros(6, 64, 16)]
    return tuple(names), tuple(tensors)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device as far as the key parts can tell: capability and name are asked of torch."""
    gpu = {"capability": (9, 0), "name": "NVIDIA H200"}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: gpu["capability"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu["name"])
    return gpu


def make_target(tmp_path, *, batches=BATCHES, dtype=torch.float16, device="cuda", messages=None, name="propagation"):
    say = messages.append if messages is not None else print
    return BuildTarget(
        pass_name=name, batches=tuple(batches), device=torch.device(device), dtype=dtype, fingerprint="weights-1",
        cache=EngineCache(tmp_path / "engines", message=say), message=say, layers="layers-1",
    )  # fmt: skip
