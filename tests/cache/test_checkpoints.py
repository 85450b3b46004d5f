"""Checkpoints: the TokenFlow state they hold, and a round trip through the store."""

from __future__ import annotations

import torch

from vedit import plugins
from vedit.cache.checkpoints import Checkpoint, CheckpointStore


def test_tokenflow_state_is_its_generator_and_a_checkpoint_round_trips(tmp_path):
    tokenflow = plugins.get("propagator", "tokenflow")
    tokenflow.generator = torch.Generator().manual_seed(9)
    torch.randint(10, (3,), generator=tokenflow.generator)
    state = tokenflow.state_dict()
    ahead = torch.randint(1000, (5,), generator=tokenflow.generator)
    tokenflow.load_state_dict(state)
    assert torch.equal(torch.randint(1000, (5,), generator=tokenflow.generator), ahead)

    store = CheckpointStore(tmp_path)
    latents = torch.randn(3, 4, 6, 8, dtype=torch.float16)
    path = store.save("k" * 32, Checkpoint(step=2, steps=5, latents=latents, state=state, metadata={"source": "x.mp4"}))
    assert path == tmp_path / "checkpoints" / f"{'k' * 32}.safetensors"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left
    loaded = store.load("k" * 32)
    assert (loaded.step, loaded.steps) == (2, 5) and loaded.metadata["source"] == "x.mp4"
    assert torch.equal(loaded.latents, latents) and loaded.latents.dtype == torch.float16
    assert torch.equal(loaded.state["generator"], state["generator"])
