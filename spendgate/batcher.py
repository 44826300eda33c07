"""A worker thread that takes items in batches, waking on a timer rather than per item.

Waking a thread for every request costs the proxy's event loop a GIL hand-off each time; handing
items over through a deque and draining it every `interval` seconds costs one wake-up per
interval however busy the proxy is. `put()` never blocks; `flush()` waits until everything put
before it has been handled; `close()` handles what is left and stops.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(self, handle: Callable[[list[T]], bool | None], interval: float, name: str,
                 max_items: int = 0) -> None:
        """`handle(items)` returns False when it kept items to retry: flushes then keep waiting.
        `max_items` (0: none): that many items waiting wake the thread before the interval ends."""
        self.handle = handle
        self.interval = interval
        self.max_items = max_items
        self._items: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        self._items.append(item)  # deque.append is atomic: no lock, no wake-up
        if self.max_items and len(self._items) >= self.max_items:
            self._wake.set()  # a full batch: handle it now rather than hold more

    def flush(self, timeout: float = 10.0) -> bool:
        done = threading.Event()
        self._items.append(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        waiting: list[threading.Event] = []  # flushes not yet satisfied
        while True:
            stopping = self._stopping
            self._wake.wait(self.interval)
            self._wake.clear()
            items: list[T] = []
            while self._items:
                item = self._items.popleft()
                (waiting if isinstance(item, threading.Event) else items).append(item)
            try:
                ok = self.handle(items) is not False
            except Exception:
                log.exception("%s: batch handler failed", self._thread.name)
                ok = True  # the handler lost those items; say so above, keep going
            if ok:
                for done in waiting:
                    done.set()
                waiting.clear()
            if stopping and not self._items:
                for done in waiting:
                    done.set()
                return
