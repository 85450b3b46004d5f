"""Temporal consistency: ``tokenflow`` against the per-frame baseline ``none`` on a translating pattern.

The clip is a smoothed random colour texture that moves right by exactly one latent pixel (8 px)
per frame, so the VAE's latents translate by a whole token; the source clip's DIS flow follows it
(the source scores 0.05 ×10⁻³ along its own flow). Both propagators run through the real
:func:`vedit.pipeline.edit`; the figure is the warp error ``vedit eval`` reports
(:func:`vedit.quality.metrics.pair_warp_error` along :func:`vedit.quality.flow.pair_flows` of the source, same
mask), ×10⁻³, of the written frames. The same error is also taken on the edited latents (captured
on their way to the VAE decoder) along the flow averaged down to the latent grid and divided by 8
(a token is left out when any pixel it covers is), because the tiny model's random VAE decoder
scrambles fine detail and puts a floor under the pixel figure that is the same for both propagators.

The model is a test-only copy of the tiny random SD (:func:`consistency_model`), changed in three
measured ways so that it has the two properties of a trained SD that TokenFlow relies on; with the
plain tiny model the two propagators score the same (ratios 0.98-1.02 in every setting tried),
because:

1. Random self-attention is almost uniform: what varies from token to token is only 4-35% of an
   ``attn1`` output, the rest is the mean over all tokens, nearly the same in every frame, so
   copying it from a keyframe changes little. Queries and keys of every ``attn1`` are scaled by
   ``sharpness`` (logits by its square) so attention picks out similar tokens, and its output
   projection by ``attention_gain`` so self-attention carries a large share of the features.
2. A random UNet's noise prediction is large and does not follow a translation of its input, so
   DDIM inversion scrambles the clip: at the noisiest stored timestep a token of frame 3 finds its
   true counterpart in frame 0 by cosine nearest neighbour 0-5% of the time (chance), and
   TokenFlow's correspondences are noise. The VAE's scaling factor is set so the clip's latents have
   unit standard deviation (what SD's 0.18215 does for its trained VAE; the random VAE's latents
   have 0.03-0.05) and the UNet's ``conv_out`` is scaled by ``eps_gain`` so its prediction stays
   small next to the signal: the inverted latents then stay translated copies, and the first
   full-resolution transformer block finds 60-80% of the true counterparts at the noisiest step (the
   later full-resolution blocks of this model only 1-20%). A larger guidance (30 by default) makes
   up for the smaller prediction so the edit still moves the latents by about 20-30% of their size.

A third run, ``tokenflow`` with scrambled correspondences (every token takes a random keyframe
token), tells the part of the gain that comes from following the source's motion from the part that
comes from merely sharing keyframe outputs. The ``img2img`` editor shows no difference here: its
fresh per-frame noise passes straight through DDIM, since a random UNet cannot predict it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vedit.plugins.hookspecs import hookimpl

from ._common import console, save_json, show

SHIFT = 8  # pixels per frame: one latent pixel, so latents translate by whole tokens
CELL = 8  # texture cell size in pixels
GUIDANCE = 30.0
SCRAMBLED = "scrambled"


def _smooth(image: np.ndarray) -> np.ndarray:
    """Separable binomial [1 4 6 4 1]/16 blur of an (H, W, 3) float image, edges repeated."""
    kernel = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    for axis in (0, 1):
        pad = [(0, 0)] * image.ndim
        pad[axis] = (2, 2)
        padded = np.pad(image, pad, mode="edge")
        length = image.shape[axis]
        image = sum(k * np.take(padded, np.arange(i, i + length), axis=axis) for i, k in enumerate(kernel))
    return image


def translating_clip(folder: Path, frames: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Write ``frames`` PNGs of a texture moving right by :data:`SHIFT` px per frame; returns them (N, H, W, 3)."""
    width, height = size
    canvas_width = width + SHIFT * (frames - 1)
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, size=(-(-height // CELL), -(-canvas_width // CELL), 3)).astype(np.float64)
    canvas = np.repeat(np.repeat(cells, CELL, axis=0), CELL, axis=1)[:height, :canvas_width]
    canvas = np.clip(np.round(_smooth(canvas)), 0, 255).astype(np.uint8)
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    clip = []
    for i in range(frames):
        start = canvas_width - width - SHIFT * i  # the window moves left, so the content moves right
        frame = np.ascontiguousarray(canvas[:, start : start + width])
        Image.fromarray(frame).save(folder / f"{i:04d}.png")
        clip.append(frame)
    return np.stack(clip)


@torch.no_grad()
def consistency_model(
    seed: int, clip: np.ndarray, *, sharpness: float = 8.0, attention_gain: float = 16.0, eps_gain: float = 0.05
):
    """A test-only copy of the tiny random SD with self-attention that matters and a coherent inversion.

    See the module docstring for why each change is made and what was measured without it.
    """
    from vedit.model.loading import load_model

    sd = load_model(f"tiny@{seed}", device="cpu", dtype="fp32")
    images = torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255
    spread = float(sd.encode_images(images).std())
    sd.vae.register_to_config(scaling_factor=float(sd.vae.config.scaling_factor) / spread)
    for name, module in sd.unet.named_modules():
        if name.endswith(".attn1"):
            for projection in (module.to_q, module.to_k):
                projection.weight.mul_(sharpness)
                if projection.bias is not None:
                    projection.bias.mul_(sharpness)
            module.to_out[0].weight.mul_(attention_gain)
            module.to_out[0].bias.mul_(attention_gain)
    sd.unet.conv_out.weight.mul_(eps_gain)
    sd.unet.conv_out.bias.mul_(eps_gain)
    # a different model: never share an inversion cache entry with the plain tiny model
    sd.fingerprint = f"{sd.fingerprint}:consistency-q{sharpness}-a{attention_gain}-e{eps_gain}-s{spread:.6g}"
    return sd


class ScrambledNearest:
    """Nearest-neighbour backend for the control run: every token gets a random keyframe token (seeded)."""

    name = SCRAMBLED
    description = "control for benchmarks: random correspondences instead of cosine nearest neighbours"

    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)

    def nearest(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return torch.randint(keys.shape[0], (queries.shape[0],), generator=self.generator).to(queries.device)


class ScrambledPlugin:
    """Registers :class:`ScrambledNearest` through the public hook, as a third-party plugin would."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    @hookimpl
    def register_nn_backends(self, register):
        register(ScrambledNearest(self.seed))


def edit_with_latents(sd, source: Path, output: Path, **options: Any) -> tuple[np.ndarray, np.ndarray]:
    """Run :func:`vedit.pipeline.edit`; return the written frames (N, H, W, 3) and the edited latents (N, 4, h, w)."""
    from vedit.io.reader import FrameReader
    from vedit.pipeline.edit import edit

    captured: list[torch.Tensor] = []
    decode = sd.decode_latents

    def recording(latents: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        captured.append(latents.detach().float().cpu())
        return decode(latents, batch_size=batch_size)

    sd.decode_latents = recording  # an instance attribute shadows the method for this run only
    try:
        edit(source, output, sd=sd, model="tiny", device="cpu", dtype="fp32", **options)
    finally:
        del sd.decode_latents
    return FrameReader(output).read_all(), torch.cat(captured).numpy()


def latent_pairs(pairs: list, factor: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each source pair's forward flow averaged down to the latent grid (in latent pixels), and the
    excluded mask there: a token is left out when any pixel it covers is."""
    import cv2

    out = []
    for pair in pairs:
        h, w = pair.forward.shape[:2]
        flow = cv2.resize(pair.forward, (w // factor, h // factor), interpolation=cv2.INTER_AREA) / factor
        excluded = pair.excluded[: h // factor * factor, : w // factor * factor]
        excluded = excluded.reshape(h // factor, factor, w // factor, factor).any(axis=(1, 3))
        out.append((flow, excluded))
    return out


def clip_warp_error(frames: np.ndarray, flows: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Warp error ×10⁻³ (:func:`vedit.quality.metrics.pair_warp_error`, the code ``vedit eval`` uses) of
    (N, H, W, C) frames along per-pair (forward flow, excluded mask)."""
    from vedit.quality.metrics import WarpError, pair_warp_error

    error = WarpError()
    for t, (forward, excluded) in enumerate(flows):
        error.add(pair_warp_error(frames[t], frames[t + 1], forward, excluded))
    return error.value


def measure(
    seed: int,
    workdir: Path,
    *,
    frames: int = 12,
    size: tuple[int, int] = (128, 128),
    steps: int = 10,
    editor: str = "pnp",
    chunk_size: int = 4,
    guidance: float = GUIDANCE,
    control: bool = True,
    flow: str = "dis",
) -> dict[str, Any]:
    """Warp errors of ``tokenflow``, ``none`` (and the scrambled control) for one model seed."""
    from vedit import plugins
    from vedit.quality.flow import flow_backend, pair_flows

    workdir = Path(workdir)
    source = workdir / "source"
    clip = translating_clip(source, frames, size)
    pairs = list(pair_flows(clip, flow_backend(flow)))
    flows = [(pair.forward, pair.excluded) for pair in pairs]
    small_flows = latent_pairs(pairs)
    sd = consistency_model(seed, clip)
    options = dict(
        prompt="a watercolor painting",
        steps=steps,
        inversion_steps=steps,
        editor=editor,
        chunk_size=chunk_size,
        seed=seed,
        guidance=guidance,
        size=f"{size[0]}x{size[1]}",
        cache_dir=str(workdir / "cache"),
    )
    runs = [("tokenflow", {"propagator": "tokenflow"}), ("none", {"propagator": "none"})]
    if control:
        runs.append((SCRAMBLED, {"propagator": "tokenflow", "nn_backend": SCRAMBLED}))
    row: dict[str, Any] = {"seed": seed, "editor": editor, "pixel_source": clip_warp_error(clip, flows)}
    manager = plugins.get_plugin_manager()
    plugin_name = f"vedit-bench-scrambled-{seed}"
    if control:
        manager.register(ScrambledPlugin(seed), name=plugin_name)
    try:
        for label, extra in runs:
            edited, latents = edit_with_latents(sd, source, workdir / f"out-{label}", **options, **extra)
            row[f"pixel_{label}"] = clip_warp_error(edited, flows)
            row[f"latent_{label}"] = clip_warp_error(latents.transpose(0, 2, 3, 1), small_flows)
    finally:
        if control:
            manager.unregister(name=plugin_name)
    row["pixel_ratio"] = row["pixel_tokenflow"] / row["pixel_none"]
    row["latent_ratio"] = row["latent_tokenflow"] / row["latent_none"]
    if control:
        row["latent_ratio_vs_scrambled"] = row["latent_tokenflow"] / row[f"latent_{SCRAMBLED}"]
    return row


def run_consistency_suite(
    seeds,
    *,
    frames: int,
    size: str,
    steps: int,
    editor: str,
    chunk_size: int,
    save: str | None,
    guidance: float = GUIDANCE,
) -> list[dict]:
    """Measure every seed, print one table and optionally save the rows as JSON."""
    from vedit.io.frames import parse_size

    torch.set_num_threads(1)  # the tiny model is faster on one thread, and the figures do not depend on it
    working = parse_size(size)
    rows = []
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="vedit-consistency-") as tmp:
            rows.append(
                measure(
                    seed,
                    Path(tmp),
                    frames=frames,
                    size=working,
                    steps=steps,
                    editor=editor,
                    chunk_size=chunk_size,
                    guidance=guidance,
                )
            )
    show(
        f"Warp error, {frames} frames {size} moving {SHIFT} px/frame, {steps} steps, B={chunk_size}, "
        f"guidance {guidance:g}, consistency test model",
        [
            "seed",
            "editor",
            "px tokenflow",
            "px none",
            "ratio",
            "lat tokenflow",
            "lat none",
            "ratio",
            "lat scrambled",
            "tf/scr",
        ],
        [
            [
                r["seed"],
                r["editor"],
                f"{r['pixel_tokenflow']:.2f}",
                f"{r['pixel_none']:.2f}",
                f"{r['pixel_ratio']:.3f}",
                f"{r['latent_tokenflow']:.1f}",
                f"{r['latent_none']:.1f}",
                f"{r['latent_ratio']:.3f}",
                f"{r[f'latent_{SCRAMBLED}']:.1f}",
                f"{r['latent_ratio_vs_scrambled']:.3f}",
            ]
            for r in rows
        ],
    )
    console.print(
        "px: warp error (×10⁻³, as vedit eval reports it) of the written frames along the source's flow; lat: the "
        "same on the edited latents along that flow on the latent grid; scrambled: tokenflow with random "
        "correspondences (control)"
    )
    save_json(
        save,
        {
            "suite": "consistency",
            "frames": frames,
            "size": size,
            "steps": steps,
            "editor": editor,
            "chunk_size": chunk_size,
            "guidance": guidance,
            "shift_px_per_frame": SHIFT,
            "rows": rows,
        },
    )
    return rows
