"""The torch.compile engine (vedit_engines.compile)."""

from __future__ import annotations

import torch

from vedit.runtime.engine_cache import EngineCache


def test_compile_says_when_it_compiles_a_pass_and_how_long_it_took(monkeypatch, tmp_path):
    from vedit.runtime.runner import BuildTarget
    from vedit_engines.compile import Compile

    monkeypatch.setattr(torch, "compile", lambda module, **options: module)  # the messages, not inductor
    said: list[str] = []
    cpu = torch.device("cpu")
    target = BuildTarget("keyframe", (6,), cpu, torch.float32, "tiny", EngineCache(tmp_path), said.append)
    run = Compile().build(torch.nn.Identity(), (torch.ones(6),), target)
    assert said == ["compiling the keyframe pass (batch 6) with torch.compile; once per process"]
    assert torch.equal(run(torch.ones(6)), torch.ones(6)) and torch.equal(run(torch.zeros(6)), torch.zeros(6))
    assert len(said) == 2 and said[1].startswith("compiled the keyframe pass (batch 6) with torch.compile in ")
