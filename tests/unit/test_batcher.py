"""spendgate.batcher: batches on a timer while busy, sleeps while idle, never strands an item."""

from __future__ import annotations

import collections
import random
import sys
import threading
import time
from functools import partial

import pytest

from spendgate.batcher import Batcher
from tests.support import wait_until


class Recorder:
    """A handler that records its batches; `refuse` batches are kept (returns False) first."""

    def __init__(self, refuse: int = 0) -> None:
        self.batches: list[list[int]] = []
        self.calls = 0
        self.refuse = refuse
        self.kept: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, items: list[int]) -> bool:
        with self.lock:
            self.calls += 1
            if self.refuse:
                self.refuse -= 1
                self.kept += items
                return False
            self.batches.append(self.kept + items)
            self.kept = []
            return True

    def handled(self) -> list[int]:
        with self.lock:
            return [i for b in self.batches for i in b]


wait_for = partial(wait_until, timeout=5.0, every=0.002)  # raises AssertionError when it runs out


def test_an_idle_batcher_does_not_wake() -> None:
    rec = Recorder()
    b = Batcher(rec, 0.005, "test-idle")
    try:
        time.sleep(0.3)  # the old timer called the handler ~60 times in this time
        assert rec.calls == 0
        b.put(1)
        assert wait_for(lambda: rec.handled() == [1])
        calls = rec.calls
        time.sleep(0.2)  # idle again after the batch
        assert rec.calls <= calls + 1  # at most one spurious empty batch
    finally:
        b.close()


def test_items_put_in_a_burst_are_handled_in_few_batches() -> None:
    rec = Recorder()
    b = Batcher(rec, 0.05, "test-burst")
    try:
        for i in range(1000):
            b.put(i)
        assert b.flush()
        assert rec.handled() == list(range(1000))
        assert len([x for x in rec.batches if x]) <= 3  # one wake-up for the burst, not one per item
    finally:
        b.close()


def test_a_full_batch_is_handled_before_the_interval() -> None:
    rec = Recorder()
    b = Batcher(rec, 30.0, "test-full", max_items=10)
    try:
        for i in range(10):
            b.put(i)
        assert wait_for(lambda: rec.handled() == list(range(10)), timeout=5.0)
    finally:
        b.close()


def test_kept_items_are_retried_on_the_interval_while_nothing_new_comes() -> None:
    rec = Recorder(refuse=3)  # a ledger whose disk is full for three rounds
    b = Batcher(rec, 0.01, "test-retry")
    try:
        b.put(7)
        assert wait_for(lambda: rec.handled() == [7])
        assert rec.calls >= 4
    finally:
        b.close()


def test_close_handles_what_is_left_and_flush_after_idle_returns() -> None:
    rec = Recorder()
    b = Batcher(rec, 10.0, "test-close")
    time.sleep(0.05)  # asleep, waiting for a first item
    assert b.flush(timeout=5.0)  # a flush wakes it without waiting for the interval
    b.put(1)
    b.put(2)
    t = time.monotonic()
    b.close()
    assert time.monotonic() - t < 5.0
    assert rec.handled() == [1, 2]
    assert not b._thread.is_alive()


@pytest.mark.parametrize("seed", range(4))
def test_no_item_is_stranded_by_producers_racing_the_worker(seed: int) -> None:
    """Many threads putting with random gaps around the worker going idle: every item handled
    within a short time, never left waiting for a wake-up (the put/_idle handshake)."""
    rng = random.Random(seed)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between almost any two bytecodes: the race window opens
    rec = Recorder()
    b = Batcher(rec, 0.0005, "test-race")
    sent: list[int] = []
    lock = threading.Lock()

    def producer(base: int, gaps: list[float]) -> None:
        for k, gap in enumerate(gaps):
            if gap:
                time.sleep(gap)
            b.put(base + k)
            with lock:
                sent.append(base + k)

    try:
        for _ in range(80):
            threads = [threading.Thread(target=producer, args=(
                1_000_000 * t + len(sent), [rng.choice((0, 0, 0, 1e-4, 1e-3)) for _ in range(rng.randint(1, 20))]))
                for t in range(rng.randint(1, 4))]  # fmt: skip
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            # no flush: an item must reach the handler by the worker's own wake-up
            assert wait_for(lambda: sorted(rec.handled()) == sorted(sent), timeout=2.0), "an item was stranded"
            time.sleep(rng.choice((0, 0.001, 0.003)))  # let the worker go idle (or not) before the next burst
    finally:
        sys.setswitchinterval(old)
        b.close()


def test_an_item_appended_while_the_worker_goes_idle_wakes_it() -> None:
    """The handshake's one tight spot, forced: put() has begun while the worker is busy, and its
    item lands only once the worker has looked at the deque and is going to sleep. put() must
    look at `_sleeping` after appending, or that item waits for a wake-up that never comes."""
    busy, go_idle, landed = threading.Event(), threading.Event(), threading.Event()

    def handle(items: list[int]) -> None:
        if items == [1]:
            busy.set()
            go_idle.wait(5)
        if 2 in items:
            landed.set()

    b = Batcher(handle, 0.001, "test-handshake")
    release = threading.Event()

    class SlowDeque(collections.deque):
        def append(self, item: object) -> None:  # the item lands only when the test says so
            if item == 2:
                release.wait(5)
            super().append(item)

    try:
        b.put(1)
        assert busy.wait(5)
        b._items = SlowDeque(b._items)
        producer = threading.Thread(target=b.put, args=(2,))
        producer.start()  # put(2) begins while the worker is in the handler
        time.sleep(0.05)
        go_idle.set()  # the worker finishes, finds the deque empty and goes to sleep
        assert wait_for(lambda: b._sleeping, timeout=5)
        time.sleep(0.05)
        release.set()  # only now does item 2 land
        producer.join(5)
        assert landed.wait(2), "the item appended while the worker went idle was stranded"
    finally:
        release.set()
        go_idle.set()
        b.close()


def test_paced_flushes_soon_after_a_batch_wait_out_min_gap_and_share_one_batch():
    """A paced flush cuts the interval short but not min_gap: readers polling in a loop share a
    batch rather than making every one their own (ledger.FLUSH_GAP); close(), a full batch and a
    flush that is not paced (shutdown, a rebuild) do not wait."""
    rec = Recorder()
    b = Batcher(rec, interval=3600.0, name="t", max_items=50, min_gap=3600.0)
    try:
        b.put(1)
        assert b.flush(5.0, paced=True)  # nothing handled yet: at once
        assert rec.handled() == [1]
        b.put(2)
        assert not b.flush(0.05, paced=True)  # within min_gap of the last batch: not yet
        b.put(3)
        assert not b.flush(0.05, paced=True)
        assert rec.calls == 1
        for i in range(100, 150):  # a full batch is handled at once, gap or not
            b.put(i)
        wait_until(lambda: rec.calls == 2)
        assert rec.handled() == [1, 2, 3, *range(100, 150)]
        b.put(4)
        assert b.flush(5.0)  # not paced: at once, gap or not
        assert rec.handled()[-1] == 4 and rec.calls == 3
        b.put(5)
        assert not b.flush(0.05, paced=True)
    finally:
        b.close(5.0)  # ends the wait out of min_gap: what is left is handled
    assert rec.handled()[-1] == 5 and not b._thread.is_alive()
