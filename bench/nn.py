"""Nearest-neighbour backends at the sizes TokenFlow's propagation pass searches.

In the propagation pass of a chunk of B frames, every transformer block matches each of the
B·seq source-branch self-attention inputs (the ``norm1`` output, full feature dim) against the
seq tokens of keyframe i and again against those of keyframe i−1: two searches of B·seq queries
against seq keys per block. For SD 1.5 / 2.1 at 512×512 (64×64 latents) the blocks are

    seq 4096, dim  320: 5 blocks (down_blocks[0] ×2, up_blocks[3] ×3)
    seq 1024, dim  640: 5 blocks (down_blocks[1] ×2, up_blocks[2] ×3)
    seq  256, dim 1280: 5 blocks (down_blocks[2] ×2, up_blocks[1] ×3)
    seq   64, dim 1280: 1 block  (mid_block)

Each backend registered here and able to run is timed at each size, plus ``in-graph``: the
search the propagation pass makes itself when the backend is traceable (the ``torch`` backend),
``vedit.method.attention.cosine_nearest`` on (B, seq, dim) queries; the ``torch`` backend is the same
function on the B·seq queries flattened, blocked over all of them. After a warm-up call of each,
``repeats`` rounds time every backend once in turn (CUDA: events on the current stream, then a
synchronise; elsewhere the wall clock), so a drifting machine load falls on all alike, and the
median, min and max are reported, with the ratio of each backend to ``torch`` and to ``in-graph``
at each size, and the search time of one whole propagation pass (both keyframes, every block).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from ._common import save_json, show

# seq -> (feature dim, transformer blocks at that resolution) for SD 1.5 / 2.1 at 512×512.
SD_BLOCKS = {4096: (320, 5), 1024: (640, 5), 256: (1280, 5), 64: (1280, 1)}
# A seq outside that table is timed as the top level of a smaller image (dim 320, 5 blocks): the
# largest search of a run at that size, and the one the --nn-backend auto crossover is stated in.
TOP_LEVEL = (320, 5)
IN_GRAPH = "in-graph"
SEARCHES_PER_BLOCK = 2  # keyframe i and keyframe i−1 (chunk 0 searches its one keyframe twice)


def _searches(names: list[str] | None, device: torch.device) -> dict[str, Callable]:
    """name -> callable(queries (B, seq, dim), keys (seq, dim)) -> indices (B·seq,)."""
    from vedit import plugins
    from vedit.method.attention import cosine_nearest

    found: dict[str, Callable] = {}
    skipped: list[str] = []
    for name, entry in plugins.registered("nn_backend").items():
        if names is not None and name not in names:
            continue
        reason = entry.unavailable_reason()
        if reason:
            skipped.append(f"{name} ({reason})")
            continue
        nearest = entry.item.nearest
        found[name] = lambda q, k, nearest=nearest: nearest(q.reshape(-1, q.shape[-1]), k)
    if names is None or IN_GRAPH in names:
        found[IN_GRAPH] = cosine_nearest
    unknown = sorted(set(names or ()) - set(found) - {s.split(" ")[0] for s in skipped})
    if unknown:
        raise ValueError(f"unknown nn backend(s) {', '.join(unknown)}; known: {', '.join(sorted(found))}")
    for note in skipped:
        print(f"nn bench: skipping {note}")
    return found


def _timed(call: Callable[[], torch.Tensor], device: torch.device, clock: str = "wall") -> float:
    """Milliseconds of one call, the device synchronised (CUDA: events on the current stream).
    ``clock="cpu"``: the calling thread's CPU time instead of the wall clock (with one thread, all
    the work runs on it, and time spent waiting for a core another process holds is not counted)."""
    if clock == "cpu":
        begin = time.thread_time()
        call()
        return (time.thread_time() - begin) * 1e3
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    if device.type == "mps":
        torch.mps.synchronize()
    begin = time.perf_counter()
    call()
    if device.type == "mps":
        torch.mps.synchronize()
    return (time.perf_counter() - begin) * 1e3


def _agreement(
    found: torch.Tensor, reference: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor
) -> tuple[float, float]:
    """Fraction of indices equal to the reference's, and the largest gap in cosine similarity (fp32)
    between the two chosen keys where they differ (0 when none differ): a tie measure."""
    same = found == reference
    if bool(same.all()):
        return 1.0, 0.0
    q = torch.nn.functional.normalize(queries.reshape(-1, queries.shape[-1]).float(), dim=-1)[~same]
    k = torch.nn.functional.normalize(keys.float(), dim=-1)
    gap = ((q * k[found[~same]]).sum(-1) - (q * k[reference[~same]]).sum(-1)).abs().max()
    return float(same.float().mean()), float(gap)


def _faiss_module():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _threads() -> dict[str, int]:
    threads = {"torch": torch.get_num_threads()}
    faiss = _faiss_module()
    if faiss is not None:
        threads["faiss"] = faiss.omp_get_max_threads()
    return threads


@contextlib.contextmanager
def _limited_threads(threads: int | None):
    """Run torch's and FAISS's CPU kernels on ``threads`` threads (None: as they are)."""
    if threads is None:
        yield
        return
    faiss = _faiss_module()
    before = (torch.get_num_threads(), faiss.omp_get_max_threads() if faiss is not None else None)
    torch.set_num_threads(threads)
    if faiss is not None:
        faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        if faiss is not None:
            faiss.omp_set_num_threads(before[1])


def run_nn_suite(
    *, seqs: list[int], chunk_size: int, backends: list[str] | None, device: str, dtype: str, repeats: int,
    save: str | None, threads: int | None = None, clock: str = "wall",
) -> list[dict]:  # fmt: skip
    """Time every nearest-neighbour backend at TokenFlow's search sizes; see the module's docstring.

    ``threads`` limits torch's and FAISS's CPU threads for the run; ``clock="cpu"`` (CPU, one
    thread only) times the calling thread's CPU time, which a machine busy with other work does
    not inflate the way it inflates the wall clock."""
    from vedit.model.device import resolve_device, resolve_dtype

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be wall or cpu, got {clock!r}")
    if clock == "cpu" and (dev.type != "cpu" or threads != 1):
        raise ValueError("clock='cpu' measures one CPU thread: use it with device cpu and threads=1")
    with _limited_threads(threads):  # the saved machine description sees the threads used, too
        return _measure(seqs, chunk_size, backends, dev, dt, repeats, save, clock)


def _measure(seqs, chunk_size, backends, dev, dt, repeats, save, clock) -> list[dict]:
    from vedit.model.device import dtype_name

    searches = _searches(backends, dev)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    threads_used = _threads()
    rows: list[dict] = []
    with torch.inference_mode():
        for seq in seqs:
            dim, blocks = SD_BLOCKS.get(seq, TOP_LEVEL)
            gen = torch.Generator().manual_seed(seq)
            queries = torch.randn(chunk_size, seq, dim, generator=gen).to(dev, dt)
            keys = torch.randn(seq, dim, generator=gen).to(dev, dt)
            # Warm-up (and the answers), then the backends in turn in every round, so that a
            # machine whose load drifts slows them alike.
            results = {name: search(queries, keys).reshape(-1).to(torch.long) for name, search in searches.items()}
            timings: dict[str, list[float]] = {name: [] for name in searches}
            for _ in range(repeats):
                for name, search in searches.items():
                    timings[name].append(_timed(partial(search, queries, keys), dev, clock))
            for name, times in timings.items():
                rows.append({
                    "seq": seq, "dim": dim, "queries": chunk_size * seq, "keys": seq, "blocks": blocks,
                    "backend": name, "median_ms": round(statistics.median(times), 3),
                    "min_ms": round(min(times), 3), "max_ms": round(max(times), 3),
                    "times_ms": [round(t, 3) for t in times],
                })  # fmt: skip
            reference = results.get("torch", results.get(IN_GRAPH))
            for row in rows[-len(searches) :]:
                if reference is not None:
                    row["same_as_torch"], row["tie_gap"] = _agreement(results[row["backend"]], reference, queries, keys)
            del queries, keys, results
    by = {(r["seq"], r["backend"]): r for r in rows}
    for row in rows:
        for base in ("torch", IN_GRAPH):
            other = by.get((row["seq"], base))
            if other is not None and other["median_ms"] > 0:
                row[f"x_{base}"] = round(row["median_ms"] / other["median_ms"], 3)

    title = (f"nearest neighbours: B={chunk_size} (B·seq queries vs seq keys), {dev.type}, {dtype_name(dt)}, "
             f"{clock} clock, threads {threads_used}, ms: median of {repeats}")  # fmt: skip
    show(
        title,
        ["seq", "dim", "queries × keys", "backend", "median ms", "min", "max", "÷ torch", "÷ in-graph",
         "same as torch"],
        [[r["seq"], r["dim"], f"{r['queries']} × {r['keys']}", r["backend"], f"{r['median_ms']:.1f}",
          f"{r['min_ms']:.1f}", f"{r['max_ms']:.1f}", r.get("x_torch", "-"), r.get(f"x_{IN_GRAPH}", "-"),
          f"{r['same_as_torch']:.4f}" if "same_as_torch" in r else "-"] for r in rows],
    )  # fmt: skip
    per_pass = {}
    if set(seqs) == set(SD_BLOCKS):  # every level of the UNet: a whole pass
        for name in searches:
            per_pass[name] = round(
                sum(SEARCHES_PER_BLOCK * by[(s, name)]["blocks"] * by[(s, name)]["median_ms"] for s in seqs), 1
            )
        show(
            f"search time of one propagation pass of B={chunk_size} frames "
            f"(2 searches × blocks, seq {', '.join(map(str, seqs))})",
            ["backend", "ms", "÷ torch", "÷ in-graph"],
            [[n, ms] + [round(ms / per_pass[b], 3) if per_pass.get(b) else "-" for b in ("torch", IN_GRAPH)]
             for n, ms in per_pass.items()],
        )  # fmt: skip
    save_json(save, {
        "suite": "nn", "device": str(dev), "dtype": dtype_name(dt), "chunk_size": chunk_size, "repeats": repeats,
        "clock": clock, "threads": threads_used,
        "load_average_before": [round(x, 2) for x in load] if load else None, "rows": rows,
        "per_propagation_pass_ms": per_pass,
    })  # fmt: skip
    return rows
