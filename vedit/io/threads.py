"""Work beside the model: a reader thread that runs ahead and a writer thread that runs behind.

Both hand items over through bounded queues, so memory stays bounded whatever the clip's length;
an error on either side reaches the other at its next hand-over, and closing stops the thread
and waits for it, so nothing runs on after the run has ended (or failed).
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from ..runtime import profiling

T = TypeVar("T")

_DONE = object()
_POLL = 0.1  # seconds between checks of the stop flag while a queue is full or empty


def _thread(run: Callable[..., None], profile: profiling.Profile | None, name: str) -> threading.Thread:
    """A daemon thread that runs in the caller's context, so that an error raised there names
    options as the caller's would (flags under the command line: vedit.config.option_label)."""
    return threading.Thread(target=contextvars.copy_context().run, args=(run, profile), name=name, daemon=True)


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class ReadAhead(Generic[T]):
    """Iterate ``source`` on a thread, up to ``depth`` items ahead of the consumer.

    Use as a context manager (or call :meth:`close`); iterating gives the items in order and
    re-raises the source's error where it happened.
    """

    def __init__(self, source: Iterable[T], depth: int, *, name: str = "vedit-reader"):
        self._source = source
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        profile = profiling.current()
        self._thread = _thread(self._run, profile, name)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, profile: profiling.Profile | None) -> None:
        iterator = iter(self._source)
        with profiling.profiling(profile):
            try:
                while not self._stop.is_set():
                    with profiling.stage("read", sync=False):
                        item = next(iterator, _DONE)
                    if item is _DONE or not self._put(item):
                        break
            except BaseException as error:  # handed to the consumer, raised there
                self._put(_Failure(error))
                return
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()  # a generator's cleanup (e.g. killing its ffmpeg) runs here, on this thread
        self._put(_DONE)

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                item = self._queue.get(timeout=_POLL)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    return
                continue
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class WriteBehind(Generic[T]):
    """Call ``consume(item)`` on a thread for every item :meth:`put`, in order, at most ``depth``
    items behind. :meth:`finish` waits for the last one; an error in ``consume`` is raised by the
    next :meth:`put` or by :meth:`finish`. Leaving the ``with`` block on an error stops the thread
    without consuming what is still queued."""

    def __init__(self, consume: Callable[[T], None], depth: int, *, name: str = "vedit-writer"):
        self._consume = consume
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        profile = profiling.current()
        self._thread = _thread(self._run, profile, name)
        self._thread.start()

    def _run(self, profile: profiling.Profile | None) -> None:
        with profiling.profiling(profile):
            while True:
                try:
                    item = self._queue.get(timeout=_POLL)
                except queue.Empty:
                    if self._stop.is_set():
                        return
                    continue
                if item is _DONE or self._stop.is_set():
                    return
                try:
                    self._consume(item)
                except BaseException as error:
                    self._error = error
                    self._stop.set()
                    return

    def _check(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def put(self, item: T) -> None:
        while True:
            self._check()
            if self._stop.is_set():
                raise RuntimeError("the writer thread has stopped")
            try:
                self._queue.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Wait until everything put has been consumed; raise the consumer's error, if any."""
        while self._thread.is_alive():
            try:
                self._queue.put(_DONE, timeout=_POLL)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._check()

    def abort(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> WriteBehind[T]:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()


__all__ = ["ReadAhead", "WriteBehind"]
