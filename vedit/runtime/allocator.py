"""Process-wide settings vedit applies to the process it runs in: the C allocator's.

Not on ``import vedit``, which changes nothing in the process: :func:`configure_allocator` is called
by the command line's entry point (:func:`vedit.cli.main`) before anything large is allocated, and
by the Python API's first edit, inversion or preview (:func:`vedit.edit`, :func:`vedit.invert`,
:func:`vedit.pipeline.preview.preview`, and a batch's units); once per process.

Why: PyTorch's CPU convolutions (oneDNN) reorder each convolution's weights into a blocked layout
on every call, into a fresh buffer. In SD 1.5 / 2.1 the 26 3×3 convolutions with 1280 output
channels need 59, 88 or 118 MB each, above the 32 MiB up to which glibc serves a request from its
heap (``M_MMAP_THRESHOLD`` cannot be set higher), so glibc gives every one of them its own
``mmap`` and unmaps it when it is freed: 1.86 GB of fresh pages, 454 000 page faults, per UNet
call at any image size (at 128×128, batch 8, 2 cores: 2.07 s a call with this churn, 1.66 s
without). At larger sizes the activations cross 32 MiB too and churn the same way.

What, by default (``VEDIT_ALLOCATOR=auto``), on Linux with glibc and nothing else configured:

- ``mallopt(M_MMAP_MAX, 0)``: glibc serves every allocation from its heap, so a freed buffer is
  reused by the next call instead of going back to the kernel;
- ``mallopt(M_TRIM_THRESHOLD, 1 GiB)``: up to 1 GiB free at the top of the heap stays mapped
  instead of being handed back after each call.

Both are runtime calls (no re-exec, nothing read at process start), so they take effect for every
allocation made after them, also in a program that imported torch first. The cost:
memory a process has freed stays mapped to it, so the resident size stays near its peak instead of
falling back after each call, and the peak itself can grow a little with fragmentation (measured:
the same at 128×128, +6 % at 512×512 batch 8). :func:`release_free_memory` hands free heap memory
back on demand.

Left alone (nothing applied, and :func:`allocator_settings` says why):

- ``VEDIT_ALLOCATOR=system``;
- any ``MALLOC_*`` tuning variable or a ``glibc.malloc`` tunable in ``GLIBC_TUNABLES``: the
  user's settings stand;
- another allocator in the process (jemalloc, tcmalloc or mimalloc, by ``LD_PRELOAD`` or linked):
  they cache freed memory themselves;
- platforms without glibc (macOS, Windows, musl).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from typing import Any

ENV = "VEDIT_ALLOCATOR"
MODES = ("auto", "system")

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
M_ARENA_MAX = -8

# What ``auto`` applies, in this order.
SETTINGS: dict[str, int] = {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 1 << 30}
_PARAMETERS = {"M_TRIM_THRESHOLD": M_TRIM_THRESHOLD, "M_TOP_PAD": M_TOP_PAD, "M_MMAP_THRESHOLD": M_MMAP_THRESHOLD,
               "M_MMAP_MAX": M_MMAP_MAX, "M_ARENA_MAX": M_ARENA_MAX}  # fmt: skip

# Environment variables through which a user tunes glibc's malloc themselves.
USER_MALLOC_VARS = (
    "MALLOC_ARENA_MAX", "MALLOC_ARENA_TEST", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
    "MALLOC_TRIM_THRESHOLD_",
)  # fmt: skip
# A symbol each of these allocators exports, to tell whether one is in the process.
_FOREIGN_SYMBOLS = {"jemalloc": "mallctl", "tcmalloc": "tc_malloc", "mimalloc": "mi_malloc"}
_FOREIGN_NAMES = ("jemalloc", "tcmalloc", "mimalloc", "hoard", "snmalloc")

_lock = threading.Lock()
_settings: dict[str, Any] | None = None


def glibc_version() -> str | None:
    """``"2.36"`` on Linux with glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"; fails or is empty elsewhere
    except (ValueError, OSError, AttributeError):
        return None
    if not text or not text.startswith("glibc "):
        return None
    return text.split()[1]


def user_settings(environ: Mapping[str, str]) -> list[str]:
    """The allocator settings the user made in ``environ`` (variable names, an allocator preloaded)."""
    found = [name for name in USER_MALLOC_VARS if environ.get(name, "") != ""]
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        found.append("GLIBC_TUNABLES")
    preload = environ.get("LD_PRELOAD", "").lower()
    found += [f"LD_PRELOAD ({name})" for name in _FOREIGN_NAMES if name in preload]
    return found


def _requested_mode(environ: Mapping[str, str]) -> str:
    """``$VEDIT_ALLOCATOR`` as given (not checked), ``auto`` when it is not set."""
    return environ.get(ENV, "").strip().lower() or "auto"


def plan(environ: Mapping[str, str], libc: str | None, foreign: str | None = None) -> tuple[dict[str, int], str]:
    """What to apply for ``environ`` on a C library ``libc`` (a glibc version, or None) with
    ``foreign`` (an allocator found in the process, or None): the mallopt settings (empty for
    none) and a sentence that says why."""
    mode = _requested_mode(environ)
    if mode not in MODES:
        return {}, f"{ENV}={environ.get(ENV)!r} is not one of {', '.join(MODES)}: allocator left as is"
    if mode == "system":
        return {}, f"{ENV}=system: allocator left as is"
    if libc is None:
        return {}, "not glibc: allocator left as is"
    made = user_settings(environ)
    if made:
        return {}, f"set by the user ({', '.join(made)}): allocator left as is"
    if foreign:
        return {}, f"{foreign} is the allocator in this process: left as is"
    return dict(SETTINGS), "glibc keeps freed memory for reuse instead of unmapping it after every call"


def _libc():
    import ctypes

    return ctypes.CDLL(None)  # the symbols this process resolves: the malloc actually in use


def _foreign_allocator(lib) -> str | None:
    for name, symbol in _FOREIGN_SYMBOLS.items():
        if hasattr(lib, symbol):
            return name
    return None


def _copy(settings: dict[str, Any]) -> dict[str, Any]:
    return {**settings, "applied": dict(settings["applied"])}


def configure_allocator(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Apply the allocator settings for this process once (later calls return the first answer).

    Called by vedit's command line before anything is allocated, and by the Python API's first
    edit, inversion or preview; cheap (a few ``mallopt`` calls). Returns :func:`allocator_settings`.
    """
    global _settings
    with _lock:
        if _settings is not None:
            return _copy(_settings)
        environ = os.environ if environ is None else environ
        libc = glibc_version()
        mode = _requested_mode(environ)
        lib = foreign = None
        if libc is not None and mode == "auto":
            try:
                lib = _libc()
                foreign = _foreign_allocator(lib)
            except OSError:
                libc = None
        wanted, reason = plan(environ, libc, foreign)
        if mode not in MODES:
            import warnings

            warnings.warn(f"vedit: {reason}", RuntimeWarning, stacklevel=2)
        applied: dict[str, int] = {}
        failed: list[str] = []
        for name, value in wanted.items():
            if lib is not None and lib.mallopt(_PARAMETERS[name], value) == 1:
                applied[name] = value
            else:
                failed.append(name)
        if failed:
            reason += f" (mallopt refused {', '.join(failed)})"
        _settings = {
            "mode": mode if mode in MODES else "system",
            "allocator": f"glibc {libc}" if libc else (foreign or "system"),
            "applied": applied,
            "reason": reason,
        }
        return _copy(_settings)


def allocator_settings() -> dict[str, Any]:
    """What :func:`configure_allocator` did in this process: ``mode`` (auto or system),
    ``allocator`` (e.g. ``glibc 2.36``), ``applied`` (mallopt name → value; empty when nothing
    was) and ``reason``. Asking applies nothing: before :func:`configure_allocator` has run (after
    ``import vedit`` alone, say), ``applied`` is empty and ``reason`` says it has not run."""
    with _lock:
        if _settings is not None:
            return _copy(_settings)
    mode = _requested_mode(os.environ)
    libc = glibc_version()
    return {
        "mode": mode if mode in MODES else "system",
        "allocator": f"glibc {libc}" if libc else "system",
        "applied": {},
        "reason": "not configured in this process yet: vedit's command line and its Python API's first edit, "
        "inversion or preview configure it",
    }


def describe() -> str:
    """One line for a benchmark header, e.g. ``glibc 2.36: M_MMAP_MAX=0 M_TRIM_THRESHOLD=1073741824``."""
    s = allocator_settings()
    if s["applied"]:
        return f"{s['allocator']}: " + " ".join(f"{k}={v}" for k, v in s["applied"].items()) + f" ({ENV}={s['mode']})"
    return f"{s['allocator']}, left as is ({s['reason']})"


def release_free_memory() -> bool:
    """Hand the heap's free memory back to the system now (glibc's ``malloc_trim``), e.g. after
    dropping a model in a long-running process. Returns whether any was released; False off glibc."""
    if glibc_version() is None:
        return False
    try:
        return bool(_libc().malloc_trim(0))
    except (OSError, AttributeError):
        return False
