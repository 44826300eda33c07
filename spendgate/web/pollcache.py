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

import json
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
SLICE = 200  # list items encoded per step of `encode` (a step holds the GIL ~0.2-1 ms)
_ENCODER = json.JSONEncoder(default=str)  # what json.dumps(payload, default=str) uses


def encode(payload: Any, depth: int = 0) -> str:
    """json.dumps(payload, default=str), the same text, encoded a slice at a time.

    json.dumps of a 2 MB answer is one C call that holds the GIL for tens of milliseconds, and
    the proxy's event loop, needing it for every request, waits that long. Lists longer than
    SLICE (the per-user breakdowns) are encoded SLICE items at a time with `time.sleep(0)` in
    between, which hands the GIL to a waiting thread at once instead of after the 5 ms switch
    interval.
    """
    if isinstance(payload, dict) and depth < 4 and all(isinstance(k, str) for k in payload):
        return "{" + ", ".join(f"{_ENCODER.encode(k)}: {encode(v, depth + 1)}" for k, v in payload.items()) + "}"
    if isinstance(payload, list) and len(payload) > SLICE:
        parts = []
        for i in range(0, len(payload), SLICE):
            parts.append(_ENCODER.encode(payload[i : i + SLICE])[1:-1])
            time.sleep(0)
        return "[" + ", ".join(parts) + "]"
    return _ENCODER.encode(payload)


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
