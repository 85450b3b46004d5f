"""A clip's inverted trajectory: every frame's latents at each timestep kept, held in memory or in
its file (read memory-mapped, written step by step as the inversion runs), and the file's format.

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
import json
import mmap
import os
import struct
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
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
from ..cache.files import failure_reason, partial_prefix
from ..errors import InputError
from ..runtime.transfer import to_host
from .prediction import clean_and_noise

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
        """ε = (z_T − √ᾱ_T z_0) / √(1 − ᾱ_T): the noise that DDIM inversion found for each frame.

        The same whatever the model predicts (z_0 in the place of a predicted clean latent), and finite at
        ᾱ_T = 0 (zero terminal SNR), where it is z_T itself."""
        alpha = alphas_cumprod[self.noisiest].double()
        z_t, z_0 = self.latents[self.noisiest].double(), self.clean.double()
        return clean_and_noise("sample", z_0, z_t, alpha.sqrt(), (1 - alpha).sqrt())[1].to(self.clean.dtype)

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
    ) -> Trajectory:
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
        self.failed = failure_reason(error)

    def finish(self) -> Trajectory:
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

    def _in_memory(self) -> Trajectory:
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
