"""Where a batch's units run: this process (:class:`_Serial`), a local pool of spawned worker processes, one
per GPU or ``workers`` on the CPU (:class:`_Pool`), or Ray actors (:class:`_Ray`). Each worker keeps its model
between units; one whose process dies is replaced and its unit given back to the schedule.
:func:`choose_backend` picks one."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import time
from pathlib import Path
from typing import Any

from ..config import option_label, option_value
from ..errors import ConfigError, PluginError
from .plan import Plan
from .scheduler import BatchEvents
from .workers import Outcome, Unit, WorkerReporter, execute, held_model_key, release_model, unit_failure


class _Serial:
    """Units run one after another in this process: one model load per model."""

    kind = "serial"

    def __init__(self, events: BatchEvents):
        self.events = events
        self.current: Unit | None = None
        self.capacity = 1
        self.workers = 1

    def idle(self) -> list[int]:
        return [] if self.current is not None else [0]

    def prefer(self, slot: int) -> tuple | None:
        return held_model_key()

    def submit(self, slot: int, unit: Unit) -> str:
        self.current = unit
        return "this process"

    def wait(self, timeout: float) -> list[tuple[Unit, Outcome]]:
        unit, self.current = self.current, None
        if unit is None:
            return []
        return [(unit, execute(unit, reporter=self.events.reporter(unit), worker="this process"))]

    def close(self, interrupted: bool = False) -> None:
        release_model()


def _reporter_in_worker(worker_reporter: WorkerReporter | None, unit: Unit) -> Any:
    return worker_reporter(unit) if worker_reporter is not None else None


def _pool_main(
    slot: int, device: str | None, threads: int, inbox: Any, results: Any, worker_reporter: WorkerReporter | None
) -> None:
    """A pool worker process: runs the units it is sent until it is sent None."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it terminates us
    name = f"worker {slot + 1}" + (f" ({device})" if device else "") + f", pid {os.getpid()}"
    while True:
        unit = inbox.get()
        if unit is None:
            return
        if device is not None and unit.config.device in ("auto", "cuda"):
            unit.config = unit.config.replace(device=device)
        outcome = execute(unit, reporter=_reporter_in_worker(worker_reporter, unit), worker=name)
        results.put(("done", slot, unit.uid, outcome))


class _Pool:
    """One spawned worker process per device (or ``workers`` on the CPU); a dead one is replaced
    and its unit given back to the schedule."""

    kind = "pool"

    def __init__(self, devices: list[str | None], threads: int, worker_reporter: WorkerReporter | None = None):
        import multiprocessing

        self.ctx = multiprocessing.get_context("spawn")
        self.devices, self.threads, self.worker_reporter = devices, threads, worker_reporter
        self.results = self.ctx.Queue()
        self.procs: list[Any] = [None] * len(devices)
        self.inboxes: list[Any] = [None] * len(devices)
        self.current: list[Unit | None] = [None] * len(devices)
        self.models: list[tuple | None] = [None] * len(devices)
        self.capacity = self.workers = len(devices)
        for slot in range(len(devices)):
            self._start(slot)

    def _start(self, slot: int) -> None:
        self.inboxes[slot] = self.ctx.Queue()
        process = self.ctx.Process(
            target=_pool_main,
            args=(slot, self.devices[slot], self.threads, self.inboxes[slot], self.results, self.worker_reporter),
            name=f"vedit-batch-{slot + 1}", daemon=True,
        )  # fmt: skip
        process.start()
        self.procs[slot] = process
        self.models[slot] = None

    def idle(self) -> list[int]:
        return [slot for slot, unit in enumerate(self.current) if unit is None]

    def prefer(self, slot: int) -> tuple | None:
        return self.models[slot]

    def submit(self, slot: int, unit: Unit) -> str:
        self.current[slot] = unit
        self.models[slot] = unit.model_key
        self.inboxes[slot].put(unit)
        device = self.devices[slot]
        return f"worker {slot + 1}" + (f" ({device})" if device else "")

    def wait(self, timeout: float) -> list[tuple[Unit, Outcome]]:
        done: list[tuple[Unit, Outcome]] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                _, slot, uid, outcome = self.results.get(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
            except queue.Empty:
                break
            unit = self.current[slot]
            if unit is not None and unit.uid == uid:
                self.current[slot] = None
                done.append((unit, outcome))
            if time.monotonic() >= deadline:
                break
        for slot, process in enumerate(self.procs):
            unit = self.current[slot]
            if unit is not None and not process.is_alive():
                code = process.exitcode
                why = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
                done.append(
                    (unit, Outcome("died", reason=f"worker {slot + 1} died ({why})", worker=f"worker {slot + 1}"))
                )
                self.current[slot] = None
                self._start(slot)
        return done

    def close(self, interrupted: bool = False) -> None:
        for slot, process in enumerate(self.procs):
            if process is None:
                continue
            if interrupted:
                process.terminate()
            else:
                with contextlib.suppress(Exception):
                    self.inboxes[slot].put(None)
        for process in self.procs:
            if process is not None:
                process.join(timeout=30)
                if process.is_alive():
                    process.kill()
                    process.join()


class _RayWorker:
    """A Ray actor: one worker slot (one GPU where the cluster has GPUs) that keeps its model
    between units, like a pool worker process. Units run one at a time, in the order sent."""

    def __init__(self, slot: int, worker_reporter: WorkerReporter | None = None):
        import ray

        self.name = f"ray worker {slot + 1} (node {ray.get_runtime_context().get_node_id()[:8]}, pid {os.getpid()})"
        self.worker_reporter = worker_reporter

    def invert(self, unit: Unit) -> tuple[Outcome, bytes | None]:
        """One inversion; its trajectory also goes back as bytes, into the object store of this
        worker's machine, for edits on machines that cannot read this one's cache folder."""
        outcome = execute(unit, reporter=_reporter_in_worker(self.worker_reporter, unit), worker=self.name)
        data = None
        if outcome.status == "done" and outcome.trajectory:
            with contextlib.suppress(OSError):
                data = Path(outcome.trajectory["path"]).read_bytes()
        return outcome, data

    def edit(self, unit: Unit, shared: list[Any] | None) -> Outcome:
        """One edit. ``shared`` holds its group's trajectory's object reference, nested in a list so
        that Ray fetches it only when this machine cannot read the shared cache folder."""
        import ray

        fetch = (lambda: ray.get(shared[0])) if shared else None
        return execute(unit, reporter=_reporter_in_worker(self.worker_reporter, unit), worker=self.name, fetch=fetch)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise PluginError(f"{option_label('ray')} needs the ray package: pip install 'vedit[ray]'") from None
    return ray


class _Ray:
    """Units on Ray: ``workers`` actors (one GPU each on a cluster with GPUs, one CPU each
    otherwise), each keeping its model loaded like a pool worker. An actor whose process dies is
    replaced (Ray places the new one wherever a GPU or CPU is free) and its unit given back to the
    schedule; a unit's own failure is its outcome, never retried. The actors are ended with the
    batch, so no GPU memory stays held."""

    kind = "ray"

    def __init__(self, address: str, workers: int | None, worker_reporter: WorkerReporter | None = None):
        ray = self.ray = _import_ray()
        self.started_here = False
        if not ray.is_initialized():
            # ray.init installs its own SIGTERM handler; vedit's (a terminated batch ends like
            # Ctrl-C: workers ended, summary written) is put back after it.
            on_term = signal.getsignal(signal.SIGTERM)
            try:
                if address == "auto":
                    try:
                        ray.init(address="auto", log_to_driver=False)
                    except ConnectionError:
                        ray.init(log_to_driver=False, include_dashboard=False)
                        self.started_here = True
                elif address == "local":
                    ray.init(log_to_driver=False, include_dashboard=False)
                    self.started_here = True
                else:
                    ray.init(address=address, log_to_driver=False)
            except Exception as error:  # noqa: BLE001 — one line, whatever Ray raises
                raise ConfigError(
                    f"{option_value('ray', address)}: cannot connect to a Ray cluster: {unit_failure(error)}"
                ) from None
            finally:
                with contextlib.suppress(ValueError, TypeError):  # not the main thread, or not a Python handler
                    signal.signal(signal.SIGTERM, on_term)
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        slots = self.gpus or max(1, int(resources.get("CPU", 1)))
        self.notes: list[str] = []
        if workers is not None and workers > slots:
            what = "GPUs" if self.gpus else "CPUs"
            self.notes.append(
                f"{option_value('workers', workers)}: the Ray cluster has {slots} {what}; using {slots} workers"
            )
        self.capacity = self.workers = min(workers or slots, slots)
        need = {"num_gpus": 1} if self.gpus else {"num_cpus": 1}
        self.actor_class = ray.remote(max_restarts=0, **need)(_RayWorker)
        self.worker_reporter = worker_reporter
        self.actors: list[Any] = [self.actor_class.remote(slot, worker_reporter) for slot in range(self.capacity)]
        self.current: list[Unit | None] = [None] * self.capacity
        self.models: list[tuple | None] = [None] * self.capacity
        self.pending: dict[Any, int] = {}  # an outcome's object reference → its slot
        self.data: dict[str, Any] = {}  # a running inversion's uid → its bytes' object reference
        self.shared: dict[str, Any] = {}  # an inversion's trajectory path → its bytes' object reference

    def idle(self) -> list[int]:
        return [slot for slot, unit in enumerate(self.current) if unit is None]

    def prefer(self, slot: int) -> tuple | None:
        return self.models[slot]

    def submit(self, slot: int, unit: Unit) -> str:
        actor = self.actors[slot]
        self.current[slot] = unit
        self.models[slot] = unit.model_key
        if unit.kind == "invert":
            ref, data = actor.invert.options(num_returns=2).remote(unit)
            self.data[unit.uid] = data
        else:
            path = (unit.trajectory or {}).get("path")
            ref = actor.edit.remote(unit, [self.shared[path]] if path in self.shared else None)
        self.pending[ref] = slot
        return f"ray worker {slot + 1}"

    def wait(self, timeout: float) -> list[tuple[Unit, Outcome]]:
        if not self.pending:
            return []
        ready, _ = self.ray.wait(list(self.pending), num_returns=len(self.pending), timeout=timeout)
        done = []
        for ref in ready:
            slot = self.pending.pop(ref)
            unit = self.current[slot]
            self.current[slot] = None
            assert unit is not None
            data = self.data.pop(unit.uid, None)
            try:
                outcome = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as error:
                why = (str(error).strip().splitlines() or ["it died"])[0][:160]
                outcome = Outcome("died", reason=f"ray worker {slot + 1} died ({why})", worker=f"ray worker {slot + 1}")
                self.actors[slot] = self.actor_class.remote(slot, self.worker_reporter)
                self.models[slot] = None
            except Exception as error:  # noqa: BLE001 — e.g. the object store lost a result
                outcome = Outcome("failed", reason=unit_failure(error), worker=f"ray worker {slot + 1}")
            if outcome.status == "done" and outcome.trajectory and data is not None:
                self.shared[outcome.trajectory["path"]] = data
            done.append((unit, outcome))
        return done

    def close(self, interrupted: bool = False) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        self.actors.clear()
        self.pending.clear()
        self.data.clear()
        self.shared.clear()
        if self.started_here:
            self.ray.shutdown()


def local_devices() -> list[str]:
    """The CUDA devices of this machine, as ``cuda:N``."""
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def choose_backend(
    plan: Plan,
    *,
    workers: int | None = None,
    ray: str | None = None,
    events: BatchEvents | None = None,
    worker_reporter: WorkerReporter | None = None,
) -> Any:
    """Ray with ``ray`` (an address, ``auto`` or ``local``); else a pool of worker processes when
    ``workers`` > 1 or this machine has several GPUs; else this process.

    ``worker_reporter(unit)`` is called in the pool's worker processes and Ray's actors, for each
    unit they run, and its reporter (None: none) receives that unit's stage progress: a module-level
    function or class, since it is pickled to them. Units run in this process report to
    ``events.reporter(unit)`` instead."""
    events = events or BatchEvents()
    if workers is not None and workers < 1:
        raise ConfigError(f"{option_label('workers')} must be 1 or more, got {workers}")
    if not plan.todo:
        return _Serial(events)  # nothing to do: no pool started, no cluster joined
    if ray:
        return _Ray(ray, workers, worker_reporter)
    devices = local_devices()
    count = workers if workers is not None else (len(devices) if len(devices) > 1 else 1)
    if count <= 1:
        return _Serial(events)
    if devices:
        return _Pool([devices[i % len(devices)] for i in range(count)], threads=0, worker_reporter=worker_reporter)
    return _Pool([None] * count, threads=max(1, (os.cpu_count() or 1) // count), worker_reporter=worker_reporter)
