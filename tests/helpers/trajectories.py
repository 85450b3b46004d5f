"""Trajectories and inversion-cache entries made for tests."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from vedit.cache.inversions import InversionCache
from vedit.method.trajectory import Trajectory


def trajectory(value: float = 0.0, frames: int = 2, side: int = 8, **metadata: str) -> Trajectory:
    latents = {t: torch.full((frames, 4, side, side), value + t) for t in (501, 1, 751)}
    return Trajectory(
        clean=torch.full((frames, 4, side, side), value),
        latents=latents,
        timesteps=[501, 1],
        noisiest=751,
        metadata=dict(metadata),
    )


def small_trajectory(**metadata: str) -> Trajectory:
    generator = torch.Generator().manual_seed(2)
    latents = {t: torch.randn(3, 4, 6, 8, generator=generator) for t in (501, 1, 751)}
    return Trajectory(clean=torch.randn(3, 4, 6, 8, generator=generator), latents=latents, timesteps=[501, 1],
                      noisiest=751, metadata=dict(metadata))  # fmt: skip


def put_aged(cache: InversionCache, key: str, age: float, value: float = 0.0) -> Path:
    """An entry last used `age` seconds ago."""
    path = cache.put(key, trajectory(value))
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path
