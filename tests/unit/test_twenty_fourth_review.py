"""The twenty-fourth review: the batcher and opaque recorder sleeping while idle, is_utf8 in parts.

Three tests failed before the fixes of this review (a handler that raised while it still held
rows it had kept stopped being retried; close() that came while the worker gathered a batch
waited out a second whole interval; the opaque recorder's flush() could return before rows
recorded before it were written); the others document what was tried and held.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import random
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial

import pytest

from spendgate.batcher import Batcher
from spendgate.metering import opaque
from spendgate.metering.providers import base
from spendgate.store import ledger as ledger_mod
from spendgate.store.ledger import DuckDBLedger, LedgerRow, connect, migrate
from tests.support import wait_until
from tests.unit.test_top_level import decodes


wait_for = partial(wait_until, timeout=5.0, every=0.002)  # raises AssertionError when it runs out


# -- Batcher ----------------------------------------------------------------------------------


def test_a_handler_that_raises_while_holding_kept_items_is_still_retried(caplog) -> None:
    """FAILED before the fix. The handler kept item 1 (returned False), then raised once on the
    retry (a transient error) while still holding it. The old timer called it again every interval
    and it wrote item 1; the sleeping worker took the raise for "nothing kept", went idle and never
    called it again: item 1 stranded until some unrelated put came."""
    caplog.set_level(logging.CRITICAL)
    kept: list[int] = []
    written: list[int] = []
    calls = [0]

    def handle(items: list[int]) -> bool:
        calls[0] += 1
        kept.extend(items)
        if calls[0] == 1:
            return False  # the store is failing: keep the rows, retry
        if calls[0] == 2:
            raise RuntimeError("transient")  # the rows are still held
        written.extend(kept)
        kept.clear()
        return True

    b = Batcher(handle, 0.01, "test-raise-kept")
    try:
        b.put(1)
        assert wait_for(lambda: written == [1], timeout=2.0), f"kept item never retried ({calls[0]} calls)"
        n = calls[0]
        time.sleep(0.2)
        assert calls[0] <= n + 1  # and it goes back to sleep once the handler took everything
    finally:
        b.close()


@pytest.mark.parametrize("seed", range(3))
def test_exactly_once_and_no_early_flush_under_racing_producers(seed: int, caplog) -> None:
    """Several producers, tiny switch interval, a handler that keeps batches (False) or loses
    them (raises, everything it held with them): each item is handled or lost exactly once, none
    is stranded without a flush, and a flush that returns True comes after every item put before
    it was taken. (Outside pytest: ~104,000 items over 1,900 rounds of this, no failure.)"""
    caplog.set_level(logging.CRITICAL)
    rng = random.Random(seed)
    hrng = random.Random(seed + 100)
    lock = threading.Lock()
    done: collections.Counter[int] = collections.Counter()
    kept: list[int] = []
    calls = [0]

    def handle(items: list[int]) -> bool:
        with lock:
            calls[0] += 1
            r = hrng.random()
            if r < 0.15:
                kept.extend(items)
                return False
            for i in kept + items:
                done[i] += 1
            kept.clear()
            if r < 0.2:
                raise RuntimeError("lost")
            return True

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    b = Batcher(handle, 0.0007, "test-exactly-once", max_items=rng.choice([0, 3, 50]))
    sent: list[int] = []
    slock = threading.Lock()
    early: list[int] = []

    def producer(first: int, n: int) -> None:
        r = random.Random(first)
        for k in range(n):
            if r.random() < 0.3:
                time.sleep(r.choice((1e-4, 1e-3)))
            b.put(first + k)
            with slock:
                sent.append(first + k)
            if r.random() < 0.05:
                with slock:
                    before = list(sent)
                if b.flush(5):
                    with lock:
                        early.extend(i for i in before if not done[i])

    try:
        for rnd in range(40):
            threads = [threading.Thread(target=producer, args=(10**7 * rnd + 10**5 * t, rng.randint(1, 30)))
                       for t in range(rng.randint(1, 5))]  # fmt: skip
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert wait_for(lambda: all(done[i] for i in sent), timeout=3.0), "an item was stranded"
            assert not early, f"flush returned before {early[:5]} were taken"
            time.sleep(rng.choice((0, 0.001, 0.005)))
        assert all(done[i] == 1 for i in sent)
        assert sum(done.values()) == len(sent)
    finally:
        sys.setswitchinterval(old)
        b.close()


def test_a_refusing_handler_is_retried_on_the_interval_not_in_a_busy_loop() -> None:
    """A handler that keeps refusing (a full disk) is called about once an interval, flushes
    included (each flush wakes one retry), and close() still returns promptly."""
    calls = [0]

    def handle(items: list[int]) -> bool:
        calls[0] += 1
        return False

    b = Batcher(handle, 0.02, "test-refuse")
    b.put(1)
    assert not b.flush(timeout=0.3)  # never satisfied while the handler refuses
    assert 5 <= calls[0] <= 0.3 / 0.02 + 5
    t = time.monotonic()
    b.close(timeout=5)
    assert time.monotonic() - t < 1.0 and not b._thread.is_alive()


def test_close_while_asleep_and_while_gathering_is_prompt_and_loses_nothing() -> None:
    """FAILED before the fix (second half). close() wakes a worker asleep waiting for a first item
    (no interval to wait out) and one gathering a batch with a 30 s interval; both hand their items
    over and the thread ends. The gathering one used to handle the batch, then wait a second
    whole interval before its last round: close() gave up joining after 30 s, the thread alive
    (the ledger then closes its connection under a writer that still runs)."""
    got: list[int] = []
    b = Batcher(got.extend, 30.0, "test-close-asleep")
    time.sleep(0.05)
    t = time.monotonic()
    b.close()
    assert time.monotonic() - t < 1.0 and not b._thread.is_alive() and got == []

    b = Batcher(got.extend, 30.0, "test-close-gathering")
    b.put(1)
    time.sleep(0.05)  # woken by the first item, now gathering for 30 s
    b.put(2)
    t = time.monotonic()
    b.close()
    assert time.monotonic() - t < 1.0 and not b._thread.is_alive() and got == [1, 2]


def test_puts_from_an_event_loop_while_the_worker_is_mid_batch() -> None:
    """The proxy's event loop puts while the handler is busy with the previous batch: those
    items are handled after it, without a flush, and the loop is never blocked by put()."""
    in_handler, release = threading.Event(), threading.Event()
    got: list[int] = []

    def handle(items: list[int]) -> None:
        if items == [0]:
            in_handler.set()
            release.wait(5)
        got.extend(items)

    b = Batcher(handle, 0.005, "test-loop")

    async def main() -> float:
        b.put(0)
        assert await asyncio.to_thread(in_handler.wait, 5)
        t = time.perf_counter()
        for i in range(1, 1001):
            b.put(i)
        spent = time.perf_counter() - t
        release.set()
        return spent

    try:
        spent = asyncio.run(main())
        assert spent < 0.5
        assert wait_for(lambda: got == list(range(1001)), timeout=3.0)
    finally:
        release.set()
        b.close()


def _row(i: int) -> LedgerRow:
    return LedgerRow(ts=datetime.now(UTC), request_id=f"r24-{i:04d}", provider="anthropic", endpoint="messages",
                     model="m", user="unit", key_fingerprint=None, client="other", session_id=None, stream=False,
                     status=200, outcome="ok", estimated=False, input_tokens=1, cache_read_tokens=0,
                     cache_write_tokens=0, cache_write_1h_tokens=0, output_tokens=1, reasoning_tokens=0,
                     web_search_requests=0, cost_usd=Decimal("0.01"), price_source="test", latency_ms=1.0,
                     ttft_ms=None, charged_usd=Decimal("0.01"))  # fmt: skip


def test_ledger_rows_kept_by_a_failed_write_are_committed_with_no_new_row(tmp_path, monkeypatch, caplog) -> None:
    """Disk full for three commits, no row arriving after the first: the writer retries on its
    own (no put, no flush), commits the rows once the disk has room, then sleeps."""
    caplog.set_level(logging.CRITICAL)
    real = ledger_mod.write_rows
    fails = [3]
    calls = [0]

    def full_disk(cur, rows, **kw):
        calls[0] += 1
        if fails[0]:
            fails[0] -= 1
            raise OSError(28, "No space left on device")
        return real(cur, rows, **kw)

    monkeypatch.setattr(ledger_mod, "write_rows", full_disk)
    led = DuckDBLedger(tmp_path / "l.duckdb", commit_interval=0.02)
    try:
        for i in range(5):
            led.append(_row(i))
        assert wait_for(lambda: led.stats.written == 5, timeout=10.0), led.stats
        assert led.healthy and led._unwritten == []
        n = calls[0]
        time.sleep(0.2)
        assert calls[0] == n  # asleep: no write attempted with nothing to write
        got = led.cursor().execute("SELECT count(*) FROM requests WHERE request_id LIKE 'r24-%'").fetchone()
        assert got == (5,)
    finally:
        led.close()


# -- OpaqueRecorder ---------------------------------------------------------------------------


def _conn(user: str) -> opaque.OpaqueConnection:
    t = datetime(2026, 3, 2, 10, tzinfo=UTC)
    return opaque.OpaqueConnection(t, t + timedelta(seconds=1), "api2.cursor.sh", 443, user, "proxy_auth", None,
                                   "cursor", 1, 2, 1000.0, "closed")  # fmt: skip


def test_opaque_flush_never_returns_before_the_rows_recorded_before_it(tmp_path, monkeypatch) -> None:
    """FAILED before the fix. The worker had just found its queue empty and was about to say
    "idle" when a row was recorded and flush() called: the stale "idle" it then set answered the
    flush (True) with the row still unwritten. flush() now waits for its own marker (and no longer
    looks at empty(): the window is then not opened, and the same record and flush run in order)."""
    con = connect(tmp_path / "l.duckdb")
    migrate(con)
    real_write = opaque.OpaqueRecorder._write

    def slow_write(self, cur, batch):
        if batch:
            time.sleep(0.3)  # the row's write is under way: a flush answered before it ends is early
        return real_write(self, cur, batch)

    monkeypatch.setattr(opaque.OpaqueRecorder, "_write", slow_write)
    rec = opaque.OpaqueRecorder(con.cursor, batch_interval=0.01)
    raced = threading.Event()
    answers: list[tuple[bool, int]] = []

    def record_and_flush() -> None:
        rec.record(_conn("alice"))
        ok = rec.flush(timeout=5)
        answers.append((ok, rec.written))

    class RacingQueue:
        """The recorder's queue; once, its empty() says True and only then lets a producer
        record and flush: the window between the worker's check and its idle.set()."""

        def __init__(self, q) -> None:
            self.q = q

        def __getattr__(self, name):
            return getattr(self.q, name)

        def empty(self) -> bool:
            e = self.q.empty()
            if e and threading.current_thread() is rec._thread and not raced.is_set():
                raced.set()
                t = threading.Thread(target=record_and_flush)
                t.start()
                wait_for(lambda: self.q.qsize() >= 2, timeout=2)  # the row and the flush are queued
            return e

    rec._q = RacingQueue(rec._q)
    try:
        rec.flush(timeout=5)  # one round through the worker: its empty() opens the window
        if not raced.is_set():  # a worker that never looks at empty(): the same calls, in plain order
            raced.set()
            record_and_flush()
        assert wait_for(lambda: bool(answers), timeout=5)
        ok, written = answers[0]
        assert ok and written == 1, f"flush answered {ok} with {written} rows written"
    finally:
        rec.close()


def test_opaque_close_wakes_a_sleeping_recorder_and_retries_pending(tmp_path, monkeypatch, caplog) -> None:
    """close() wakes a recorder asleep on get() with no timeout at once; rows a failed write
    kept are retried on the interval with nothing new recorded, and flush() waits for them."""
    caplog.set_level(logging.CRITICAL)
    con = connect(tmp_path / "l.duckdb")
    migrate(con)
    rec = opaque.OpaqueRecorder(con.cursor, batch_interval=0.01)
    time.sleep(0.05)
    t = time.monotonic()
    rec.close()
    assert time.monotonic() - t < 1.0 and not rec._thread.is_alive()

    fails = [3]
    real = opaque.write_connections

    def failing(cur, rows):
        if fails[0]:
            fails[0] -= 1
            raise OSError(28, "No space left on device")
        return real(cur, rows)

    monkeypatch.setattr(opaque, "write_connections", failing)
    rec = opaque.OpaqueRecorder(con.cursor, batch_interval=0.01)
    try:
        rec.record(_conn("bob"))
        assert rec.flush(timeout=5)
        assert rec.written == 1 and rec.failures == 3
    finally:
        rec.close()


# -- is_utf8 ----------------------------------------------------------------------------------


_ALPHA = [b"a", b"\x80", b"\x8f", b"\x90", b"\x9f", b"\xa0", b"\xbf", b"\xc0", b"\xc2", b"\xdf", b"\xe0", b"\xed",
          b"\xee", b"\xf0", b"\xf4", b"\xf5", b"\xff"]  # fmt: skip


@pytest.mark.parametrize("boundary,size", [(4096, 8192), (65536, 65536 + 4096), (65536, 65536)])
def test_is_utf8_at_the_real_part_and_slice_boundaries(boundary: int, size: int) -> None:
    """Every 3-byte sequence over the bytes that matter (lead bytes of each length, the edges of
    the continuation ranges that decide overlong forms, surrogates and > U+10FFFF, bytes never
    valid) written across a real 4 KB part or 64 KB slice boundary, or cut by the body's end, in
    ASCII: is_utf8 answers as bytes.decode (outside pytest: all 4-byte sequences, 1.25 million
    bodies, and 875,000 short strings with every small slice/part size, no disagreement)."""
    filler = bytearray(b"a" * size)
    for combo in itertools.product(_ALPHA, repeat=3):
        tok = b"".join(combo)
        for off in range(-3, 1):
            buf = bytearray(filler)
            buf[boundary + off : boundary + off + 3] = tok
            data = bytes(buf)
            assert base.is_utf8(data) is decodes(data), (tok, boundary, off)


def test_is_utf8_stays_linear_with_non_ascii_in_every_part() -> None:
    """A body built so every 4 KB part is decoded, each ending inside a character carried into
    the next: time grows with the size, not faster (no quadratic carry, no per-byte Python)."""
    unit = (b"a" * 4095 + "é".encode() + b"a" * 4095)[:8192]
    small, big = unit * 64, unit * 512  # 0.5 MB, 4 MB

    def best(data: bytes) -> float:
        out = []
        for _ in range(3):
            t = time.perf_counter()
            assert base.is_utf8(data)
            out.append(time.perf_counter() - t)
        return min(out)

    assert best(big) < 0.5
    assert best(big) < 8 * 4 * best(small) + 0.01
