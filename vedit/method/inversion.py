"""DDIM inversion of every frame, its on-disk trajectory format and the inversion cache.

Trajectory file (safetensors, one file):

    clean              (N, 4, h, w)  VAE posterior mean × scaling factor (z_0)
    latents_t{t:04d}   (N, 4, h, w)  one tensor per timestep t of the sampling schedule, and one
                                     for the noisiest inversion timestep (z_T)

Metadata (string → string): ``format`` ("vedit-trajectory/1"), ``timesteps`` (JSON list of the
sampling schedule, noisiest first), ``noisiest`` (the noisiest inversion timestep), ``frames``,
``height``/``width`` (pixels), ``model``, ``fingerprint``, ``revision``, ``source_prompt``,
``inversion_steps``, ``steps``, ``dtype``, ``frames_sha256``, and ``checksums`` (:mod:`vedit.cache.checksums`:
each tensor's, checked as it is read, and the rest of the metadata's). Tensors are stored in the
dtype the inversion ran in; frames are in clip order.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import mmap
import os
import re
import struct
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..cache.checksums import KEY as CHECKSUMS
from ..cache.checksums import (
    METADATA,
    UNKNOWN,
    ChecksumMismatch,
    check_tensor,
    checksums_of,
    digest,
    metadata_digest,
    with_checksums,
)
from ..config import option_value
from ..errors import ConfigError, InputError, OutputError
from ..runtime.transfer import to_device, to_host, wait
from ..io.files import process_alive

FORMAT = "vedit-trajectory/1"
# The metadata reading a trajectory file needs, and what checking that it fits a run needs besides:
# every file 'vedit invert -o' or the cache writes has all of them.
LOAD_FIELDS = ("format", "timesteps", "noisiest")
RUN_FIELDS = (*LOAD_FIELDS, "width", "height")


class DamagedTrajectory(InputError):
    """A trajectory file whose bytes do not match the checksums written with them (exit 2)."""

    def __init__(self, path: str | Path, why: str):
        super().__init__(f"inversion file {path} is damaged: {why}; make it again with 'vedit invert CLIP -o FILE'")


def _name(t: int) -> str:
    return f"latents_t{int(t):04d}"


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class MappedLatents(Mapping):
    """A trajectory file's per-timestep latents, memory-mapped: ``mapped[t]`` is a read-only view of
    the file's bytes, paged in by the OS when read and dropped again under memory pressure, so a
    long clip's trajectory is never held whole in memory. The file's format is safetensors: an
    8-byte little-endian header length, a JSON header of names, dtypes, shapes and byte offsets,
    then the data.

    The map stays valid if the file is replaced or evicted meanwhile (POSIX keeps the old inode).
    Do not write into the views: copy first (:meth:`Trajectory.at` does).

    With ``checksums`` (:func:`vedit.cache.checksums.checksums_of` of the file's metadata) each timestep
    is checked the first time it is read, which costs one pass over that step's bytes; one that does
    not match raises ``damaged(why)`` (by default a :class:`DamagedTrajectory`). The attribute may
    be replaced: the inversion cache does, to drop an entry found damaged mid-run.
    """

    def __init__(
        self,
        path: str | Path,
        timesteps: list[int],
        checksums: Mapping[str, str] | None = None,
        damaged: Callable[[str], Exception] | None = None,
    ):
        self.checksums = checksums
        self.damaged: Callable[[str], Exception] = damaged or functools.partial(DamagedTrajectory, path)
        self._checked: set[int] = set()
        with open(path, "rb") as handle:
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        (length,) = struct.unpack("<Q", self._map[:8])
        header = json.loads(self._map[8 : 8 + length])
        self._entries: dict[int, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for t in timesteps:
            info = header[_name(t)]
            start, stop = info["data_offsets"]
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            self._entries[int(t)] = (dtype, tuple(info["shape"]), 8 + length + start, stop - start)

    def __getitem__(self, t: int) -> torch.Tensor:
        dtype, shape, offset, size = self._entries[int(t)]
        with warnings.catch_warnings():  # read-only by design: nothing writes into these views
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            flat = torch.frombuffer(self._map, dtype=dtype, count=size // dtype.itemsize, offset=offset)
        if int(t) not in self._checked:
            try:
                check_tensor(_name(t), flat, self.checksums)
            except ChecksumMismatch as error:
                raise self.damaged(str(error)) from None
            self._checked.add(int(t))
        return flat.view(shape)

    def __iter__(self) -> Iterator[int]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class Trajectory:
    """Inverted latents of every frame at every timestep of the sampling schedule, plus z_T."""

    clean: torch.Tensor
    latents: Mapping[int, torch.Tensor]  # a dict, or MappedLatents when loaded from a file
    timesteps: list[int]
    noisiest: int
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return self.clean.shape[0]

    def at(self, t: int, frames: torch.Tensor | None = None) -> torch.Tensor:
        """The latents at timestep ``t`` (of ``frames``, default all): a copy when read from a file's map."""
        latents = self.latents[int(t)]
        if frames is not None:
            return latents[frames.cpu()]
        return latents.clone() if isinstance(self.latents, MappedLatents) else latents

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
        metadata = with_checksums(metadata, tensors)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=partial_prefix(path.name), suffix=".partial", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(
        cls, path: str | Path, *, mapped: bool = True, damaged: Callable[[str], Exception] | None = None
    ) -> "Trajectory":
        """Read a trajectory file. ``clean`` is read whole; the per-timestep latents are
        memory-mapped (``mapped``, the default: read per step, never held whole) or read whole.

        Every tensor is checked against its checksum as it is read: the metadata and ``clean``
        here, each timestep when it is first read (see :class:`MappedLatents`). A mismatch raises
        ``damaged(why)``, by default a :class:`DamagedTrajectory`. Files written before vedit kept
        checksums are read unchecked."""
        path = Path(path)
        metadata = read_metadata(path)
        damaged = damaged or functools.partial(DamagedTrajectory, path)
        checksums = checksums_of(metadata)  # read_metadata has checked the metadata's own
        try:
            timesteps = [int(t) for t in json.loads(metadata["timesteps"])]
            noisiest = int(metadata["noisiest"])
            wanted = [*timesteps, noisiest]
            with safe_open(str(path), framework="pt") as f:
                clean = f.get_tensor("clean")
                names = set(f.keys())
                missing = [_name(t) for t in wanted if _name(t) not in names]
                if missing:
                    raise KeyError(f"no tensor {missing[0]!r}")
                latents: Mapping[int, torch.Tensor] = (
                    MappedLatents(path, wanted, checksums, damaged)
                    if mapped else {t: f.get_tensor(_name(t)) for t in wanted}
                )  # fmt: skip
        except Exception as error:
            raise InputError(f"{path} is not a readable vedit trajectory: {error}") from None
        try:
            check_tensor("clean", clean, checksums)
            if not mapped:
                for t, step in latents.items():
                    check_tensor(_name(t), step, checksums)
        except ChecksumMismatch as error:
            raise damaged(str(error)) from None
        return cls(clean=clean, latents=latents, timesteps=timesteps, noisiest=noisiest, metadata=metadata)


_DTYPE_NAMES = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}


class TrajectoryWriter:
    """Writes a trajectory file while the inversion runs, one timestep at a time, so that the
    trajectory is never held whole in memory: :func:`invert` calls :meth:`begin` (the header and
    the clean latents), :meth:`put` for every timestep kept, and :meth:`finish`, which renames the
    temporary file into place and returns the trajectory read back through its memory map.

    Every shape is known before the first step, so the safetensors header (names, dtypes, shapes,
    byte offsets) is written first and each tensor's bytes go to their place when they arrive. The
    header holds room for the checksums (placeholders as long as a checksum), which the thread
    computes as it writes each tensor and :meth:`finish` writes over the placeholders. The
    copies from the device and the writes run on a thread, a step or two behind the inversion.
    ``path`` None: a temporary file in ``folder`` that is unlinked once mapped (the map keeps it
    readable). ``damaged`` is passed to :meth:`Trajectory.load` when the file is read back.

    A file that cannot be written (a full disk) does not stop the inversion: from the failure on
    the latents are kept in memory, what was written is read back, the temporary file is removed
    and ``on_failure(reason)`` is told once; :attr:`failed` is then set.
    """

    def __init__(
        self,
        path: str | Path | None,
        metadata: dict[str, str] | None = None,
        *,
        folder: str | Path | None = None,
        on_failure: Callable[[str], None] | None = None,
        damaged: Callable[[str], Exception] | None = None,
    ):
        self.path = None if path is None else Path(path)
        self.metadata = dict(metadata or {})
        self.on_failure = on_failure
        self.damaged = damaged
        self.failed: str | None = None
        where = self.path.parent if self.path is not None else folder
        prefix = partial_prefix(self.path.name) if self.path is not None else "vedit-trajectory-"
        fd, self._tmp = tempfile.mkstemp(prefix=prefix, suffix=".partial", dir=where)
        self._file = os.fdopen(fd, "wb")
        self._offsets: dict[str, int] = {}
        self._checksums: dict[str, str] = {}
        self._written: set[str] = set()
        self._memory: dict[str, torch.Tensor] = {}
        self._behind: Any = None

    def begin(self, clean: torch.Tensor, timesteps: list[int], noisiest: int) -> None:
        """Lay out the file for ``clean`` (N, 4, h, w) and one tensor like it per kept timestep."""
        from ..io.threads import WriteBehind

        self.timesteps, self.noisiest = list(timesteps), int(noisiest)
        self._times = {_name(t): int(t) for t in dict.fromkeys([*self.timesteps, self.noisiest])}
        names = ["clean", *self._times]
        self._shape, self._dtype = tuple(clean.shape), clean.dtype
        size = clean.numel() * clean.dtype.itemsize
        entry = {"dtype": _DTYPE_NAMES[clean.dtype], "shape": list(clean.shape)}
        metadata = {
            **self.metadata, "format": FORMAT, "timesteps": json.dumps(self.timesteps), "noisiest": str(self.noisiest),
            "frames": self.metadata.get("frames", str(clean.shape[0])),
        }  # fmt: skip
        self._checksums = {METADATA: metadata_digest(metadata), **{name: UNKNOWN for name in names}}
        self._layout = {"__metadata__": metadata}
        for i, name in enumerate(names):
            self._layout[name] = {**entry, "data_offsets": [i * size, (i + 1) * size]}
        text = self._header()
        data = 8 + len(text)
        self._offsets = {name: data + i * size for i, name in enumerate(names)}
        self._size = size
        try:
            self._file.write(struct.pack("<Q", len(text)) + text)
            self._file.truncate(data + len(names) * size)
        except OSError as error:
            self._fail(error)
        self._behind = WriteBehind(self._write, depth=2, name="vedit-trajectory")
        self.put_named("clean", clean)

    def _header(self) -> bytes:
        """The header's JSON with the checksums known so far: the same length whatever they are."""
        metadata = {**self._layout["__metadata__"], CHECKSUMS: json.dumps(self._checksums)}
        text = json.dumps({**self._layout, "__metadata__": metadata}, separators=(",", ":")).encode()
        return text + b" " * (-len(text) % 8)  # data starts 8-byte aligned

    def put(self, t: int, latents: torch.Tensor) -> None:
        """The latents of every frame at timestep ``t`` (on the device or the host; copied here)."""
        self.put_named(_name(t), latents)

    def put_named(self, name: str, tensor: torch.Tensor) -> None:
        event = None
        host = to_host(tensor)
        if tensor.device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(tensor.device))
        self._behind.put((name, host, event))

    def _write(self, item: tuple[str, torch.Tensor, Any]) -> None:
        name, host, event = item
        if event is not None:
            event.synchronize()
        if self.failed is None:
            try:
                data = host.contiguous().view(torch.uint8).numpy().tobytes()
                self._checksums[name] = digest(data)
                self._file.seek(self._offsets[name])
                self._file.write(data)
                self._written.add(name)
                return
            except OSError as error:
                self._fail(error)
        self._memory[name] = host

    def _fail(self, error: OSError) -> None:
        self.failed = _reason(error)

    def finish(self) -> "Trajectory":
        """Complete the file, move it into place and return it, memory-mapped (or, after a
        failure to write, held in memory)."""
        self._behind.finish()
        missing = sorted(set(self._offsets) - self._written - set(self._memory))
        if missing:
            raise RuntimeError(f"trajectory file left without {missing[0]}")
        if self.failed is None:
            try:
                self._file.seek(8)
                self._file.write(self._header())  # the placeholders' room, now with every checksum
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                if self.path is None:
                    trajectory = Trajectory.load(self._tmp, damaged=self.damaged)
                    Path(self._tmp).unlink(missing_ok=True)
                    return trajectory
                os.replace(self._tmp, self.path)
                return Trajectory.load(self.path, damaged=self.damaged)
            except OSError as error:
                self._fail(error)
        return self._in_memory()

    def _in_memory(self) -> "Trajectory":
        """After a failure: what reached the file read back, with what did not, and the file removed."""
        with contextlib.suppress(OSError):
            self._file.close()
        with open(self._tmp, "rb") as handle:
            for name in self._written - set(self._memory):
                handle.seek(self._offsets[name])
                data = bytearray(handle.read(self._size))
                self._memory[name] = torch.frombuffer(data, dtype=self._dtype).view(self._shape)
        Path(self._tmp).unlink(missing_ok=True)
        if self.on_failure is not None:
            self.on_failure(self.failed or "unknown error")
        latents = {t: self._memory[name] for name, t in self._times.items()}
        return Trajectory(
            clean=self._memory["clean"], latents=latents, timesteps=self.timesteps, noisiest=self.noisiest,
            metadata=dict(self.metadata),
        )  # fmt: skip

    def abort(self) -> None:
        """Remove the temporary file (after a failure of the inversion itself)."""
        if self._behind is not None:
            self._behind.abort()
        with contextlib.suppress(OSError):
            self._file.close()
        Path(self._tmp).unlink(missing_ok=True)


def inversion_timesteps(scheduler: Any, inversion_steps: int) -> list[int]:
    """The inversion schedule, least noisy first; timesteps the model was not trained on are dropped.

    (With ``steps_offset`` 1 and 1000 steps the schedule would reach t = 1000.)
    """
    scheduler.set_timesteps(inversion_steps)
    limit = scheduler.config.num_train_timesteps
    return sorted(int(t) for t in scheduler.timesteps if int(t) < limit)


def sampling_timesteps(scheduler: Any, steps: int) -> list[int]:
    """The ``steps``-step sampling schedule, noisiest first."""
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]


def check_schedules(scheduler: Any, steps: int, inversion_steps: int | None = None) -> None:
    """ConfigError unless ``steps`` fit the model's schedule and the inversion passes through them.

    The stored trajectory holds latents at the sampling schedule's timesteps, so every one of
    them must be visited by the inversion schedule (with SD's "leading" spacing, 3 inversion
    steps never visit the 2-step schedule's t=501; 500 always visit the 50-step one's). Being a
    multiple of ``steps`` is not enough (6 never visit the 3-step schedule's t=667); the error
    names the multiple of ``steps`` nearest to ``inversion_steps`` that passes through.
    """
    limit = scheduler.config.num_train_timesteps
    sampling = sampling_timesteps(scheduler, steps)
    if max(sampling) >= limit:
        raise ConfigError(
            f"{option_value('steps', steps)}: that schedule reaches t={max(sampling)}, past the model's {limit} "
            f"training timesteps; use at most {limit - 1} steps"
        )
    if inversion_steps is None:
        return
    missing = sorted(set(sampling) - set(inversion_timesteps(scheduler, inversion_steps)), reverse=True)
    if missing:
        fitting = [
            n for n in range(steps, limit + 1, steps)
            if not set(sampling) - set(inversion_timesteps(scheduler, n))
        ]
        nearest = min(fitting, key=lambda n: (abs(n - inversion_steps), -n))  # a tie: the finer schedule
        raise ConfigError(
            f"{option_value('inversion_steps', inversion_steps)} does not pass through the {steps}-step sampling "
            f"schedule (it never visits t={missing[0]}); use {option_value('inversion_steps', nearest)}"
        )


def read_metadata(path: str | Path, needs: tuple[str, ...] = LOAD_FIELDS) -> dict[str, str]:
    """A trajectory file's metadata alone, without its tensors, checked against its checksum;
    InputError if it is not a trajectory file or lacks any of ``needs`` (:data:`RUN_FIELDS`: all
    that checking it against a run needs), :class:`DamagedTrajectory` if it is damaged."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"inversion file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as error:
        raise InputError(f"{path} is not a readable vedit trajectory: {error}") from None
    try:
        checksums_of(metadata)
    except ChecksumMismatch as error:
        raise DamagedTrajectory(path, str(error)) from None
    if metadata.get("format", FORMAT) != FORMAT:
        raise InputError(f"{path} is not a vedit trajectory (format {metadata.get('format')!r})")
    missing = ", ".join(repr(name) for name in needs if name not in metadata)
    if missing:
        whose = "was not written by vedit" if "format" not in metadata else "lacks metadata that vedit writes"
        raise InputError(f"{path} {whose}: it has no {missing} metadata; make it with 'vedit invert CLIP -o FILE'")
    return metadata


def is_trajectory(path: str | Path) -> bool:
    """Whether ``path`` is a trajectory file vedit wrote (its metadata says so)."""
    try:
        read_metadata(path)
    except InputError:
        return False
    return True


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
    writer: TrajectoryWriter | None = None,
) -> Trajectory:
    """DDIM inversion (Song et al. 2021, eq. 12 run backwards) with the source prompt, guidance 1.

    ``unet(latents, t, text)`` returns ε. Keeps every frame's latent at each timestep of the
    ``steps``-step sampling schedule and at the noisiest inversion timestep: in memory, or with
    ``writer`` in its file as each is reached (the trajectory returned is then read from it).
    On a failure the writer's temporary file is removed.
    """
    if writer is None:
        return _invert(unet, scheduler, clean_latents, source_embeds, inversion_steps, steps, batch_size, on_step, None)
    try:
        return _invert(unet, scheduler, clean_latents, source_embeds, inversion_steps, steps, batch_size, on_step, writer)
    except BaseException:
        writer.abort()
        raise


def _invert(unet, scheduler, clean_latents, source_embeds, inversion_steps, steps, batch_size, on_step, writer) -> Trajectory:
    check_schedules(scheduler, steps, inversion_steps)
    scheduler.set_timesteps(steps)
    keep = [int(t) for t in scheduler.timesteps]
    schedule = inversion_timesteps(scheduler, inversion_steps)
    alphas = scheduler.alphas_cumprod.to(torch.float64)
    final_alpha = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64)
    x = clean_latents.clone()
    device = x.device
    # Every timestep and DDIM coefficient is sent to the device once, before the loop: inside it,
    # nothing waits for the device (the kept latents are copied back without blocking).
    steps_on_device = to_device(torch.tensor(schedule, dtype=torch.int64), device)
    previous = [alphas[schedule[i - 1]] if i > 0 else final_alpha for i in range(len(schedule))]
    coefficients = to_device(
        torch.stack([
            torch.stack([(1 - prev).sqrt(), prev.sqrt(), alphas[t].sqrt(), (1 - alphas[t]).sqrt()])
            for t, prev in zip(schedule, previous)
        ]).to(x.dtype),
        device,
    )  # (steps, 4): √(1−ᾱ_prev), √ᾱ_prev, √ᾱ_t, √(1−ᾱ_t)
    stored: dict[int, torch.Tensor] = {}
    if writer is not None:
        writer.begin(clean_latents.detach(), keep, schedule[-1])
    for i, t in enumerate(schedule):
        noise_prev, signal_prev, signal_t, noise_t = coefficients[i]
        for b in range(0, x.shape[0], batch_size):
            x_b = x[b : b + batch_size]
            text = source_embeds.expand(x_b.shape[0], -1, -1)
            eps = unet(x_b, steps_on_device[i], text)
            x0 = (x_b - noise_prev * eps) / signal_prev
            x[b : b + batch_size] = signal_t * x0 + noise_t * eps
        if t in keep or i == len(schedule) - 1:
            if writer is not None:
                writer.put(t, x)
            else:
                stored[t] = to_host(x)
        if on_step is not None:
            on_step(i + 1, len(schedule))
    if writer is not None:
        return writer.finish()
    wait(device)
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
    steps_on_device = to_device(torch.tensor(schedule, dtype=torch.int64), x.device)
    previous = [alphas[schedule[i - 1]] if i > 0 else final_alpha for i in range(len(schedule))]
    coefficients = to_device(
        torch.stack([
            torch.stack([(1 - alphas[t]).sqrt(), alphas[t].sqrt(), prev.sqrt(), (1 - prev).sqrt()])
            for t, prev in zip(schedule, previous)
        ]).to(x.dtype),
        x.device,
    )  # (steps, 4): √(1−ᾱ_t), √ᾱ_t, √ᾱ_prev, √(1−ᾱ_prev)
    for i in reversed(range(len(schedule))):
        noise_t, signal_t, signal_prev, noise_prev = coefficients[i]
        for b in range(0, x.shape[0], batch_size):
            x_b = x[b : b + batch_size]
            eps = unet(x_b, steps_on_device[i], source_embeds.expand(x_b.shape[0], -1, -1))
            x0 = (x_b - noise_t * eps) / signal_t
            x[b : b + batch_size] = signal_prev * x0 + noise_prev * eps
    return x


# cache -----------------------------------------------------------------------------------------

# Sizes are shown in binary units everywhere (MB = 2**20 bytes in `vedit cache list`), so a cap in
# GB is 2**30 bytes.
GB = 2**30
MB = 2**20


def gb_to_bytes(gb: float) -> int:
    """``--cache-max-gb`` as the ``max_bytes`` of :class:`InversionCache` (1 GB = 2**30 bytes)."""
    return int(gb * GB)


def partial_prefix(name: str) -> str:
    """The name a temporary file being written in a cache folder starts with: the file it becomes
    and the writing process's id, so that :func:`sweep_partials` can tell a killed writer's
    leftover from a file another run is still writing."""
    return f".{name}.pid{os.getpid()}."


def sweep_partials(folder: Path) -> int:
    """Remove the temporary files that writers killed mid-write (SIGKILL, a power cut) left in a
    cache folder: those whose process no longer exists. Returns how many; never raises."""
    removed = 0
    try:
        leftovers = [item.name for item in os.scandir(folder) if item.name.endswith(".partial")]
    except OSError:
        return 0
    for name in leftovers:
        found = re.search(r"\.pid(\d+)\.[^.]*\.partial$", name)
        if found is None or process_alive(int(found.group(1))):
            continue
        with contextlib.suppress(OSError):
            (folder / name).unlink()
            removed += 1
    return removed


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

    @property
    def key(self) -> str:
        return self.path.stem

    @property
    def source(self) -> str:
        """The clip the entry was inverted from, as it was given ("" for entries without it)."""
        return self.metadata.get("source", "")

    @property
    def content(self) -> str:
        """A short hash of the decoded frames: tells apart two clips at the same path, or finds a moved one."""
        return self.metadata.get("frames_sha256", "")[:12]


def _reason(error: BaseException) -> str:
    """The operating system's words for a failure, without paths or error numbers, on one line."""
    if isinstance(error, FileExistsError):
        # mkdir found a file where the cache folder should be
        return f"{error.filename} is a file, not a folder" if error.filename else "a file is in the way"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    # safetensors reports its own I/O failures (a full disk among them) as SafetensorError text
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = text.removeprefix("Error while serializing: ").removeprefix("I/O error: ")
    text = re.sub(r"\s*\(os error \d+\)", "", text)
    text = re.sub(r"\s*at path \S+$", "", text)
    return text[:160]


def _damage(error: InputError, path: Path) -> str:
    """Why a cached file could not be loaded, without its (long) path."""
    cause = error.__context__  # Trajectory.load raises `from None`, which keeps the original here
    if isinstance(cause, KeyError):
        text = f"no {cause}"
    elif cause is not None:
        text = str(cause).strip() or type(cause).__name__
    else:
        text = str(error).removeprefix(str(path)).strip()
    return (text.splitlines() or ["unreadable"])[0][:160]


def _size(size_bytes: int) -> str:
    return f"{size_bytes / MB:.1f} MB"


def _cap(max_bytes: int) -> str:
    # --cache-max-gb is given in GB, but a cap of a few MB (tests, prune) reads badly as 2.8e-05 GB
    return f"{max_bytes / GB:g} GB" if max_bytes == 0 or max_bytes >= GB // 10 else _size(max_bytes)


def _short(key: str) -> str:
    return f"{key[:8]}…"


class InversionCache:
    """A folder of trajectory files named by :func:`cache_key`, optionally kept under a size cap.

    The cache is a convenience: :meth:`get` and :meth:`put` never raise for problems of the file
    system (no permission, read-only, full disk, a file where a folder should be); they report one
    line through ``warn`` (default :func:`warnings.warn`) and answer as if there were no cache.

    ``max_bytes`` caps the folder's total size. After each :meth:`put` the least recently used
    entries (by modification time, which :meth:`get` refreshes) are deleted until the total is at
    most ``max_bytes``. The entry just written is never deleted by its own put:

    * ``max_bytes=None`` — no cap; nothing is ever evicted.
    * ``max_bytes=0`` — keep only the entry written last: every put deletes all the others, so a
      run's inversion survives only until another clip is inverted.
    * an entry larger than a positive ``max_bytes`` on its own is kept (with one warning) and the
      cache is over the cap until the next put evicts it.

    A :meth:`get` that hits does not evict, so a lowered cap takes effect at the next put (or with
    :meth:`prune`).
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        *,
        max_bytes: int | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be 0 or more, got {max_bytes}")
        self.root = cache_root(root) / "inversions"
        self.max_bytes = max_bytes
        self.warn: Callable[[str], None] = warn if warn is not None else warnings.warn

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def get(self, key: str) -> Trajectory | None:
        """The cached trajectory for ``key``, or None (missing, damaged, or the cache is unreadable)."""
        path = self.path(key)
        try:
            # Opening first separates "cannot read" (keep the entry) from "damaged" (drop it).
            with open(path, "rb"):
                pass
        except (FileNotFoundError, NotADirectoryError):
            return None  # a plain miss; if the folder cannot be created, put says so
        except OSError as error:
            self.warn(f"cannot read the inversion cache in {self.root} ({_reason(error)}); carrying on without it")
            return None
        try:
            trajectory = Trajectory.load(path)
            # z_T is read before the first step (the DDIM noise), like clean: checked now, while a
            # damaged entry can still be computed again instead
            trajectory.latents[trajectory.noisiest]
        except InputError as error:
            if not path.exists():
                return None  # another run evicted it meanwhile
            self._drop_damaged(key, path, _damage(error, path))
            return None
        trajectory.latents.damaged = lambda why: self._damaged_in_use(key, path, why)
        with contextlib.suppress(OSError):
            # A read-only cache still serves hits; only its least-recently-used order goes stale.
            os.utime(path)
        return trajectory

    def _drop_damaged(self, key: str, path: Path, why: str) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            self.warn(
                f"cached inversion {_short(key)} is damaged ({why}); computing it again "
                f"(cannot remove it: {_reason(error)})"
            )
            return
        self.warn(f"cached inversion {_short(key)} is damaged ({why}); computing it again")

    def _damaged_in_use(self, key: str, path: Path, why: str) -> InputError:
        """The error that ends a run which finds a step of its entry damaged only when it reaches
        it (the steps are checked as they are read): the entry is removed, so the same command
        computes it again (and resumes the edit from its last checkpoint)."""
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            return InputError(
                f"cached inversion {_short(key)} is damaged ({why}) and cannot be removed ({_reason(error)}); "
                f"remove it with 'vedit cache rm {key[:12]}' and run the same command again"
            )
        return InputError(
            f"cached inversion {_short(key)} is damaged ({why}); it was removed: the same command computes it again"
        )

    def put(self, key: str, trajectory: Trajectory, *, note: Callable[[str], None] | None = None) -> Path | None:
        """Store ``trajectory`` under ``key`` and apply the size cap; the path, or None if it cannot be written.

        ``note`` receives one line when entries are evicted to stay under the cap.
        """
        path = self.path(key)
        sweep_partials(self.root)
        try:
            # Trajectory.save writes a temporary sibling and renames it, removing it on any failure.
            trajectory.save(path)
        except (OSError, SafetensorError) as error:
            self.warn(f"cannot write the inversion cache in {self.root} ({_reason(error)}); carrying on without it")
            return None
        if self.max_bytes is not None:
            self._apply_cap(key, path, self.max_bytes, note)
        return path

    def writer(self, key: str, metadata: dict[str, str]) -> TrajectoryWriter | None:
        """A :class:`TrajectoryWriter` whose file becomes the entry ``key`` when finished (then call
        :meth:`adopt`); None, with one warning, when the cache cannot be written."""
        def failed(reason: str) -> None:
            self.warn(f"cannot write the inversion cache in {self.root} ({reason}); carrying on without it")

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            sweep_partials(self.root)
            damaged = lambda why: self._damaged_in_use(key, self.path(key), why)  # noqa: E731
            return TrajectoryWriter(self.path(key), metadata, on_failure=failed, damaged=damaged)
        except OSError as error:
            self.warn(f"cannot write the inversion cache in {self.root} ({_reason(error)}); carrying on without it")
            return None

    def adopt(self, key: str, *, note: Callable[[str], None] | None = None) -> Path:
        """Apply the size cap after a writer from :meth:`writer` has put the entry ``key`` in place."""
        path = self.path(key)
        if self.max_bytes is not None:
            self._apply_cap(key, path, self.max_bytes, note)
        return path

    def _apply_cap(self, key: str, path: Path, max_bytes: int, note: Callable[[str], None] | None) -> None:
        try:
            files, freed = self._evict(max_bytes, keep=path)
            size = path.stat().st_size
        except OSError as error:
            self.warn(
                f"cannot prune the inversion cache in {self.root} ({_reason(error)}); "
                f"it may grow past {_cap(max_bytes)}"
            )
            return
        if files and note is not None:
            note(f"evicted {files} cached inversion{'s' if files != 1 else ''} ({_size(freed)}), "
                 f"least recently used first, to keep the cache under {_cap(max_bytes)}")
        # With a cap of 0 the user asked for exactly this (keep only the last entry): no warning.
        if 0 < max_bytes < size:
            self.warn(
                f"cached inversion {_short(key)} ({_size(size)}) is larger than the {_cap(max_bytes)} cache cap; "
                f"it is kept until the next inversion is cached"
            )

    def _scan(self, *, metadata: bool) -> list[CacheEntry]:
        return scan_folder(self.root, metadata=metadata)

    def _evict(self, max_bytes: int, *, keep: Path | None = None) -> tuple[int, int]:
        entries = self._scan(metadata=False)
        total = sum(entry.size_bytes for entry in entries)
        files = freed = 0
        for entry in entries:
            if total <= max_bytes:
                break
            if entry.path == keep:
                continue
            try:
                entry.path.unlink()
            except FileNotFoundError:
                pass  # another run removed it: it no longer counts, but we did not free it
            else:
                files += 1
                freed += entry.size_bytes
            total -= entry.size_bytes
        return files, freed

    def entries(self) -> list[CacheEntry]:
        """Every entry with its metadata, least recently used first; [] when the folder does not exist.

        Raises :class:`OutputError` when the folder cannot be listed.
        """
        try:
            return self._scan(metadata=True)
        except OSError as error:
            raise OutputError(f"cannot read the inversion cache in {self.root}: {_reason(error)}") from None

    def find(self, key: str) -> CacheEntry:
        """The entry whose key is ``key`` or starts with it (a unique prefix, as git accepts).

        Raises :class:`ConfigError` when no entry or more than one matches.
        """
        # Accept a key as it is printed elsewhere: a warning's "1a2b3c4d…" or a file name.
        wanted = key.strip().removesuffix("…").removesuffix(".safetensors").lower()
        if not wanted:
            raise ConfigError("give a cache key or the start of one (see 'vedit cache list')")
        entries = self.entries()
        exact = [entry for entry in entries if entry.key == wanted]
        matches = exact or [entry for entry in entries if entry.key.startswith(wanted)]
        if not matches:
            raise ConfigError(f"no cached inversion has a key starting with {wanted!r} (see 'vedit cache list')")
        if len(matches) > 1:
            shown = ", ".join(entry.key[:12] for entry in matches[:3]) + (", ..." if len(matches) > 3 else "")
            raise ConfigError(
                f"{wanted!r} is the start of {len(matches)} cached inversions' keys ({shown}); give more of the key"
            )
        return matches[0]

    def remove(self, entry: CacheEntry) -> None:
        """Delete one entry (see :meth:`find`); raises :class:`OutputError` if it cannot be deleted."""
        try:
            entry.path.unlink(missing_ok=True)
        except OSError as error:
            raise OutputError(f"cannot remove cached inversion {entry.key}: {_reason(error)}") from None

    def prune(self, max_bytes: int) -> tuple[int, int]:
        """Delete least recently used entries until the total is at most ``max_bytes``; returns (files, bytes).

        Raises :class:`OutputError` when the folder cannot be listed or an entry cannot be deleted.
        """
        try:
            return self._evict(max_bytes)
        except OSError as error:
            raise OutputError(f"cannot prune the inversion cache in {self.root}: {_reason(error)}") from None

    def clear(self) -> tuple[int, int]:
        """Delete every entry; returns (files, bytes) removed.

        Raises :class:`OutputError` when the folder cannot be listed or some entry cannot be deleted
        (after deleting every entry it can).
        """
        files = freed = 0
        failures: list[OSError] = []
        for entry in self.entries():
            try:
                entry.path.unlink(missing_ok=True)
            except OSError as error:
                failures.append(error)
                continue
            files += 1
            freed += entry.size_bytes
        if failures:
            raise OutputError(
                f"cannot remove {len(failures)} cached inversion{'s' if len(failures) != 1 else ''} in {self.root} "
                f"({_reason(failures[0])}); removed {files} ({_size(freed)})"
            )
        return files, freed


def scan_folder(root: Path, *, metadata: bool) -> list[CacheEntry]:
    """Every .safetensors file in ``root``, oldest modification first, with its metadata when
    asked; OSError if the folder cannot be listed. A missing folder is empty."""
    try:
        with os.scandir(root) as listing:
            names = [item.name for item in listing if item.name.endswith(".safetensors")]
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        path = root / name
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue  # removed by another run since the listing
        info: dict[str, str] = {}
        if metadata:
            try:
                with safe_open(str(path), framework="pt") as f:
                    info = f.metadata() or {}
            except Exception:
                info = {"error": "unreadable"}
        found.append(CacheEntry(path, stat.st_size, stat.st_mtime, info))
    found.sort(key=lambda entry: (entry.modified, entry.path.name))
    return found


def describe_age(seconds: float) -> str:
    """How long ago a modification time was, coarsely ("3d ago"); "just now" under a minute or in the future."""
    age = time.time() - seconds
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= span:
            return f"{int(age // span)}{unit} ago"
    return "just now"
