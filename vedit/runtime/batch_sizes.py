"""``--batch-size auto``: batch sizes for the UNet (inversion, per-frame editing) and the VAE, chosen
from the memory free on the device.

On a CUDA GPU each module is run once at batch 1 and once at batch 2, and the growth of the peak
allocation between the two is its memory per image; the batch is as many images as fit in a share
of the free memory, leaving the rest for the keyframe pass's records, the engines' workspaces and
the allocator's fragmentation. On the CPU batches are 8: host memory is rarely the limit, and the
speed per image there does not depend on the batch (the UNet runs near the matrix-product peak).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

CPU_BATCH = 8
MAX_BATCH = 64  # beyond this a larger batch gains nothing measurable and costs latency per step
MEMORY_SHARE = 0.6  # of the free device memory, for one batch's activations


@dataclass(frozen=True)
class Batches:
    unet: int  # frames per inversion / per-frame UNet call
    vae: int  # frames per VAE encode / decode call
    how: str  # "given", "cpu" or "from N GiB free"


def batch_for(budget_bytes: float, fixed_bytes: float, per_item_bytes: float, items: int, cap: int = MAX_BATCH) -> int:
    """The most items (at least 1, at most ``items`` and ``cap``) whose memory fits ``budget_bytes``."""
    if per_item_bytes <= 0:
        fitting = cap
    else:
        fitting = int((budget_bytes - max(0.0, fixed_bytes)) // per_item_bytes)
    return max(1, min(fitting, items, cap))


def peak_growth(run: Callable[[int], Any], device: torch.device) -> tuple[int, int]:
    """(fixed, per item) bytes of ``run(batch)`` on a CUDA device, from its peaks at batches 1 and 2."""
    peaks = []
    for batch in (1, 2):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run(batch)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    per_item = max(1, peaks[1] - peaks[0])
    return max(0, peaks[0] - per_item), per_item


@torch.no_grad()
def choose_batches(model: Any, given: int | str, frames: int, size: tuple[int, int], branches: int = 1) -> Batches:
    """Batch sizes for a run of ``frames`` frames at ``size`` (W, H); ``branches`` images per frame
    in a per-frame UNet call (3 with PnP's source branch, 1 for inversion)."""
    if given != "auto":
        return Batches(int(given), int(given), "given")
    device = model.device
    if device.type != "cuda":
        return Batches(min(CPU_BATCH, max(1, frames)), min(CPU_BATCH, max(1, frames)), "cpu")
    free, _ = torch.cuda.mem_get_info(device)
    budget = free * MEMORY_SHARE
    h, w = size[1] // model.vae_scale_factor, size[0] // model.vae_scale_factor
    text = model.encode_prompt([""], (size[1], size[0]))  # (1, L, D)

    def unet(batch: int) -> None:
        latents = torch.zeros(batch * branches, 4, h, w, device=device, dtype=model.dtype)
        _ = model.unet(latents, 500, **model.unet_inputs(text.expand(batch * branches, -1, -1))).sample

    def vae(batch: int) -> None:
        model.decode_latents(torch.zeros(batch, 4, h, w, device=device, dtype=model.dtype), batch_size=batch)

    unet_fixed, unet_each = peak_growth(unet, device)
    vae_fixed, vae_each = peak_growth(vae, device)
    torch.cuda.empty_cache()
    return Batches(
        batch_for(budget, unet_fixed, unet_each, frames),
        batch_for(budget, vae_fixed, vae_each, frames),
        f"from {free / 2**30:.0f} GiB free",
    )


__all__ = ["Batches", "batch_for", "choose_batches", "peak_growth"]
