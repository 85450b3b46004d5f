"""Where a run's time goes: per-component seconds for ``vedit.edit(..., profile=True)`` and ``vedit bench edit``.

Without profiling every call here is a no-op, so the pipeline can mark its components for free.
With it, each component waits for the device before its clock starts and again before it stops,
so GPU time is charged to the component that queued it (this serialises the run a little: a
profiled run is slower than a plain one, and its total is reported beside the components).
Components can nest (the nearest-neighbour search runs inside the propagation pass) and can run
on other threads (the frame reader and the writer): their seconds are their own, so the
components do not add up to the wall time.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

_active = threading.local()
_lock = threading.Lock()


def synchronize(device: torch.device | str | None) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for on the CPU)."""
    if device is None:
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Profile:
    """Seconds and calls per component; thread-safe. ``device`` is synchronised around each one."""

    def __init__(self, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else None
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def stage(self, name: str, sync: bool = True) -> Iterator[None]:
        """Charge the time inside to ``name``; ``sync=False`` for host-only work on other threads,
        which must not wait for the device's queue."""
        device = self.device if sync else None
        synchronize(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(device)
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        with _lock:
            self.seconds[name] += seconds
            self.calls[name] += 1

    def as_dict(self) -> dict[str, float]:
        with _lock:
            return dict(self.seconds)


def current() -> Profile | None:
    """The profile of the run on this thread, if it is being profiled."""
    return getattr(_active, "profile", None)


@contextmanager
def profiling(profile: Profile | None) -> Iterator[Profile | None]:
    """Make ``profile`` the current one on this thread (threads the run starts call this too)."""
    previous = current()
    _active.profile = profile
    try:
        yield profile
    finally:
        _active.profile = previous


def stage(name: str, sync: bool = True) -> AbstractContextManager[None]:
    """A context that charges its time to ``name`` in the current profile (a no-op without one)."""
    profile = current()
    return nullcontext() if profile is None else profile.stage(name, sync)


__all__ = ["Profile", "current", "profiling", "stage", "synchronize"]
