"""The reader and writer threads (vedit.io.threads): ReadAhead and WriteBehind."""

from __future__ import annotations

import threading
import time

import pytest

from vedit.io.threads import ReadAhead, WriteBehind


def test_read_ahead_gives_every_item_in_order_and_stays_within_its_depth():
    produced: list[int] = []

    def source():
        for i in range(20):
            produced.append(i)
            yield i

    with ReadAhead(source(), depth=3) as items:
        time.sleep(0.3)  # the reader runs ahead while nothing is taken
        ahead = len(produced)
        assert list(items) == list(range(20))
    # three queued, one more made and waiting for room: never the whole source
    assert 3 <= ahead <= 4


def test_read_ahead_raises_the_sources_error_where_it_happened_and_closes_the_source():
    closed = threading.Event()

    def source():
        try:
            yield 1
            yield 2
            raise ValueError("frame 3 is damaged")
        finally:
            closed.set()

    with ReadAhead(source(), depth=8) as items:
        got = []
        with pytest.raises(ValueError, match="frame 3 is damaged"):
            for item in items:
                got.append(item)
    assert got == [1, 2]
    assert closed.is_set()


def test_closing_read_ahead_early_stops_a_blocked_reader_and_runs_the_sources_cleanup():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    reader = ReadAhead(endless(), depth=2)
    assert next(iter(reader)) == 0
    reader.close()
    assert closed.is_set() and not reader._thread.is_alive()


def test_write_behind_consumes_in_order_on_its_own_thread():
    seen, threads = [], set()

    def consume(item):
        time.sleep(0.01)
        seen.append(item)
        threads.add(threading.current_thread().name)

    with WriteBehind(consume, depth=2) as behind:
        for i in range(10):
            behind.put(i)
    assert seen == list(range(10))
    assert threads == {"vedit-writer"}


def test_write_behind_raises_the_consumers_error_and_stops_consuming():
    seen = []

    def consume(item):
        if item == 3:
            raise OSError("disk full")
        seen.append(item)

    with pytest.raises(OSError, match="disk full"):
        with WriteBehind(consume, depth=1) as behind:
            for i in range(50):
                behind.put(i)
    assert seen == [0, 1, 2]
