"""What the two TensorRT engines share (vedit_engines._tensorrt_common): profiles, cache keys, the workspace,
and why an engine cannot run here."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from helpers.tensorrt import (
    fake_gpu,  # noqa: F401  (fixtures, used by name)
    fake_inputs,
    make_target,
)
from vedit.runtime.engine_cache import EngineCache
from vedit.runtime.runner import BuildTarget
from vedit_engines import _tensorrt_common as trt_common
from vedit_engines._tensorrt_common import key_parts, precision_for, profile_shapes, workspace_bytes
from vedit_engines.tensorrt import TensorRT
from vedit_engines.torch_tensorrt import TorchTensorRT


def test_profile_covers_every_batch_of_a_run():
    n, b, k = 10, 4, 3  # 10 frames in chunks of 4, 4 and 2; one keyframe per chunk
    names, example = fake_inputs("propagation", b)
    profile = profile_shapes("propagation", names, example, (3 * b, 3 * (n % b)))
    assert profile["latents"] == ((6, 4, 8, 8), (12, 4, 8, 8), (12, 4, 8, 8))
    assert profile["text"] == ((6, 77, 32), (12, 77, 32), (12, 77, 32))
    assert profile["weights"] == ((2,), (4,), (4,))
    assert profile["t"] == ((), (), ())
    assert profile["flags"] == ((2,), (2,), (2,))
    assert profile["features_1"] == ((2, 64, 16),) * 3 and profile["outputs_1"] == ((6, 64, 16),) * 3

    names, example = fake_inputs("keyframe", k)
    profile = profile_shapes("keyframe", names, example, (3 * k,))
    assert profile["latents"] == ((9, 4, 8, 8),) * 3  # one batch: a fixed shape

    # The example's own batch is always served, even when the list leaves it out.
    names, example = fake_inputs("frames", 5)
    assert profile_shapes("frames", names, example, (6, 12))["latents"] == ((6, 4, 8, 8), (15, 4, 8, 8), (15, 4, 8, 8))

    # The plain pass has one row per frame.
    names, example = fake_inputs("plain", 4)
    assert profile_shapes("plain", names, example, (2, 4))["text"] == ((2, 77, 32), (4, 77, 32), (4, 77, 32))


def test_profile_rejects_what_cannot_be_a_pass_batch():
    names, example = fake_inputs("propagation", 4)
    with pytest.raises(ValueError, match="not whole frames"):
        profile_shapes("propagation", names, example, (10, 12))
    with pytest.raises(ValueError, match="names 8 inputs but the example has 9"):
        profile_shapes("propagation", names[:-1], example, (12,))


def parts_for(target, version="10.3.0"):
    names, example = fake_inputs("propagation", 4)
    profile = profile_shapes("propagation", names, example, target.batches)
    return key_parts(target, "tensorrt", names, profile, tensorrt=version, precision=precision_for(target.dtype))


def test_key_parts_change_with_everything_the_plan_depends_on(tmp_path, fake_gpu):
    cache = EngineCache(tmp_path)
    base = parts_for(make_target(tmp_path))
    assert base["compute_capability"] == "9.0" and base["gpu"] == "NVIDIA H200"
    assert base["tensorrt"] == "10.3.0" and base["precision"] == "fp16" and base["batches"] == "9,12"
    assert '"latents": [[9, 4, 8, 8], [12, 4, 8, 8], [12, 4, 8, 8]]' in base["profile"]
    assert base["shapes"].startswith("[[-1, 4, 8, 8], [], [-1, 77, 32], [2], [-1], [2, 64, 16]")
    assert parts_for(make_target(tmp_path)) == base  # deterministic

    def differs(parts, *, same_folder):
        assert EngineCache.key(parts) != EngineCache.key(base)
        folders = cache.folder(parts, BuildTarget.IDENTITY), cache.folder(base, BuildTarget.IDENTITY)
        assert (folders[0] == folders[1]) is same_folder

    # A new TensorRT or another GPU generation: the same entry, now stale (rebuilt in place).
    differs(parts_for(make_target(tmp_path), version="10.4.0"), same_folder=True)
    fake_gpu["capability"] = (8, 9)
    differs(parts_for(make_target(tmp_path)), same_folder=True)
    fake_gpu["capability"] = (9, 0)
    fake_gpu["name"] = "NVIDIA H100 80GB HBM3"
    differs(parts_for(make_target(tmp_path)), same_folder=True)
    fake_gpu["name"] = "NVIDIA H200"
    # Another precision or other batch sizes: another entry.
    bf16 = parts_for(make_target(tmp_path, dtype=torch.bfloat16))
    assert bf16["precision"] == "bf16"
    differs(bf16, same_folder=False)
    wider = parts_for(make_target(tmp_path, batches=(6, 12)))
    assert '"weights": [[2], [4], [4]]' in wider["profile"]
    differs(wider, same_folder=False)


def test_workspace_is_half_the_free_memory_within_bounds():
    gib = 1 << 30
    assert workspace_bytes(10 * gib) == 5 * gib
    assert workspace_bytes(gib // 2) == gib
    assert workspace_bytes(120 * gib) == 16 * gib


def test_unavailable_reason_checks_library_gpu_and_import(monkeypatch):
    state = {"spec": None, "cuda": False, "failure": None}
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        if name in ("tensorrt", "torch_tensorrt"):
            return state["spec"]
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: state["cuda"])
    monkeypatch.setattr(trt_common, "_import_failure", lambda name: state["failure"])
    engine = TensorRT()
    assert engine.unavailable_reason() == "tensorrt is not installed (pip install tensorrt; needs an NVIDIA GPU)"
    state["spec"] = object()
    assert engine.unavailable_reason() == "needs an NVIDIA GPU with CUDA, and torch.cuda.is_available() is False"
    state["cuda"] = True
    state["failure"] = "OSError: libnvinfer.so.10: cannot open shared object file"
    assert TorchTensorRT().unavailable_reason() == (
        "torch_tensorrt is installed but does not import (OSError: libnvinfer.so.10: cannot open shared object file)"
    )
    state["failure"] = None
    assert engine.unavailable_reason() is None and TorchTensorRT().unavailable_reason() is None
