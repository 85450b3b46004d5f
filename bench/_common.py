"""What every benchmark suite shares: timing, statistics, FLOP counting, the header that says where
and how a figure was made, results files, JSON output and the ``--vs`` comparison of two settings.

Timing: :func:`measure` calls a function ``warmup`` times untimed, then ``repeats`` times timed,
and gives a :class:`Stats` (median, min, max and the samples). Each timed call is bracketed by a
device synchronisation; on CUDA the interval is read from CUDA events recorded on the current
stream, elsewhere from ``time.perf_counter``.

FLOPs: :func:`count_flops` runs a function under ``torch.utils.flop_counter.FlopCounterMode`` with
fake tensors (shapes and dtypes only, no arithmetic), so counting a whole UNet pass at its real
shape costs seconds, not a forward. :func:`pass_flops` counts one of :mod:`vedit.method.passes`' modules at
a given batch and latent size, once per process.

Results: :func:`results_path` names ``bench/results/<suite>-<host>-<device>-<date>.json``; every
suite builds one JSON document (:func:`document`) with a :func:`header`, its rows, the fields that
identify a row (``key_fields``) and the measured value (``value_field``), which ``vedit bench
compare`` reads.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text

from vedit.runtime.profiling import synchronize

# Tables are wide: a log or a pipe (no terminal) gets 200 columns rather than rich's 80, so no
# cell is cut short; $COLUMNS still wins.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
console = Console(emoji=False, highlight=False, width=_WIDTH)
err_console = Console(stderr=True, emoji=False, highlight=False)

FORMAT = "vedit-bench/1"
RESULTS_ENV = "VEDIT_BENCH_RESULTS"


# --------------------------------------------------------------------------------------------
# Clips


# What a suite's synthetic clip and the edit's output are: H.264 files (through ffmpeg and PyAV), or folders of PNG
# frames, which need neither (a GPU machine that has only what bench/gpu/wheels.sh carries).
CLIP_FORMATS = ("mp4", "png")


def clip_format_checked(clip_format: str) -> str:
    """``clip_format`` if it is one of :data:`CLIP_FORMATS`; else the user's mistake, in one line."""
    from vedit.errors import ConfigError

    if clip_format not in CLIP_FORMATS:
        raise ConfigError(f"--clip-format takes {' or '.join(CLIP_FORMATS)}, got {clip_format!r}")
    return clip_format


def clip_path(folder: Path, stem: str, clip_format: str) -> Path:
    """Where a clip or an output of ``clip_format`` goes in ``folder``: ``stem.mp4``, or the folder ``stem``."""
    return folder / (f"{stem}.mp4" if clip_format == "mp4" else stem)


def remove_output(path: Path) -> None:
    """Delete an edit's output, a file or a folder of frames."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def synthetic_clip(path: Path, frames: int, size: tuple[int, int], fps: Fraction = Fraction(24)) -> Path:
    """A moving test pattern: ffmpeg's ``testsrc2`` in H.264, or, where ``path`` has no suffix, a folder of PNG
    frames drawn here (no ffmpeg needed)."""
    if not path.suffix:
        return _pattern_frames(path, frames, size)
    from vedit.io.ffmpeg import find_ffmpeg

    cmd = [
        find_ffmpeg(), "-v", "error", "-y", "-f", "lavfi",
        "-i", f"testsrc2=size={size[0]}x{size[1]}:rate={fps.numerator}/{fps.denominator}",
        "-frames:v", str(frames), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "10", str(path),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    return path


def _pattern_frames(folder: Path, frames: int, size: tuple[int, int]) -> Path:
    """Colour bars scrolling 2 px per frame under a square crossing the picture, as numbered PNG frames."""
    import numpy as np
    from PIL import Image

    width, height = size
    bars = np.array(
        [[192, 192, 192], [192, 192, 0], [0, 192, 192], [0, 192, 0], [192, 0, 192], [192, 0, 0], [0, 0, 192]],
        dtype=np.uint8,
    )
    columns = np.arange(width)
    rows = np.arange(height)[:, None]
    side = max(2, min(width, height) // 4)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(frames):
        picture = bars[((columns + 2 * index) * len(bars) // width) % len(bars)][None].repeat(height, axis=0)
        picture = picture.copy()  # (H, W, 3)
        picture[:, :, 1] = np.maximum(picture[:, :, 1], (rows * 255 // max(1, height - 1)).astype(np.uint8))
        left, top = (3 * index) % max(1, width - side), (2 * index) % max(1, height - side)
        picture[top : top + side, left : left + side] = 255
        Image.fromarray(picture).save(folder / f"{index:05d}.png", compress_level=1)
    return folder


def say(text: str) -> None:
    """A progress line on stderr (stdout carries only the table or the JSON document)."""
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Timing and statistics


@dataclass
class Stats:
    """Median, min and max of timed samples (seconds unless said otherwise)."""

    median: float
    min: float
    max: float
    samples: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, samples: Iterable[float]) -> Stats:
        values = [float(s) for s in samples]
        if not values:
            raise ValueError("no samples to summarise")
        return cls(median=statistics.median(values), min=min(values), max=max(values), samples=values)

    def scaled(self, factor: float) -> Stats:
        return Stats(self.median * factor, self.min * factor, self.max * factor, [s * factor for s in self.samples])

    def as_dict(self, unit: str = "s", digits: int = 6) -> dict[str, Any]:
        r = lambda v: round(v, digits)  # noqa: E731
        return {
            f"median_{unit}": r(self.median), f"min_{unit}": r(self.min), f"max_{unit}": r(self.max),
            f"samples_{unit}": [r(s) for s in self.samples],
        }  # fmt: skip

    def text(self, scale: float = 1.0, digits: int = 3) -> str:
        """``median (min–max)`` for a table cell."""
        if len(self.samples) <= 1:
            return f"{self.median * scale:.{digits}f}"
        return f"{self.median * scale:.{digits}f} ({self.min * scale:.{digits}f}–{self.max * scale:.{digits}f})"


def sync(device: torch.device | str | None) -> None:
    """Wait until the device has finished the work queued so far."""
    synchronize(device)


def clock_name(device: torch.device | str | None) -> str:
    if device is not None and torch.device(device).type == "cuda":
        return "CUDA events (after a device synchronisation)"
    return "time.perf_counter (after a device synchronisation)"


class Timer:
    """Times one region: ``with Timer(device) as t: ...`` then ``t.seconds``.

    The device is synchronised before the region starts and after it ends, so the figure holds all
    the work the region queued. On CUDA the interval is read from two CUDA events recorded on the
    current stream (the GPU's own clock); elsewhere from ``time.perf_counter``.
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else None
        self.cuda = self.device is not None and self.device.type == "cuda"
        self.seconds = float("nan")

    def __enter__(self) -> Timer:
        sync(self.device)
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._began = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self._end.record()
            self._end.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1e3
        else:
            sync(self.device)
            self.seconds = time.perf_counter() - self._began


def timed(fn: Callable[[], Any], device: torch.device | str | None = None) -> tuple[float, Any]:
    """Seconds one call of ``fn`` takes (device-synchronised), and what it returned."""
    with Timer(device) as timer:
        value = fn()
    return timer.seconds, value


def measure(
    fn: Callable[[], Any],
    *,
    device: torch.device | str | None = None,
    warmup: int = 1,
    repeats: int = 3,
) -> Stats:
    """``warmup`` untimed calls of ``fn``, then ``repeats`` timed ones (each synchronised)."""
    if repeats < 1:
        raise ValueError("repeats must be 1 or more")
    for _ in range(max(0, warmup)):
        fn()
        sync(device)
    samples = []
    for _ in range(repeats):
        seconds, _ = timed(fn, device)
        samples.append(seconds)
    return Stats.of(samples)


def start_device_peak(device: torch.device | str) -> float | None:
    """On CUDA, start counting the peak device allocation from here, and give the MiB allocated now (a loaded
    model's weights); None on other devices, whose memory is the host's."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return round(torch.cuda.memory_allocated(device) / 2**20, 1)


def device_peak_mb(device: torch.device | str) -> float | None:
    """The peak CUDA allocation in MiB since :func:`start_device_peak` (None off CUDA)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def matmul_peak_tflops(device: torch.device | str, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """What a large square matrix product reaches here, in TFLOP/s: the practical peak that the
    passes are held to. 8192² on CUDA (in the run's dtype: fp16/bf16 use the tensor cores), 2048²
    elsewhere; timed with CUDA events on a GPU."""
    device = torch.device(device)
    n = 8192 if device.type == "cuda" else 2048
    if device.type == "cpu" and dtype in (torch.float16,):
        dtype = torch.float32  # the CPU has no fast fp16 GEMM; the run would not use one either
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # noqa: B018  (first call: library set-up)
    sync(device)
    count, total = 0, 0.0
    batch = 10 if device.type == "cuda" else 1
    while total < seconds:
        with Timer(device) as timer:
            for _ in range(batch):
                a @ b  # noqa: B018
        total += timer.seconds
        count += batch
    del a, b
    return 2 * n**3 * count / total / 1e12


class PeakProbe:
    """The matmul peak, measured before the timed work and again after it: the higher of the two
    is the figure (a busy moment lowers one of them), and both are kept in the header."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.samples: list[float] = []

    def probe(self, device: torch.device | str, dtype: torch.dtype) -> None:
        if self.enabled:
            self.samples.append(matmul_peak_tflops(device, dtype))

    @property
    def value(self) -> float | None:
        return max(self.samples) if self.samples else None


# --------------------------------------------------------------------------------------------
# FLOP counting


def _sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """``aten._scaled_dot_product_flash_attention_for_cpu``, which FlopCounterMode does not know:
    the same count as the CUDA kernels (QKᵀ and the product with V)."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _extra_formulas() -> dict[Any, Callable]:
    extra: dict[Any, Callable] = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        extra[op] = _sdpa_cpu_flops
    return extra


def count_flops(
    run: Callable[..., Any],
    make_inputs: Callable[[], Sequence[Any]] | None = None,
    *,
    fake: bool = True,
) -> int:
    """FLOPs of ``run(*make_inputs())`` counted by ``torch.utils.flop_counter.FlopCounterMode``.

    With ``fake`` the inputs are made and the call runs under ``FakeTensorMode``: shapes and dtypes
    only, no arithmetic and no memory for activations (the module's real weights are read as fake
    tensors). ``make_inputs`` runs inside that mode but outside the counter, so building inputs
    (a keyframe pass that makes the propagation pass's records) is not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    mode: Any = contextlib.nullcontext()
    if fake:
        from torch._subclasses.fake_tensor import FakeTensorMode

        mode = FakeTensorMode(allow_non_fake_inputs=True)
    with torch.no_grad(), mode:
        inputs = tuple(make_inputs()) if make_inputs is not None else ()
        with FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
            run(*inputs)
    return int(counter.get_total_flops())


_FLOPS: dict[tuple, int] = {}


def pass_inputs(
    passes: Any,
    name: str,
    frames: int,
    h: int,
    w: int,
    *,
    embeds: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    options: Any = None,
) -> tuple[torch.Tensor, ...]:
    """Inputs of pass ``name`` for a call of ``frames`` frames at latent size ``h``×``w``, made by the
    pass's own example (:attr:`vedit.PassSpec.example`, through :meth:`vedit.runtime.runner.Passes.example`,
    as ``vedit engines build`` makes them): ``plain`` gets ``frames`` latents (an inversion batch: one
    branch), the others the three branches ``[source, uncond, cond]`` of ``frames`` frames
    (``keyframe``: K = ``frames`` keyframes; ``propagation``: a chunk of ``frames`` frames with the
    records of keyframes [1, 0] of a two-keyframe pass). ``embeds`` (3, 77, D) are the three prompts'
    embeddings (random text when None), ``options`` the run's (``keyframe_bounded`` reads
    ``max_joint_keyframes``). Works under ``FakeTensorMode`` too."""
    return passes.example(name, frames, (h, w), options=options, embeds=embeds, generator=generator)


def call_pass(passes: Any, name: str, inputs: Sequence[torch.Tensor]) -> Any:
    """Run pass ``name`` of a :class:`vedit.runtime.runner.Passes` on ``inputs`` (from :func:`pass_inputs`)."""
    return passes.run(name, inputs, kind="bench")


def pass_flops(
    sd: Any,
    name: str,
    frames: int,
    h: int,
    w: int,
    *,
    conv_layers=(),
    qk_layers=(),
    options: Any = None,
    notes: list[str] | None = None,
) -> int | None:
    """FLOPs of one call of pass ``name`` on ``frames`` frames (see :func:`pass_inputs`) at latent
    size ``h``×``w``, counted with fake tensors through the pass's own module; counted once per
    (model, dtype, device, pass, frames, size, injection layers, options) in a process. None when the
    pass cannot be counted (the reason goes to ``notes``)."""
    from vedit import plugins
    from vedit.runtime.runner import Passes

    key = (
        id(sd),
        sd.fingerprint,
        str(sd.dtype),
        str(sd.device),
        name,
        frames,
        h,
        w,
        tuple(conv_layers),
        tuple(qk_layers),
        repr(options),
    )
    if key in _FLOPS:
        return _FLOPS[key]
    eager = [plugins.get("engine", "eager")]
    # Fake tensors cost about a millisecond per operation whatever the shapes; real ones cost a
    # forward. So: fake for SD-sized UNets on the CPU (seconds instead of a minute), real on a GPU
    # and for small models.
    fake = sd.device.type == "cpu" and sum(p.numel() for p in sd.unet.parameters()) > 100_000_000
    try:
        with Passes(sd, eager, conv_layers=tuple(conv_layers), qk_layers=tuple(qk_layers)) as passes:
            module = passes.module(name)
            inputs = lambda: pass_inputs(passes, name, frames, h, w, options=options)  # noqa: E731
            try:
                flops = count_flops(module, inputs, fake=fake)
            except Exception as error:  # an op without a fake-tensor rule: count it for real
                if not fake:
                    raise
                if notes is not None:
                    notes.append(f"FLOPs of the {name} pass counted with real tensors ({_first_line(error)})")
                flops = count_flops(module, inputs, fake=False)
    except Exception as error:
        if notes is not None:
            notes.append(f"FLOPs of the {name} pass at {frames} frames could not be counted: {_first_line(error)}")
        return None
    _FLOPS[key] = flops
    return flops


def forwards_text(forwards: dict[str, int]) -> str:
    """``kind count, …`` of a document's UNet forwards, each count once: a document also carries the counts
    under their earlier names (:meth:`vedit.runtime.runner.Forwards.by_name`), which are left out here."""
    from vedit.runtime.runner import EARLIER_KINDS

    doubles = {old for old, new in EARLIER_KINDS.items() if old in forwards and forwards[old] == forwards.get(new)}
    return ", ".join(f"{kind} {count}" for kind, count in forwards.items() if kind not in doubles)


def images_per_call(name: str, frames: int) -> int:
    """UNet image-forwards in one call of pass ``name`` on ``frames`` frames (see :func:`pass_inputs`)."""
    from vedit.plugins.passes import pass_spec

    return pass_spec(name).rows_per_frame * frames


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


# --------------------------------------------------------------------------------------------
# Where and how: the header


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def machine() -> dict[str, Any]:
    """The host: Python, torch, CPU (and the GPU, where there is one)."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_model(),
        "host": platform.node(),
        "os": platform.platform(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(),
    }
    if hasattr(os, "getloadavg"):  # how busy the machine was when the header was made (1, 5, 15 min)
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
    return info


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _git_revision() -> str | None:
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def versions() -> dict[str, Any]:
    """Versions of everything that changes a figure; optional libraries only when installed."""
    import vedit

    found: dict[str, Any] = {
        "vedit": vedit.__version__,
        "vedit_revision": _git_revision(),
        "torch": torch.__version__,
        "diffusers": _dist_version("diffusers"),
        "transformers": _dist_version("transformers"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    optional = {
        "triton": ("triton",),
        "onnxruntime": ("onnxruntime-gpu", "onnxruntime"),
        "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
        "torch_tensorrt": ("torch-tensorrt", "torch_tensorrt"),
        "faiss": ("faiss-gpu", "faiss-gpu-cu12", "faiss-cpu"),
    }
    for key, names in optional.items():
        version = _dist_version(*names)
        if version:
            found[key] = version
    return {k: v for k, v in found.items() if v is not None}


def device_info(device: torch.device | str) -> dict[str, Any]:
    device = torch.device(device)
    info: dict[str, Any] = {"type": device.type, "name": str(device)}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(
            name=props.name, index=index, compute_capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )  # fmt: skip
    elif device.type == "cpu":
        info.update(name=_cpu_model(), threads=torch.get_num_threads())
    info["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return info


def _dtype_text(dtype: torch.dtype | str | None) -> str | None:
    """fp32, fp16, bf16 (vedit's option names) for a torch dtype."""
    if isinstance(dtype, torch.dtype):
        from vedit.model.device import dtype_name

        return dtype_name(dtype)
    return dtype


def header(
    suite: str,
    *,
    device: torch.device | str,
    dtype: torch.dtype | str | None,
    settings: dict[str, Any],
    warmup: int | None = None,
    repeats: int | None = None,
    matmul_peak: float | PeakProbe | None = None,
) -> dict[str, Any]:
    """Where, with what and how the figures were made: date, machine, device, versions, the
    suite's settings and the timing rule."""
    samples = None
    if isinstance(matmul_peak, PeakProbe):
        samples, matmul_peak = [round(x, 4) for x in matmul_peak.samples], matmul_peak.value
    timing: dict[str, Any] = {"clock": clock_name(device), "statistic": "median, with min and max"}
    if warmup is not None:
        timing["warmup"] = warmup
    if repeats is not None:
        timing["repeats"] = repeats
    return {
        "suite": suite,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["vedit", *sys.argv[1:]]) if Path(sys.argv[0]).name == "vedit" else None,
        "machine": machine(),
        "device": device_info(device),
        "dtype": _dtype_text(dtype),
        "versions": versions(),
        "settings": settings,
        "timing": timing,
        "matmul_peak_tflops": round(matmul_peak, 4) if matmul_peak is not None else None,
        "matmul_peak_samples": samples,
    }


# --------------------------------------------------------------------------------------------
# Results files and documents


def slug(text: str, limit: int = 32) -> str:
    """Lower-case letters, digits and single dashes: ``NVIDIA H200`` → ``nvidia-h200``."""
    text = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    return text[:limit].strip("-") or "unknown"


def device_slug(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return slug(torch.cuda.get_device_name(index))
    return device.type


def results_dir() -> Path:
    """``$VEDIT_BENCH_RESULTS``, else ``bench/results`` of this checkout, else ``./bench/results``."""
    env = os.environ.get(RESULTS_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    if (here.parent / "pyproject.toml").is_file():
        return here / "results"
    return Path.cwd() / "bench" / "results"


def results_name(
    suite: str, device: torch.device | str, *, date: _dt.date | None = None, host: str | None = None
) -> str:
    """``<suite>-<host>-<device>-<YYYY-MM-DD>.json``; the device part is the GPU's name on CUDA."""
    date = date or _dt.date.today()
    host = platform.node() if host is None else host
    return f"{slug(suite)}-{slug(host, 24)}-{device_slug(device)}-{date.isoformat()}.json"


def results_path(
    suite: str, device: torch.device | str, *, directory: Path | None = None, date: _dt.date | None = None
) -> Path:
    """Where a run's results go by default: a new file, ``-2``, ``-3``, … when one exists already."""
    directory = Path(directory) if directory is not None else results_dir()
    path = directory / results_name(suite, device, date=date)
    number = 2
    while path.exists():
        path = path.with_name(f"{results_name(suite, device, date=date)[:-5]}-{number}.json")
        number += 1
    return path


def resolve_save(suite: str, device: str | torch.device, save: str | None, no_save: bool) -> str | None:
    """The file a command writes: ``--save PATH``, nothing with ``--no-save``, else the default name."""
    if no_save:
        return None
    if save:
        return save
    from vedit.model.device import resolve_device

    return str(results_path(suite, resolve_device(device)))


def document(
    suite: str,
    head: dict[str, Any],
    rows: list[dict[str, Any]],
    *,
    key_fields: Sequence[str],
    value_field: str = "median_s",
    **extra: Any,
) -> dict[str, Any]:
    """A suite's JSON document. ``key_fields`` identify a row (``vedit bench compare`` matches rows
    by them); ``value_field`` is the measured figure it compares."""
    return {
        "format": FORMAT, "suite": suite, "header": head, "machine": head.get("machine", machine()),
        "key_fields": list(key_fields), "value_field": value_field, "rows": rows, **extra,
    }  # fmt: skip


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (torch.device, torch.dtype, Path, Fraction)):
        return str(value)
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(_jsonable(doc), indent=2) + "\n"


def write_document(path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(doc), encoding="utf-8")
    return path


def save_json(path: str | None, payload: dict[str, Any]) -> None:
    """Write ``payload`` (with the machine) as JSON to ``path``; nothing when ``path`` is None."""
    if path:
        doc = payload if "machine" in payload else {"machine": machine(), **payload}
        write_document(path, doc)
        err_console.print(Text(f"saved {path}"))


def show(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A rich table on stdout; every cell is literal text (no markup)."""
    table = Table(*columns, title=Text(title))
    for row in rows:
        table.add_row(*[Text("-" if cell is None else str(cell)) for cell in row])
    console.print(table)


def header_lines(head: dict[str, Any]) -> list[str]:
    """The header as a few lines for the screen."""
    m, d, v = head.get("machine", {}), head.get("device", {}), head.get("versions", {})
    lines = [f"vedit bench {head.get('suite', '?')}   {head.get('date', '')}   host {m.get('host', '?')}"]
    where = f"device {d.get('name', '?')} ({d.get('type', '?')}"
    if d.get("type") == "cuda":
        where += f", sm {d.get('compute_capability')}, {d.get('memory_gib')} GiB"
    else:
        where += f", {m.get('cores')} cores, torch threads {m.get('torch_threads')}"
    if m.get("load_average"):
        where += f", load average {' '.join(str(x) for x in m['load_average'])}"
    where += f"), dtype {head.get('dtype')}"
    if head.get("matmul_peak_tflops") is not None:
        where += f", matmul peak {head['matmul_peak_tflops']:.3g} TFLOP/s"
    lines.append(where)
    lines.append("versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    settings = head.get("settings", {})
    lines.append("settings: " + " ".join(f"{k}={val}" for k, val in settings.items()))
    t = head.get("timing", {})
    rule = f"timing: {t.get('clock', '?')}"
    if t.get("statistic"):
        rule += f"; {t['statistic']}"
    if "repeats" in t:
        rule += f" of {t['repeats']} timed run(s) after {t.get('warmup', 0)} warm-up(s)"
    lines.append(rule)
    return lines


def finish(
    doc: dict[str, Any],
    render: Callable[[dict[str, Any]], None],
    *,
    json_out: bool = False,
    save: str | None = None,
) -> dict[str, Any]:
    """Print the document (its tables, or the JSON itself with ``json_out``) and write it to ``save``."""
    if json_out:
        sys.stdout.write(dumps(doc))
        sys.stdout.flush()
    else:
        for line in header_lines(doc.get("header", {})):
            console.print(Text(line))
        render(doc)
        for note in doc.get("notes", []):
            console.print(Text(f"note: {note}"))
    if save:
        write_document(save, doc)
        err_console.print(Text(f"saved {save}"))
    return doc


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"
    return str(value)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


# --------------------------------------------------------------------------------------------
# --vs: two settings, alternately


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(key: str, text: str, like: Any, annotation: Any = None) -> Any:
    """``text`` as the type of ``like`` (the base setting) or of the RunConfig field's annotation."""
    import typing

    if isinstance(like, (list, tuple)):
        return text  # a list setting: the suite splits it
    kinds = (
        [type(like)]
        if like is not None
        else [k for k in (typing.get_args(annotation) or (annotation,)) if k is not None]
    )
    optional = like is None or type(None) in typing.get_args(annotation)
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    for kind in kinds:
        if kind is bool:
            low = text.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            continue
        if kind is int:
            try:
                return int(text)
            except ValueError:
                continue
        if kind is float:
            try:
                return float(text)
            except ValueError:
                continue
        if kind is str:
            return text
    from vedit.errors import ConfigError

    names = " or ".join(getattr(k, "__name__", str(k)) for k in kinds if k is not type(None)) or "a value"
    raise ConfigError(f"--vs {key}={text}: {key} takes {names}")


def parse_vs(
    text: str | None,
    settings: dict[str, Any],
    *,
    aliases: dict[str, str] | None = None,
    fixed: Iterable[str] = (),
    run_options: bool = True,
) -> dict[str, Any]:
    """``KEY=VALUE[,KEY=VALUE...]`` → the overrides of the second configuration.

    Keys are the suite's settings (``settings``, dashes or underscores) or, with ``run_options``,
    any field of :class:`vedit.config.RunConfig`; values take the type of the setting they
    replace (RunConfig values are checked like flags). A piece
    without ``=`` continues the previous value, so ``engine=tensorrt,compile`` is one engine list.
    """
    from vedit.config import field_types, host_names, host_specs, validate
    from vedit.errors import ConfigError
    from vedit.plugins.options import flat_names

    if text is None or not text.strip():
        return {}
    aliases = aliases or {}
    fixed = set(fixed)
    run_fields = set(host_specs())
    plugin_options = flat_names(host_names())
    types = field_types()
    raw: list[list[str]] = []
    for piece in text.split(","):
        if "=" in piece:
            key, value = piece.split("=", 1)
            raw.append([key.strip(), value.strip()])
        elif raw:
            raw[-1][1] += "," + piece.strip()
        else:
            raise ConfigError(f"--vs {text!r}: expected KEY=VALUE[,KEY=VALUE...]")
    overrides: dict[str, Any] = {}
    for key, value in raw:
        name = key.replace("-", "_")
        name = aliases.get(name, name)
        if name in fixed:
            raise ConfigError(f"--vs: {key} cannot differ between the two configurations")
        if name in settings:
            overrides[name] = _coerce(key, value, settings[name], types.get(name))
        elif run_options and name in run_fields:
            coerced = _coerce(key, value, None, types[name])
            overrides[name] = validate({name: coerced})[name]
        elif run_options and name in plugin_options:  # a plugin's option by its flag: chunk-size, pnp-f-t
            overrides[name] = plugin_options[name][1].parse(value, f"--vs: {key}")
        else:
            known = ", ".join(k.replace("_", "-") for k in settings if k not in fixed)
            more = "; or any option of vedit run" if run_options else ""
            raise ConfigError(f"--vs: unknown key {key!r} (this suite's options: {known}{more})")
    return overrides


@dataclass
class Pairing:
    """What :func:`alternate` measured: the call order (warm-ups included) and, per timed pair,
    the figures of A and of B (a dict of row key → seconds)."""

    order: list[str]
    a: list[dict[Any, float]]
    b: list[dict[Any, float]]


def alternate(
    run_a: Callable[[], dict[Any, float] | float],
    run_b: Callable[[], dict[Any, float] | float],
    *,
    pairs: int,
    warmup: int = 1,
    on_call: Callable[[str, int, bool], None] | None = None,
) -> Pairing:
    """Run A and B alternately: ``warmup`` untimed rounds of A then B, then ``pairs`` rounds of A
    then B. Each call returns its seconds (a float, or a dict of row key → seconds); alternating
    spreads any drift of the machine (heat, other load) evenly over both."""
    order: list[str] = []
    results: dict[str, list[dict[Any, float]]] = {"A": [], "B": []}
    runs = {"A": run_a, "B": run_b}
    for round_index in range(max(0, warmup) + pairs):
        counted = round_index >= warmup
        for label in ("A", "B"):
            if on_call is not None:
                on_call(label, round_index - warmup if counted else round_index, counted)
            value = runs[label]()
            order.append(label if counted else f"{label} (warm-up)")
            if counted:
                results[label].append(value if isinstance(value, dict) else {"total": float(value)})
    return Pairing(order=order, a=results["A"], b=results["B"])


def vs_rows(pairing: Pairing, key_fields: Sequence[str] = ("key",)) -> list[dict[str, Any]]:
    """Per row key present in every pair: A's and B's stats and the ratio B/A pair by pair, with
    its median, min and max. A key is a tuple of values of ``key_fields`` (or one plain value)."""
    keys: list[Any] = []
    for figures in pairing.a:
        keys += [k for k in figures if k not in keys]
    rows = []
    for key in keys:
        if not all(key in a and key in b for a, b in zip(pairing.a, pairing.b)):
            continue
        a = [p[key] for p in pairing.a]
        b = [p[key] for p in pairing.b]
        ratios = [y / x if x else float("nan") for x, y in zip(a, b)]
        values = key if isinstance(key, tuple) else (key,)
        row = dict(zip(key_fields, values))
        stats_a, stats_b, stats_r = Stats.of(a), Stats.of(b), Stats.of(ratios)
        row.update(
            a_median_s=round(stats_a.median, 6), a_min_s=round(stats_a.min, 6), a_max_s=round(stats_a.max, 6),
            b_median_s=round(stats_b.median, 6), b_min_s=round(stats_b.min, 6), b_max_s=round(stats_b.max, 6),
            ratios=[round(r, 4) for r in ratios], ratio_median=round(stats_r.median, 4),
            ratio_min=round(stats_r.min, 4), ratio_max=round(stats_r.max, 4),
        )  # fmt: skip
        rows.append(row)
    return rows


def show_vs(title: str, rows: list[dict[str, Any]], key_fields: Sequence[str]) -> None:
    show(
        title,
        [*key_fields, "A median s (min–max)", "B median s (min–max)", "B/A median (min–max)", "B/A pair by pair"],
        [[*(r.get(k) for k in key_fields),
          f"{r['a_median_s']:.4g} ({r['a_min_s']:.4g}–{r['a_max_s']:.4g})",
          f"{r['b_median_s']:.4g} ({r['b_min_s']:.4g}–{r['b_max_s']:.4g})",
          f"{r['ratio_median']:.3f} ({r['ratio_min']:.3f}–{r['ratio_max']:.3f})",
          " ".join(f"{x:.3f}" for x in r["ratios"])] for r in rows],
    )  # fmt: skip


def describe_vs(overrides: dict[str, Any]) -> str:
    return ",".join(f"{k.replace('_', '-')}={v}" for k, v in overrides.items())
