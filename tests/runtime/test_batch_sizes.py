"""Batch sizes (vedit.runtime.batch_sizes): what fits, auto on the CPU, and what --batch-size takes."""

from __future__ import annotations

import pytest

import vedit
from vedit.model.loading import load_model
from vedit.runtime.batch_sizes import CPU_BATCH, Batches, batch_for, choose_batches

OPTIONS = dict(prompt="a painting", model="tiny", steps=2, inversion_steps=2, device="cpu", dtype="fp32", chunk_size=4)


def test_batch_for_fits_the_budget():
    assert batch_for(budget_bytes=1000, fixed_bytes=100, per_item_bytes=100, items=50) == 9
    assert batch_for(budget_bytes=1000, fixed_bytes=100, per_item_bytes=100, items=5) == 5
    assert batch_for(budget_bytes=50, fixed_bytes=100, per_item_bytes=100, items=5) == 1  # never 0
    assert batch_for(budget_bytes=10**12, fixed_bytes=0, per_item_bytes=1, items=1000, cap=64) == 64


def test_auto_batches_are_eight_on_the_cpu_and_a_given_size_is_kept():
    sd = load_model("tiny", device="cpu", dtype="fp32")
    assert choose_batches(sd, "auto", 40, (64, 64)) == Batches(CPU_BATCH, CPU_BATCH, "cpu")
    assert choose_batches(sd, "auto", 3, (64, 64)).unet == 3
    assert choose_batches(sd, 5, 40, (64, 64)) == Batches(5, 5, "given")


def test_batch_size_must_be_auto_or_a_whole_number(clip, tmp_path):
    from vedit.errors import ConfigError

    with pytest.raises(ConfigError, match="^batch_size must be auto or a whole number, got 'lots'"):
        vedit.edit(clip, tmp_path / "out.mp4", batch_size="lots", **OPTIONS)
