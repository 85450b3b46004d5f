"""What the checksums of :mod:`vedit.cache.checksums` cost: the hashes' speed, an edit's read of its
trajectory with and without its checks, and the check of an engine cache file.

* ``hash``: CRC-32 (zlib, which vedit uses), SHA-256 and BLAKE2b over one buffer in memory, taking
  turns round by round; GB/s.
* ``trajectory``: a trajectory of ``frames`` frames at ``size`` (latents of size / 8) and ``steps``
  steps in each dtype, read as an edit reads it: loaded (the metadata and ``clean`` read), then
  each step's latents copied out of the file's map once, as the denoising loop takes them. A is the
  file without checksums, as vedit wrote it before it kept them (read unchecked); B is the file as
  vedit writes it now (every tensor checked as it is read). A and B alternate after a warm-up, both
  read from the page cache: that is the check's worst case, since from a disk the read costs more
  and the hashing no more. ``added_s`` (B − A, medians) is what the checks add to an edit.
* ``engine file``: one file of ``file_gb`` GB checked as the engine cache checks every file on
  every load (:func:`vedit.cache.checksums.file_digest`), against the SHA-256 that entries built before
  checksums are checked with (:func:`vedit.cache.checksums.file_sha256`), from the page cache.

Every figure is given on two clocks: ``wall`` (``time.perf_counter``) and ``thread cpu``, the
calling thread's CPU time (``time.thread_time``), which time spent waiting for a core that another
process holds does not inflate. The hashing runs on the calling thread, so on the second clock
B − A is the checks' own cost.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._common import Stats, alternate, document, finish, header, say, show, vs_rows

HASHES: dict[str, Callable[[Any], Any]] = {
    "crc32": zlib.crc32,
    "sha256": lambda data: hashlib.sha256(data).digest(),
    "blake2b": lambda data: hashlib.blake2b(data).digest(),
}
GB = 1e9  # throughput in decimal GB/s, as disks and memory are rated


CLOCKS = ("wall", "thread cpu")


def _clocked(call: Callable[[], Any]) -> dict[str, float]:
    """Seconds of one call on each of :data:`CLOCKS`."""
    wall, cpu = time.perf_counter(), time.thread_time()
    call()
    return {"wall": time.perf_counter() - wall, "thread cpu": time.thread_time() - cpu}


def _in_turns(check: str, calls: dict[str, Callable[[], Any]], size: int, repeats: int, warmup: int) -> list[dict]:
    """Each call's seconds and GB/s over ``size`` bytes, the calls taking turns round by round
    (warm-up rounds untimed), so that a drift of the machine falls on all of them alike."""
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in calls}
    for round_index in range(warmup + repeats):
        for name, call in calls.items():
            seconds = _clocked(call)
            if round_index >= warmup:
                samples[name].append(seconds)
    rows = []
    for name, taken in samples.items():
        for clock in CLOCKS:
            stats = Stats.of(s[clock] for s in taken)
            rows.append({"check": check, "case": name, "clock": clock, "bytes": size, **stats.as_dict(),
                         "gb_per_s": round(size / stats.median / GB, 3)})  # fmt: skip
    return rows


def _trajectory_files(
    folder: Path, frames: int, size: tuple[int, int], steps: int, dtype: torch.dtype
) -> tuple[Path, Path]:
    """A random trajectory written as an inversion writes it (step by step, with checksums), and the
    same tensors in a file without checksums."""
    from diffusers import DDIMScheduler
    from safetensors.torch import save_file

    from vedit.cache.checksums import KEY
    from vedit.method.ddim import inversion_timesteps, sampling_timesteps
    from vedit.method.trajectory import Trajectory, TrajectoryWriter
    from vedit.model.builders import SD_SCHEDULER_CONFIG

    scheduler = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    timesteps = sampling_timesteps(scheduler, steps)
    noisiest = max(inversion_timesteps(scheduler, steps))
    generator = torch.Generator().manual_seed(0)
    latents = lambda: torch.randn(frames, 4, size[1] // 8, size[0] // 8, generator=generator).to(dtype)  # noqa: E731
    checked = folder / f"checked-{dtype}.safetensors"
    writer = TrajectoryWriter(checked)
    writer.begin(latents(), timesteps, noisiest)
    for t in dict.fromkeys([*timesteps, noisiest]):
        writer.put(t, latents())
    written = writer.finish()
    whole = Trajectory.load(checked, mapped=False)
    tensors = {"clean": whole.clean, **{f"latents_t{t:04d}": x for t, x in whole.latents.items()}}
    unchecked = folder / f"unchecked-{dtype}.safetensors"
    save_file(tensors, str(unchecked), metadata={k: v for k, v in written.metadata.items() if k != KEY})
    return unchecked, checked


def _read_as_an_edit(path: Path) -> None:
    """Load a trajectory file and take each step's latents once, as an edit does."""
    from vedit.method.trajectory import Trajectory

    trajectory = Trajectory.load(path)
    for t in trajectory.timesteps:
        trajectory.at(t)
    trajectory.latents[trajectory.noisiest]


def _engine_file(path: Path, gigabytes: float) -> int:
    """A file of ``gigabytes`` GB of random bytes, written 64 MB at a time; its size."""
    total = int(gigabytes * GB)
    generator = np.random.default_rng(0)
    with open(path, "wb") as handle:
        for start in range(0, total, 64 << 20):
            handle.write(generator.bytes(min(64 << 20, total - start)))
    return total


def run_checksums_suite(
    *,
    frames: int,
    size: tuple[int, int],
    steps: int,
    dtypes: list[torch.dtype],
    file_gb: float,
    hash_mb: int,
    repeats: int,
    warmup: int,
    json_out: bool = False,
    save: str | None = None,
) -> dict:
    from vedit.cache.checksums import file_digest, file_sha256
    from vedit.model.device import dtype_name

    say(f"bench checksums: hashing {hash_mb} MB in memory")
    data = memoryview(np.random.default_rng(0).bytes(hash_mb << 20))
    rows = _in_turns(
        "hash", {name: (lambda fn=fn: fn(data)) for name, fn in HASHES.items()}, len(data), repeats, warmup
    )
    with tempfile.TemporaryDirectory(prefix="vedit-bench-checksums-") as tmp:
        for dtype in dtypes:
            say(
                f"bench checksums: a {frames}-frame, {steps}-step trajectory in {dtype_name(dtype)}, "
                "read unchecked and checked"
            )
            unchecked, checked = _trajectory_files(Path(tmp), frames, size, steps, dtype)
            pairing = alternate(lambda path=unchecked: _clocked(lambda: _read_as_an_edit(path)),
                                lambda path=checked: _clocked(lambda: _read_as_an_edit(path)),
                                pairs=repeats, warmup=warmup)  # fmt: skip
            for row in vs_rows(pairing, key_fields=("clock",)):
                row = {"check": "trajectory", "case": dtype_name(dtype), "bytes": checked.stat().st_size, **row}
                row.update(median_s=row["b_median_s"], added_s=round(row["b_median_s"] - row["a_median_s"], 6))
                rows.append(row)
            unchecked.unlink()
            checked.unlink()
        if file_gb > 0:
            say(f"bench checksums: checking a {file_gb:g} GB engine cache file")
            path = Path(tmp) / "engine.bin"
            total = _engine_file(path, file_gb)
            calls = {"crc32": lambda: file_digest(path), "sha256": lambda: file_sha256(path)}
            rows += _in_turns("engine file", calls, total, repeats, warmup)
    settings = {
        "frames": frames, "size": f"{size[0]}x{size[1]}", "steps": steps, "dtypes": [dtype_name(d) for d in dtypes],
        "file_gb": file_gb, "hash_mb": hash_mb,
    }  # fmt: skip
    head = header("checksums", device="cpu", dtype=None, settings=settings, warmup=warmup, repeats=repeats)
    head["timing"].update(
        clock="wall (time.perf_counter) and the calling thread's CPU time (time.thread_time)",
        statistic="median, with min and max; trajectory reads alternate unchecked (A) and checked (B)",
    )
    doc = document("checksums", head, rows, key_fields=("check", "case", "clock"), value_field="median_s")
    return finish(doc, _render, json_out=json_out, save=save)


def _render(doc: dict) -> None:
    rows, s = doc["rows"], doc["header"]["settings"]
    speed = [r for r in rows if r["check"] != "trajectory"]
    show(
        "hashing: in memory, and an engine cache file from the page cache",
        ["check", "hash", "clock", "MB", "median s (min–max)", "GB/s"],
        [[r["check"], r["case"], r["clock"], round(r["bytes"] / 2**20),
          Stats(r["median_s"], r["min_s"], r["max_s"], r["samples_s"]).text(digits=4), r["gb_per_s"]] for r in speed],
    )  # fmt: skip
    show(
        f"reading a trajectory as an edit does: {s['frames']} frames at {s['size']}, {s['steps']} steps; "
        "A unchecked, B checked",
        ["dtype", "clock", "file MB", "A median s", "B median s", "B/A median (min–max)", "B/A pair by pair",
         "added s"],
        [[r["case"], r["clock"], round(r["bytes"] / 2**20), f"{r['a_median_s']:.4f}", f"{r['b_median_s']:.4f}",
          f"{r['ratio_median']:.3f} ({r['ratio_min']:.3f}–{r['ratio_max']:.3f})",
          " ".join(f"{x:.3f}" for x in r["ratios"]), f"{r['added_s']:.4f}"]
         for r in rows if r["check"] == "trajectory"],
    )  # fmt: skip
