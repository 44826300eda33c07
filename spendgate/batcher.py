"""A worker thread that takes items in batches, waking on a timer rather than per item.

Waking a thread for every request costs the proxy's event loop a GIL hand-off each time; handing
items over through a deque and draining it every `interval` seconds costs one wake-up per
interval however busy the proxy is. With nothing to do the thread sleeps until the first item:
a timer that woke an idle meter 20 times a second cost the gateway 2.6 ms of CPU a second at
rest, on every laptop it runs on (issue 18). `put()` never blocks; `flush()` waits until
everything put before it has been handled; `close()` handles what is left and stops.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(self, handle: Callable[[list[T]], bool | None], interval: float, name: str,
                 max_items: int = 0, min_gap: float = 0.0) -> None:
        """`handle(items)` returns False when it kept items to retry: flushes then keep waiting.
        `max_items` (0: none): that many items waiting wake the thread before the interval ends.
        `min_gap` (0: none): a paced flush cuts the interval short, but handles no sooner than this
        many seconds after the last batch (readers polling in a loop cannot make every batch their own)."""
        self.handle = handle
        self.interval = interval
        self.max_items = max_items
        self.min_gap = min_gap
        self._handled_at = float("-inf")  # monotonic time the last batch was handled
        self._items: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()  # handle now: a flush, a full batch, close
        self._arrived = threading.Event()  # the first item after idle: gather a batch, then handle it
        self._sleeping = False  # the thread waits for _arrived (or is about to): put() must set it
        self._stopping = False
        self._hurry = threading.Event()  # close(), a full batch or a flush not paced: ends a wait out of min_gap
        self._handling = False  # set before a batch is taken, cleared once handled (`pending`)
        # read by `handle` on this batcher's thread: a flush or close() waits on this batch, so a
        # handler that may hold items back for a bigger batch (the ledger's writer) must not
        self.awaited = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        self._items.append(item)  # deque.append is atomic: no lock; a wake-up only after idle
        # (appended before _sleeping is read, as _run sets it before looking at the deque: one
        # of the two sees the other's write, so an item never waits for a wake-up that is not coming)
        if self._sleeping:
            self._arrived.set()
        if self.max_items and len(self._items) >= self.max_items:
            self._wake.set()  # a full batch: handle it now rather than hold more
            self._hurry.set()

    @property
    def pending(self) -> bool:
        """Whether items put before are not handled yet (read from any thread; a batch being handled
        counts as pending until it is done)."""
        return self._handling or bool(self._items)

    def flush(self, timeout: float = 10.0, paced: bool = False) -> bool:
        """Wait until everything put before is handled; True when it was within `timeout` seconds.
        `paced`: no sooner than `min_gap` after the last batch (a reader's), else at once (shutdown, tests)."""
        if not self._thread.is_alive():  # closed: nothing will handle what is left
            return not self._items
        done = threading.Event()
        self._items.append(done)
        if not paced:
            self._hurry.set()
        self._wake.set()
        self._arrived.set()
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        self._stopping = True
        self._hurry.set()
        self._wake.set()
        self._arrived.set()
        self._thread.join(timeout)

    def _idle(self) -> None:
        """Sleep until put(), flush() or close() (a spurious return only costs one empty batch)."""
        self._sleeping = True
        if not self._items and not self._stopping:
            self._arrived.wait()
        self._sleeping = False
        self._arrived.clear()

    def _run(self) -> None:
        waiting: list[threading.Event] = []  # flushes not yet satisfied
        retry = False  # the handler kept items: it is called again every interval until it takes them
        while True:
            if not (self._items or waiting or retry or self._stopping):
                self._idle()
            stopping = self._stopping
            if not stopping:  # closing: hand over what is left now (a close() that came while this
                self._wake.wait(self.interval)  # thread gathered must not wait out a second interval)
                rest = self._handled_at + self.min_gap - time.monotonic()
                if rest > 0:  # woken by a paced flush this soon after the last batch: not yet
                    self._hurry.wait(rest)
                self._hurry.clear()
            self._wake.clear()
            self._handling = True  # before the items leave the deque: `pending` never reads a gap
            items: list[T] = []
            while self._items:
                item = self._items.popleft()
                (waiting if isinstance(item, threading.Event) else items).append(item)
            busy = bool(items) or retry  # the handler has work (an empty batch is no batch to space out)
            self.awaited = bool(waiting) or stopping
            try:
                ok = self.handle(items) is not False
                retry = not ok
            except Exception:
                log.exception("%s: batch handler failed", self._thread.name)
                ok = True  # the handler lost those items; say so above, keep going
                # (but not those it kept from before, if it had: `retry` stays as it was, so a
                # transient failure on a retry does not leave them waiting for some later put)
            self._handling = False
            if busy:
                self._handled_at = time.monotonic()
            if ok:
                for done in waiting:
                    done.set()
                waiting.clear()
            if stopping and not self._items:
                for done in waiting:
                    done.set()
                return


class LoopBatcher(Generic[T]):
    """A Batcher whose batches run on an asyncio event loop's own thread, between its callbacks.

    Why: under the GIL a worker thread's Python work does not run beside the loop, it runs instead
    of it, and each hand-over also costs the loop: its caches, and a wait for the lock. Measured in
    the proxy (issue 18, docs/architecture.md "twenty-eighth part"): the meter's batches on the
    event loop cost 40-55 µs less CPU per 100 KB request at 10 in flight than on their own thread
    (the same at 1 in flight), and requests/s went from 0.878 to 0.910 of plain mitmdump's.

    `handle` must not block (no network, no DuckDB). Items go to `fallback` (a thread Batcher)
    instead when `light(item)` is False (large work), when they are put from another thread, and
    while the fallback still has some, with those waiting here handed over first: items are handled
    in the order they came. `handle` may also return the tail of its batch that it found too large
    for the loop; that tail goes to the fallback ahead of the rest. At most `max_batch` items are
    handled per callback; the rest wait for the loop's next turn, after its I/O. Create it on the
    loop's thread. `flush()`, `detach()` and `close()` may be called from any thread.
    """

    def __init__(self, handle: Callable[[list[T]], list[T] | None], interval: float, loop: Any,
                 fallback: Batcher[T], light: Callable[[T], bool], max_batch: int = 32) -> None:
        self.handle = handle
        self.interval = interval
        self.loop = loop
        self.fallback = fallback
        self.light = light
        self.max_batch = max_batch
        self._thread = threading.get_ident()  # the loop's
        self._items: collections.deque[T] = collections.deque()
        self._armed = False  # a drain is scheduled on the loop
        self._closed = False  # detached: every put goes to the fallback
        # taken by a drain and by a hand-over: they never run at once (the loop's drain, a flush's
        # once the loop has stopped, another thread's put); reentrant, so a handler that flushes on
        # the loop's thread drains the rest in order instead of deadlocking
        self._lock = threading.RLock()

    def put(self, item: T) -> None:
        if self._closed or threading.get_ident() != self._thread or self.fallback.pending or not self.light(item):
            with self._lock:
                self._hand_over()
                self.fallback.put(item)
            return
        self._items.append(item)
        if not self._armed:
            self._armed = True
            self.loop.call_later(self.interval, self._drain)

    def _hand_over(self, first: Iterable[T] = ()) -> None:
        """`first`, then the items waiting here, go to the fallback, in that order (the lock is held)."""
        for item in first:
            self.fallback.put(item)
        while self._items:
            self.fallback.put(self._items.popleft())

    def _drain(self, everything: bool = False, again: bool = True) -> None:
        """Handle up to max_batch waiting items (`everything`: all of them); with `again`, what is
        left waits for the loop's next turn, after the I/O that came meanwhile."""
        with self._lock:
            self._armed = False
            while self._items:
                items = [self._items.popleft() for _ in range(min(len(self._items), self.max_batch))]
                try:
                    left = self.handle(items)
                except Exception:
                    log.exception("loop batch handler failed")
                    left = None
                if left:  # too large for the loop: the fallback takes it, and then what waited here
                    self._hand_over(left)
                if not everything:
                    break
            if self._items and again and not self._armed:
                self._armed = True
                self.loop.call_soon(self._drain)

    def drain_here(self) -> bool:
        """Handle every waiting item now, when called on the loop's thread; True if there were any."""
        if threading.get_ident() != self._thread or not self._items:
            return False
        self._drain(everything=True)
        return True

    def _drain_all(self, timeout: float, closing: bool = False) -> bool:
        """Every waiting item handled: here when this is the loop's thread or the loop has stopped;
        else by the loop, a batch per turn, while this thread waits. A wait ends early (False) once
        another thread detached this batcher: that one drains what is left (it may be the loop, busy
        closing the very thread that waits here)."""
        if threading.get_ident() == self._thread or not self.loop.is_running():
            self._drain(everything=True)
            return True
        done = threading.Event()

        def step() -> None:
            self._drain(again=False)
            if self._items:
                self.loop.call_soon(step)
            else:
                done.set()

        try:
            self.loop.call_soon_threadsafe(step)
        except RuntimeError:  # the loop closed meanwhile
            self._drain(everything=True)
            return True
        deadline = time.monotonic() + timeout
        while not done.wait(0.05):
            if (self._closed and not closing) or time.monotonic() >= deadline:
                return False
        return True

    def flush(self, timeout: float = 10.0, paced: bool = False) -> bool:
        """Wait until everything put before is handled (here and in the fallback); True within `timeout`."""
        return self._drain_all(timeout) and self.fallback.flush(timeout, paced)

    def detach(self, timeout: float = 30.0) -> None:
        """Batch on the loop no more: later puts go to the fallback, what waits here is handled now."""
        self._closed = True
        self._drain_all(timeout, closing=True)

    def close(self, timeout: float = 30.0) -> None:
        """Detach, then close the fallback (which handles what it holds first)."""
        self.detach(timeout)
        self.fallback.close(timeout)
