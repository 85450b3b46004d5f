"""DDIM inversion of every frame, its on-disk trajectory format and the inversion cache.

Trajectory file (safetensors, one file):

    clean              (N, 4, h, w)  VAE posterior mean × scaling factor (z_0)
    latents_t{t:04d}   (N, 4, h, w)  one tensor per timestep t of the sampling schedule, and one
                                     for the noisiest inversion timestep (z_T)

Metadata (string → string): ``format`` ("vedit-trajectory/1"), ``timesteps`` (JSON list of the
sampling schedule, noisiest first), ``noisiest`` (the noisiest inversion timestep), ``frames``,
``height``/``width`` (pixels), ``model``, ``fingerprint``, ``revision``, ``source_prompt``,
``inversion_steps``, ``steps``, ``dtype``, ``frames_sha256``. Tensors are stored in the dtype the
inversion ran in; frames are in clip order.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import InputError

FORMAT = "vedit-trajectory/1"


def _name(t: int) -> str:
    return f"latents_t{int(t):04d}"


@dataclass
class Trajectory:
    """Inverted latents of every frame at every timestep of the sampling schedule, plus z_T."""

    clean: torch.Tensor
    latents: dict[int, torch.Tensor]
    timesteps: list[int]
    noisiest: int
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return self.clean.shape[0]

    def at(self, t: int, frames: torch.Tensor | None = None) -> torch.Tensor:
        latents = self.latents[int(t)]
        return latents if frames is None else latents[frames.cpu()]

    def ddim_noise(self, alphas_cumprod: torch.Tensor) -> torch.Tensor:
        """ε = (z_T − √ᾱ_T z_0) / √(1 − ᾱ_T): the noise that DDIM inversion found for each frame."""
        alpha = alphas_cumprod[self.noisiest].double()
        z_t, z_0 = self.latents[self.noisiest].double(), self.clean.double()
        return ((z_t - alpha.sqrt() * z_0) / (1 - alpha).sqrt()).to(self.clean.dtype)

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary sibling, then rename)."""
        path = Path(path)
        tensors = {"clean": self.clean.contiguous().cpu()}
        for t, latents in self.latents.items():
            tensors[_name(t)] = latents.contiguous().cpu()
        metadata = dict(self.metadata)
        metadata.update(format=FORMAT, timesteps=json.dumps(self.timesteps), noisiest=str(self.noisiest))
        metadata.setdefault("frames", str(self.num_frames))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Trajectory":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"inversion file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                if metadata.get("format") != FORMAT:
                    raise InputError(f"{path} is not a vedit trajectory (format {metadata.get('format')!r})")
                timesteps = [int(t) for t in json.loads(metadata["timesteps"])]
                noisiest = int(metadata["noisiest"])
                clean = f.get_tensor("clean")
                latents = {t: f.get_tensor(_name(t)) for t in [*timesteps, noisiest]}
        except InputError:
            raise
        except Exception as error:
            raise InputError(f"{path} is not a readable vedit trajectory: {error}") from None
        return cls(clean=clean, latents=latents, timesteps=timesteps, noisiest=noisiest, metadata=metadata)


def inversion_timesteps(scheduler: Any, inversion_steps: int) -> list[int]:
    """The inversion schedule, least noisy first; timesteps the model was not trained on are dropped.

    (With ``steps_offset`` 1 and 1000 steps the schedule would reach t = 1000.)
    """
    scheduler.set_timesteps(inversion_steps)
    limit = scheduler.config.num_train_timesteps
    return sorted(int(t) for t in scheduler.timesteps if int(t) < limit)


@torch.no_grad()
def invert(
    unet: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler: Any,
    clean_latents: torch.Tensor,
    source_embeds: torch.Tensor,
    *,
    inversion_steps: int,
    steps: int,
    batch_size: int = 8,
    on_step: Callable[[int, int], None] | None = None,
) -> Trajectory:
    """DDIM inversion (Song et al. 2021, eq. 12 run backwards) with the source prompt, guidance 1.

    ``unet(latents, t, text)`` returns ε. Keeps every frame's latent at each timestep of the
    ``steps``-step sampling schedule and at the noisiest inversion timestep.
    """
    scheduler.set_timesteps(steps)
    keep = [int(t) for t in scheduler.timesteps]
    schedule = inversion_timesteps(scheduler, inversion_steps)
    missing = sorted(set(keep) - set(schedule))
    if missing:
        raise ValueError(
            f"{inversion_steps} inversion steps do not pass through the {steps}-step sampling schedule "
            f"(timesteps {missing[:3]}...); use a multiple of {steps}"
        )
    alphas = scheduler.alphas_cumprod.to(torch.float64)
    final_alpha = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64)
    x = clean_latents.clone()
    stored: dict[int, torch.Tensor] = {}
    for i, t in enumerate(schedule):
        alpha_t = alphas[t]
        alpha_prev = alphas[schedule[i - 1]] if i > 0 else final_alpha
        for b in range(0, x.shape[0], batch_size):
            x_b = x[b : b + batch_size]
            text = source_embeds.expand(x_b.shape[0], -1, -1)
            eps = unet(x_b, torch.tensor(t, device=x.device), text)
            x0 = (x_b - (1 - alpha_prev).sqrt().to(x_b) * eps) / alpha_prev.sqrt().to(x_b)
            x[b : b + batch_size] = alpha_t.sqrt().to(x_b) * x0 + (1 - alpha_t).sqrt().to(x_b) * eps
        if t in keep or i == len(schedule) - 1:
            stored[t] = x.detach().cpu().clone()
        if on_step is not None:
            on_step(i + 1, len(schedule))
    return Trajectory(
        clean=clean_latents.detach().cpu().clone(),
        latents=stored,
        timesteps=keep,
        noisiest=schedule[-1],
    )


@torch.no_grad()
def reconstruct(
    unet: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler: Any,
    trajectory: Trajectory,
    source_embeds: torch.Tensor,
    *,
    inversion_steps: int,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """DDIM sampling (η = 0, guidance 1, source prompt) from z_T back down the inversion schedule.

    The exact reverse of :func:`invert`; with a faithful inversion it returns z_0 (N, 4, h, w).
    """
    schedule = inversion_timesteps(scheduler, inversion_steps)
    alphas = scheduler.alphas_cumprod.to(torch.float64)
    final_alpha = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64)
    x = trajectory.latents[trajectory.noisiest].to(device=device, dtype=source_embeds.dtype).clone()
    for i in reversed(range(len(schedule))):
        t = schedule[i]
        alpha_t = alphas[t]
        alpha_prev = alphas[schedule[i - 1]] if i > 0 else final_alpha
        for b in range(0, x.shape[0], batch_size):
            x_b = x[b : b + batch_size]
            eps = unet(x_b, torch.tensor(t, device=x.device), source_embeds.expand(x_b.shape[0], -1, -1))
            x0 = (x_b - (1 - alpha_t).sqrt().to(x_b) * eps) / alpha_t.sqrt().to(x_b)
            x[b : b + batch_size] = alpha_prev.sqrt().to(x_b) * x0 + (1 - alpha_prev).sqrt().to(x_b) * eps
    return x


# cache -----------------------------------------------------------------------------------------


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where inversions are cached: ``cache_dir``, ``$VEDIT_CACHE_DIR``, or the user cache folder."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("VEDIT_CACHE_DIR"):
        return Path(os.environ["VEDIT_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vedit"


def cache_key(
    *,
    frames_sha256: str,
    fingerprint: str,
    size: tuple[int, int],
    inversion_steps: int,
    steps: int,
    source_prompt: str,
    dtype: str,
) -> str:
    """A stable key over everything the inverted latents depend on."""
    fields = {
        "format": FORMAT,
        "frames": frames_sha256,
        "model": fingerprint,
        "size": list(size),
        "inversion_steps": inversion_steps,
        "steps": steps,
        "source_prompt": source_prompt,
        "dtype": dtype,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class CacheEntry:
    path: Path
    size_bytes: int
    modified: float
    metadata: dict[str, str]


class InversionCache:
    """A folder of trajectory files named by :func:`cache_key`."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = cache_root(root) / "inversions"

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def get(self, key: str) -> Trajectory | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            trajectory = Trajectory.load(path)
        except InputError:
            path.unlink(missing_ok=True)  # a damaged entry is dropped and rebuilt
            return None
        os.utime(path)  # most recently used
        return trajectory

    def put(self, key: str, trajectory: Trajectory) -> Path:
        return trajectory.save(self.path(key))

    def entries(self) -> list[CacheEntry]:
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.glob("*.safetensors")):
            try:
                with safe_open(str(path), framework="pt") as f:
                    metadata = f.metadata() or {}
            except Exception:
                metadata = {"error": "unreadable"}
            stat = path.stat()
            found.append(CacheEntry(path, stat.st_size, stat.st_mtime, metadata))
        return found

    def clear(self) -> tuple[int, int]:
        """Delete every entry; returns (files, bytes) removed."""
        files = freed = 0
        for entry in self.entries():
            entry.path.unlink(missing_ok=True)
            files += 1
            freed += entry.size_bytes
        return files, freed


def describe_age(seconds: float) -> str:
    age = time.time() - seconds
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= span:
            return f"{int(age // span)}{unit} ago"
    return "just now"
