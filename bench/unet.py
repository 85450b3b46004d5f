"""The three UNet passes of a TokenFlow step timed side by side with a plain UNet call.

All figures come from one process and one run, so they compare as ratios even on a noisy
machine: plain forward of the 3B batch (what a per-frame edit costs), the keyframe pass with
extended attention over K keyframes (3K batch), and the propagation pass (3B batch with the
nearest-neighbour gather in place of self-attention).
"""

from __future__ import annotations

import time

import torch

from ._common import save_json, show

TFLOP_PER_IMAGE_512 = 0.80  # SD 1.5 / 2.1 UNet forward at 64×64 latents


def _timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


@torch.no_grad()
def run_unet_suite(*, model, size, frames, chunks, repeats, device, dtype, save) -> list[dict]:
    from vedit import plugins
    from vedit.denoise import Denoiser, EditPlan, Step
    from vedit.models import load_model
    from vedit.unet import COND, SOURCE, UNCOND, CallContext, ControlledUNet
    from vedit.attention import PlainAttention
    from vedit.video import parse_size
    from vedit_plugins.pnp import CONV_LAYERS, QK_LAYERS
    from vedit_plugins.tokenflow import KeyframeAttention, KeyframeRecords, PropagatedAttention, blend_weights
    from vedit.unet import Injection

    width, height = parse_size(size)
    sd = load_model(model, device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    h, w = height // 8, width // 8
    n_frames = frames * chunks
    latents = torch.randn(n_frames, 4, h, w, generator=gen).to(sd.device, sd.dtype)
    source = torch.randn(n_frames, 4, h, w, generator=gen).to(sd.device, sd.dtype)
    embeds = dict(zip((SOURCE, UNCOND, COND), sd.encode_prompt(["a", "", "b"]).split(1)))
    t = torch.tensor(501, device=sd.device)
    plan = EditPlan(
        timesteps=torch.tensor([501]), start_latents=latents, source=lambda t, f: source[f.to(source.device)],
        injection=lambda step: Injection(conv=True, qk=True), conv_layers=CONV_LAYERS, qk_layers=QK_LAYERS,
        needs_source_branch=True,
    )
    step = Step(index=0, t=t, count=1)
    nn = plugins.get("nn_backend", "torch")
    rows = []
    with ControlledUNet(sd.unet, conv_layers=CONV_LAYERS, qk_layers=QK_LAYERS) as controlled:
        denoiser = Denoiser(controlled, plan, embeds, 7.5, with_source=True)
        chunk = torch.arange(frames)
        keys = torch.arange(chunks) * frames
        records = KeyframeRecords()

        def plain():
            batch = torch.cat([source[chunk], latents[chunk], latents[chunk]])
            text = torch.cat([embeds[b].expand(frames, -1, -1) for b in (SOURCE, UNCOND, COND)])
            ctx = CallContext(branches=(SOURCE, UNCOND, COND), frames=frames, attention=PlainAttention())
            controlled(batch, t, text, ctx)

        def keyframe():
            denoiser(keys, latents[keys], step, KeyframeAttention(records))

        def propagate():
            chunk1 = torch.arange(frames, 2 * frames) if chunks > 1 else chunk
            slots = [1, 0] if chunks > 1 else [0]
            weights = blend_weights(range(chunk1[0].item(), chunk1[-1].item() + 1), 1, frames) if chunks > 1 else None
            denoiser(chunk1, latents[chunk1], step, PropagatedAttention(records, slots, weights, nn))

        for name, fn, images in (
            ("plain UNet, 3B batch", plain, 3 * frames),
            ("keyframe pass, 3K batch", keyframe, 3 * chunks),
            ("propagation pass, 3B batch", propagate, 3 * frames),
        ):
            seconds = _timed(fn, repeats, sd.device)
            # The FLOP figure holds for the SD 1.5 / 2.1 UNet only (real or random weights).
            sd_sized = model != "tiny"
            tflops = TFLOP_PER_IMAGE_512 * (h * w) / (64 * 64) * images / seconds if sd_sized else None
            rows.append({"pass": name, "images": images, "ms": round(seconds * 1e3, 2),
                         "images_per_s": round(images / seconds, 2), "approx_tflops": round(tflops, 3) if tflops else None})
    show(
        f"UNet passes: {model} {size} {sd.dtype} on {sd.device}, B={frames}, K={chunks}",
        ["pass", "images", "ms", "images/s", "≈TFLOP/s"],
        [[r["pass"], r["images"], r["ms"], r["images_per_s"], r["approx_tflops"] or "-"] for r in rows],
    )
    save_json(save, {"suite": "unet", "model": model, "size": size, "frames": frames, "chunks": chunks,
                     "device": str(sd.device), "dtype": str(sd.dtype), "rows": rows})
    return rows
