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
from collections.abc import Callable
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

    def flush(self, timeout: float = 10.0, paced: bool = False) -> bool:
        """Wait until everything put before is handled; True when it was within `timeout` seconds.
        `paced`: no sooner than `min_gap` after the last batch (a reader's), else at once (shutdown, tests)."""
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
