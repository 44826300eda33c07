"""spendgate.batcher.LoopBatcher and Meter.record_on: rows recorded on the proxy's event loop.

Items put on the loop's thread are handled there in batches; large items, items put from another
thread, and everything while the worker thread still holds items go to the worker thread, in the
order they came. flush() and close() work from any thread, and nothing is lost when the loop has
stopped (issue 18, twenty-eighth part).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from spendgate.batcher import Batcher, LoopBatcher
from tests.support import wait_until

sys.path.insert(0, str(Path(__file__).parent))
from workflow_env import Env  # noqa: E402


class Seen:
    """A handler recording each item with the thread that handled it, and each batch's size."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, int]] = []
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, items: list) -> None:
        with self.lock:
            self.batches.append(len(items))
            self.items += [(i, threading.get_ident()) for i in items]

    def order(self) -> list:
        with self.lock:
            return [i for i, _ in self.items]

    def threads(self) -> dict:
        with self.lock:
            return dict(self.items)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    yield loop
    if loop.is_running():
        loop.call_soon_threadsafe(loop.stop)
    t.join(5)
    loop.close()


def on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], Any]) -> Any:
    """Run `fn` on the loop's thread and return what it returned."""

    async def call() -> Any:
        return fn()

    return asyncio.run_coroutine_threadsafe(call(), loop).result(5)


def make(loop, seen: Seen, light=lambda item: item != "heavy", interval: float = 0.02, max_batch: int = 32):
    fallback = Batcher(seen, 0.02, "test-fallback")
    b = on_loop(loop, lambda: LoopBatcher(seen, interval, loop, fallback, light, max_batch))
    return b, fallback, on_loop(loop, threading.get_ident)


def test_items_put_on_the_loop_are_handled_there_in_order_after_the_interval(loop) -> None:
    seen = Seen()
    b, fallback, loop_thread = make(loop, seen, interval=0.2)
    try:
        on_loop(loop, lambda: [b.put(i) for i in range(5)])
        time.sleep(0.05)
        assert seen.order() == []  # batched: not one callback per item
        assert wait_until(lambda: seen.order() == list(range(5)), timeout=5)
        assert set(seen.threads().values()) == {loop_thread}
        assert seen.batches == [5]
    finally:
        b.close()


def test_a_heavy_item_goes_to_the_worker_thread_after_those_waiting_and_order_is_kept(loop) -> None:
    seen = Seen()
    b, fallback, loop_thread = make(loop, seen, interval=0.2)
    try:
        on_loop(loop, lambda: [b.put(x) for x in (1, 2, "heavy", 3)])  # 3 comes while the worker holds items
        assert b.flush(5)
        assert seen.order() == [1, 2, "heavy", 3]
        assert all(t != loop_thread for t in seen.threads().values())  # all four on the worker thread
        on_loop(loop, lambda: b.put(4))  # the worker is done: back on the loop
        assert b.flush(5)
        assert seen.threads()[4] == loop_thread
    finally:
        b.close()


def test_items_put_from_another_thread_go_to_the_worker_thread(loop) -> None:
    seen = Seen()
    b, fallback, loop_thread = make(loop, seen)
    try:
        b.put("from here")
        assert b.flush(5)
        assert seen.order() == ["from here"] and seen.threads()["from here"] != loop_thread
    finally:
        b.close()


def test_at_most_max_batch_items_per_callback_the_rest_on_the_loops_next_turns(loop) -> None:
    seen = Seen()
    b, fallback, loop_thread = make(loop, seen, max_batch=8)
    try:
        on_loop(loop, lambda: [b.put(i) for i in range(20)])
        assert wait_until(lambda: len(seen.order()) == 20, timeout=5)
        assert seen.batches == [8, 8, 4] and seen.order() == list(range(20))
    finally:
        b.close()


def test_flush_from_another_thread_waits_for_the_loops_items(loop) -> None:
    seen = Seen()
    b, fallback, loop_thread = make(loop, seen, interval=30.0)  # the timer alone would take 30 s
    try:
        on_loop(loop, lambda: [b.put(i) for i in range(3)])
        assert b.flush(5)
        assert seen.order() == [0, 1, 2] and set(seen.threads().values()) == {loop_thread}
    finally:
        b.close()


def test_a_flush_on_the_loops_own_thread_handles_at_once(loop) -> None:
    seen = Seen()
    b, fallback, loop_thread = make(loop, seen, interval=30.0)
    try:
        assert on_loop(loop, lambda: (b.put("a"), b.flush(5))[1])
        assert seen.order() == ["a"]
    finally:
        b.close()


def test_close_after_the_loop_stopped_handles_what_waited_and_later_puts_reach_the_worker(loop) -> None:
    seen = Seen()
    b, fallback, loop_thread = make(loop, seen, interval=30.0)
    on_loop(loop, lambda: [b.put(i) for i in range(3)])
    loop.call_soon_threadsafe(loop.stop)
    assert wait_until(lambda: not loop.is_running(), timeout=5)
    b.close()
    assert seen.order() == [0, 1, 2]  # handled here, nothing lost
    assert threading.get_ident() in set(seen.threads().values())


def test_a_failing_batch_is_logged_and_later_items_are_still_handled(loop, caplog) -> None:
    seen = Seen()
    fails = [True]

    def handle(items: list) -> None:
        if fails.pop() if fails else False:
            raise RuntimeError("boom")
        seen(items)

    fallback = Batcher(handle, 0.02, "test-fallback")
    b = on_loop(loop, lambda: LoopBatcher(handle, 0.01, loop, fallback, lambda item: True))
    try:
        on_loop(loop, lambda: b.put(1))
        assert wait_until(lambda: "loop batch handler failed" in caplog.text, timeout=5)
        on_loop(loop, lambda: b.put(2))
        assert b.flush(5) and seen.order() == [2]
    finally:
        b.close()


# -- the meter on the loop -----------------------------------------------------------------------------


def test_the_meter_records_small_answers_on_the_loop_and_large_ones_on_its_worker(loop, tmp_path) -> None:
    from spendgate.metering.meter import LOOP_BODY_BYTES, Body, Meter, light

    ex = SimpleNamespace(request=SimpleNamespace(results=None))
    assert light((ex, Body(b"x" * LOOP_BODY_BYTES), None, 0, 0.0))
    assert not light((ex, Body(b"x" * (LOOP_BODY_BYTES + 1)), None, 0, 0.0))
    assert not light((ex, Body(b"x" * 9000, "gzip"), None, 0, 0.0))  # may decode to far more
    assert light((ex, None, None, 0, 0.0))  # a stream's result, read as it passed
    assert not light((SimpleNamespace(request=SimpleNamespace(results=["r"])), None, None, 0, 0.0))

    recorded: list[tuple[str, int]] = []
    meter = Meter.__new__(Meter)  # only the batching parts: _record is replaced below
    meter._thread = Batcher(lambda items: meter._record_batch(items), 0.02, "test-meter")
    meter._worker = meter._thread
    meter._record = lambda ex, result, ended, bytes_out, done_at: recorded.append((ex.name, threading.get_ident()))
    try:
        assert meter._worker is meter._thread
        on_loop(loop, lambda: meter.record_on(loop))
        assert isinstance(meter._worker, LoopBatcher)
        loop_thread = on_loop(loop, threading.get_ident)
        small = SimpleNamespace(name="small", request=SimpleNamespace(results=None))
        large = SimpleNamespace(name="large", request=SimpleNamespace(results=None))
        on_loop(loop, lambda: (meter._worker.put((small, Body(b"{}"), None, 2, 0.0)),
                               meter._worker.put((large, Body(b" " * (LOOP_BODY_BYTES + 1)), None, 0, 0.0))))
        assert meter._worker.flush(5)
        assert [n for n, _ in recorded] == ["small", "large"]  # in order, both on the worker (the large came second)
        on_loop(loop, lambda: meter._worker.put((small, Body(b"{}"), None, 2, 0.0)))
        assert meter._worker.flush(5)
        assert recorded[-1] == ("small", loop_thread)
    finally:
        meter._worker.close()


def test_a_gateway_on_a_shared_store_keeps_recording_on_the_worker_thread(loop) -> None:
    from spendgate.gateway import Gateway

    calls: list[str] = []
    stub = SimpleNamespace(book=SimpleNamespace(store=SimpleNamespace(shared=True)),
                           meter=SimpleNamespace(record_on=lambda loop: calls.append("meter")),
                           workflow=SimpleNamespace(defer_alert_writes=lambda: calls.append("alerts")))
    assert Gateway.record_on(stub, loop) is False and calls == []  # settling there waits on PostgreSQL
    stub.book.store.shared = False
    assert Gateway.record_on(stub, loop) is True and calls == ["alerts", "meter"]


# -- alerts: a crossing's writes leave the caller's thread ---------------------------------------------

POLICY = """\
version: 1
timezone: UTC
organization: {name: acme, owners: [cfo@acme.com]}
defaults:
  user: {day: 10}
alerts: {thresholds: [50, 80], projection_min_percent: 100}
"""


def test_deferred_alert_writes_run_on_their_own_thread_and_fire_once(tmp_path) -> None:
    from spendgate.identity import Identity

    env = Env(tmp_path / "l.duckdb", datetime(2026, 11, 30, 12, 0, tzinfo=UTC), POLICY)
    try:
        alice = Identity(user="alice@core.acme.com", source="test")
        env.wf.defer_alert_writes()
        writer: list[int] = []
        persist = env.wf.alerts._persist
        env.wf.alerts._persist = lambda c, now: (writer.append(threading.get_ident()), persist(c, now))[1]
        assert env.spend(alice, "6")  # 60%: 50 crossed
        fired = env.wf.alerts.evaluate(alice, env.clock.t)
        again = env.wf.alerts.evaluate(alice, env.clock.t)  # before the thread ran: handed over again
        assert [c.threshold for c in fired] == [Decimal(50)] and len(again) <= 1
        assert wait_until(lambda: len(writer) == 1 + len(again), timeout=5)
        assert threading.get_ident() not in writer  # not on the caller's (the event loop's) thread
        env.wf.close()
        rows = env.con.execute("SELECT kind, threshold FROM alerts_fired").fetchall()
        assert rows == [("threshold", Decimal(50))]  # recorded once
        alerts = [n for _, n in env.sent if n.kind == "alert"]
        assert len(alerts) == 1  # announced once
    finally:
        env.con.close()
