"""One computation per poll interval for the routes the dashboard page polls, however many tabs.

The page (app.js) asks for the overview, budgets, runway and seat plans every REFRESH_MS (5 s).
Each answer is built and JSON-encoded in Python in the gateway's process, holding the
interpreter lock that the proxy's event loop needs for every request: with the answers computed
per tab, each open tab added its share of proxy latency (issue 22). Here the encoded response is
kept POLL_TTL seconds per (route, query, caller) and shared: N tabs cost what one costs, and
concurrent misses wait for the one computation under way (single flight) instead of each
computing it. Only the page's own requests (a signed-in browser session) are served from it; API
clients (the CLI, scripts, `spendgate top`) always get a fresh answer, and any successful POST
(a decision, a grant, a re-pricing) clears it, so the page shows a write at its next poll.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

POLL_TTL = 4.0  # seconds: under the page's 5 s refresh, so a lone tab still gets fresh data each poll
POLLED = frozenset({"/api/overview", "/api/budgets", "/api/runway", "/api/reconcile/plans"})


def polled(path: str, params: dict[str, Any]) -> bool:
    """A route the page polls, with the parameters it polls it with (budgets: only `?top=N`;
    every budget, `spendgate budgets`, is never cached)."""
    return path in POLLED and (path != "/api/budgets" or bool(params.get("top")))


class PollCache:
    """Thread-safe TTL cache with single flight. `get` returns (value, hit)."""

    def __init__(self, ttl: float = POLL_TTL, clock: Callable[[], float] = time.monotonic, limit: int = 512) -> None:
        self.ttl, self.clock, self.limit = ttl, clock, limit
        self._items: dict[Any, tuple[float, Any]] = {}
        self._flights: dict[Any, threading.Event] = {}
        self._lock = threading.Lock()
        self.computed = 0  # computations (a miss that did the work), for tests and metrics

    def clear(self) -> None:
        """Forget every answer (after a write through the API: the next poll computes afresh)."""
        with self._lock:
            self._items.clear()

    def get(self, key: Any, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """The value for `key`: cached if younger than ttl, else computed once (others wait for it).
        An exception from `compute` reaches its caller; waiters then compute themselves."""
        while True:
            with self._lock:
                hit = self._items.get(key)
                if hit is not None and self.clock() - hit[0] < self.ttl:
                    return hit[1], True
                flight = self._flights.get(key)
                if flight is None:
                    flight = self._flights[key] = threading.Event()
                    break
            flight.wait(60.0)  # the computing thread sets it, success or not; then look again
        try:
            started = self.clock()
            value = compute()
            with self._lock:
                if len(self._items) >= self.limit:
                    self._items.clear()
                self._items[key] = (started, value)
                self.computed += 1
            return value, False
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.set()
