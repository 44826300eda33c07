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


@pytest.fixture
def make(loop) -> Iterator[Callable[..., tuple[LoopBatcher, int]]]:
    """make(seen, ...) -> (a LoopBatcher on `loop` recording into `seen`, the loop's thread id);
    each one made is closed at the end of the test."""
    made: list[LoopBatcher] = []

    def build(seen: Seen, light=lambda item: item != "heavy", interval: float = 0.02, max_batch: int = 32):
        fallback = Batcher(seen, 0.02, "test-fallback")
        made.append(on_loop(loop, lambda: LoopBatcher(seen, interval, loop, fallback, light, max_batch)))
        return made[-1], on_loop(loop, threading.get_ident)

    yield build
    for b in made:
        b.close()


def test_items_put_on_the_loop_are_handled_there_in_order_after_the_interval(loop, make) -> None:
    seen = Seen()
    b, loop_thread = make(seen, interval=0.2)
    on_loop(loop, lambda: [b.put(i) for i in range(5)])
    time.sleep(0.05)
    assert seen.order() == []  # batched: not one callback per item
    assert wait_until(lambda: seen.order() == list(range(5)), timeout=5)
    assert set(seen.threads().values()) == {loop_thread}
    assert seen.batches == [5]


def test_a_heavy_item_goes_to_the_worker_thread_after_those_waiting_and_order_is_kept(loop, make) -> None:
    seen = Seen()
    b, loop_thread = make(seen, interval=0.2)
    on_loop(loop, lambda: [b.put(x) for x in (1, 2, "heavy", 3)])  # 3 comes while the worker holds items
    assert b.flush(5)
    assert seen.order() == [1, 2, "heavy", 3]
    assert all(t != loop_thread for t in seen.threads().values())  # all four on the worker thread
    on_loop(loop, lambda: b.put(4))  # the worker is done: back on the loop
    assert b.flush(5)
    assert seen.threads()[4] == loop_thread


def test_items_put_from_another_thread_go_to_the_worker_thread(loop, make) -> None:
    seen = Seen()
    b, loop_thread = make(seen)
    b.put("from here")
    assert b.flush(5)
    assert seen.order() == ["from here"] and seen.threads()["from here"] != loop_thread


def test_at_most_max_batch_items_per_callback_the_rest_on_the_loops_next_turns(loop, make) -> None:
    seen = Seen()
    b, loop_thread = make(seen, max_batch=8)
    on_loop(loop, lambda: [b.put(i) for i in range(20)])
    assert wait_until(lambda: len(seen.order()) == 20, timeout=5)
    assert seen.batches == [8, 8, 4] and seen.order() == list(range(20))


def test_flush_from_another_thread_waits_for_the_loops_items(loop, make) -> None:
    seen = Seen()
    b, loop_thread = make(seen, interval=30.0)  # the timer alone would take 30 s
    on_loop(loop, lambda: [b.put(i) for i in range(3)])
    assert b.flush(5)
    assert seen.order() == [0, 1, 2] and set(seen.threads().values()) == {loop_thread}


def test_a_flush_on_the_loops_own_thread_handles_at_once(loop, make) -> None:
    seen = Seen()
    b, loop_thread = make(seen, interval=30.0)
    assert on_loop(loop, lambda: (b.put("a"), b.flush(5))[1])
    assert seen.order() == ["a"]


def test_close_after_the_loop_stopped_handles_what_waited_and_later_puts_reach_the_worker(loop, make) -> None:
    seen = Seen()
    b, loop_thread = make(seen, interval=30.0)
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
    assert light((ex, Body(b"x" * 9000, "gzip"), None, 0, 0.0))  # decoded on the loop up to LOOP_BODY_BYTES only
    assert light((ex, None, None, 0, 0.0))  # a stream's result, read as it passed
    results = SimpleNamespace(request=SimpleNamespace(results=True), route=SimpleNamespace(endpoint="batch.results"))
    assert not light((results, None, None, 0, 0.0))  # batch results: one row per model, each priced
    fetch = SimpleNamespace(request=SimpleNamespace(results=True), route=SimpleNamespace(endpoint="responses.retrieve"))
    assert light((fetch, Body(b"{}"), None, 0, 0.0))  # a background response's fetch releases its hold at once
    assert not light((fetch, Body(b"x" * (LOOP_BODY_BYTES + 1)), None, 0, 0.0))

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


def test_a_tail_the_handler_leaves_goes_to_the_worker_ahead_of_what_still_waits(loop) -> None:
    seen = Seen()

    def handle(items: list) -> list | None:  # "big" cannot be handled on the loop: it and the rest go
        for i, x in enumerate(items):
            if x == "big":
                return items[i:]
            seen([x])
        return None

    fallback = Batcher(seen, 0.02, "test-fallback")
    b = on_loop(loop, lambda: LoopBatcher(handle, 30.0, loop, fallback, lambda item: True, max_batch=3))
    loop_thread = on_loop(loop, threading.get_ident)
    try:
        on_loop(loop, lambda: [b.put(x) for x in (1, "big", 2, 3, 4)])  # batches of 3: [1, big, 2], then [3, 4]
        assert b.flush(5)
        assert seen.order() == [1, "big", 2, 3, 4]
        threads = seen.threads()
        assert threads[1] == loop_thread and all(threads[x] != loop_thread for x in ("big", 2, 3, 4))
    finally:
        b.close()


def test_a_flush_waiting_on_a_loop_that_is_detaching_returns_at_once(loop, make) -> None:
    """At shutdown the loop runs Gateway.close(): it detaches the meter's batcher, then joins threads
    (sinks, uplink, watcher) that may be waiting in a flush for that very loop. Such a wait must end
    when the batcher is detached, not at its timeout (fortieth review, 3)."""
    seen = Seen()
    b, loop_thread = make(seen, interval=30.0)
    on_loop(loop, lambda: [b.put(i) for i in range(3)])
    waited: list[float] = []
    flusher = threading.Thread(target=lambda: (t := time.monotonic(), b.flush(10), waited.append(time.monotonic() - t)))

    def closing() -> None:  # on the loop: the flusher's drain is queued behind this callback
        flusher.start()
        time.sleep(0.2)
        b.detach()
        flusher.join(5)

    on_loop(loop, closing)
    assert waited and waited[0] < 2.0, waited  # not the flush's 10 s
    assert seen.order() == [0, 1, 2] and set(seen.threads().values()) == {loop_thread}
    b.close()


def test_a_stopped_batchers_flush_answers_at_once() -> None:
    b = Batcher(lambda items: None, 0.01, "test-stopped")
    b.close()
    t = time.monotonic()
    assert b.flush(10) is True and time.monotonic() - t < 1.0


# -- a real gateway's meter on a loop -------------------------------------------------------------------


def test_a_gateways_rows_recorded_on_the_loop_settle_exactly_and_a_small_bomb_goes_to_the_worker(loop, tmp_path):
    """The whole settlement (Admission.settle, alerts, telemetry, the ledger) runs through the
    loop's batches; a gzip body of ~1 KB that decodes past LOOP_BODY_BYTES is recorded on the worker
    thread instead, in order (fortieth review, 1)."""
    import gzip
    import json

    from spendgate.gateway import Gateway, Settings
    from spendgate.metering.meter import LOOP_BODY_BYTES, Body

    p = tmp_path / "policy.yaml"
    p.write_text("version: 1\ndefaults: {user: {day: 1000}}\n")
    gw = Gateway(Settings(db=tmp_path / "l.duckdb", policy=p, user="unit", admin_port=-1, reload_interval=0))
    where: dict[str, int] = {}
    gw.meter.listeners.insert(0, lambda ex, row: where.__setitem__(row.request_id, threading.get_ident()))
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 100,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"x-api-key": "sk-ant-unit-secret", "user-agent": "Anthropic/Python 2.14.0"}

    def answer(text: str) -> bytes:
        return json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                           "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                           "usage": {"input_tokens": 1000, "output_tokens": 500}}).encode()

    bomb = gzip.compress(answer("a" * (4 * LOOP_BODY_BYTES)))
    assert len(bomb) < 2048
    answers = [Body(answer("hello")), Body(gzip.compress(answer("hi")), "gzip"), Body(bomb, "gzip"),
               Body(answer("after"))]
    try:
        loop_thread = on_loop(loop, threading.get_ident)
        assert on_loop(loop, lambda: gw.record_on(loop)) is True

        def one(result: Body) -> str:
            ex = gw.meter.begin("api.anthropic.com", "/v1/messages", headers, body)
            assert gw.admission.admit(ex, "/v1/messages", body) is None
            ex.status, ex.headers_at = 200, gw.meter.clock()
            gw.meter.finish(ex, result, bytes_out=len(result.raw))
            return ex.request_id

        ids = [on_loop(loop, lambda r=r: one(r)) for r in answers]
        assert gw.meter.flush(10)  # from this (another) thread: the loop drains its batch
        assert [where[i] == loop_thread for i in ids] == [True, True, False, False]  # the bomb, then what followed it
        rows = {r[0]: r for r in gw.ledger.cursor().execute(
            "SELECT request_id, output_tokens, charged_usd FROM requests").fetchall()}
        assert set(rows) == set(ids) and all(rows[i][1] == 500 for i in ids)
        spent = sum((r[2] for r in rows.values()), Decimal(0))
        counters = [c for k, c in gw.book.store.items() if k[0] == "user:unit"]
        assert counters and all(c.reserved == 0 and c.spent == spent for c in counters)  # every window settled
    finally:
        on_loop(loop, gw.close)  # as mitmproxy's `done` hook does, on the loop
