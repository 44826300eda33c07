"""The ledger's writer puts a timed commit of a few rows off, holding them in the journal
(ledger.HOLD_ROWS, MAX_HOLD): a commit costs ~9 ms of CPU however few rows it carries."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from spendgate.store.ledger import DuckDBLedger, LedgerRow


def _row(i: int) -> LedgerRow:
    return LedgerRow(ts=datetime.now(UTC), request_id=f"h-{i:04d}", provider="anthropic", endpoint="messages",
                     model="claude-sonnet-4-5", user="unit", key_fingerprint=None, client="other", session_id=None,
                     stream=False, status=200, outcome="ok", estimated=False, input_tokens=10, cache_read_tokens=0,
                     cache_write_tokens=0, cache_write_1h_tokens=0, output_tokens=5, reasoning_tokens=0,
                     web_search_requests=0, cost_usd=Decimal("0.001"), price_source="test", latency_ms=1.0,
                     ttft_ms=None, charged_usd=Decimal("0.001"), notional_usd=Decimal("0.25"))


def _committed(led: DuckDBLedger) -> int:
    return led.cursor().execute("SELECT count(*) FROM requests").fetchone()[0]


def _wait(pred, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def held(tmp_path):
    """A ledger committing every 50 ms by time, holding up to 5 rows for up to 1 s."""
    kept: list[list[LedgerRow]] = []
    led = DuckDBLedger(tmp_path / "l.duckdb", commit_interval=0.05, on_hold=kept.append, hold_rows=5, max_hold=1.0)
    yield led, kept
    led.close()


def test_a_few_rows_are_held_in_the_journal_then_committed_after_max_hold(held):
    led, kept = held
    started = time.monotonic()
    for i in range(3):
        led.append(_row(i))
    _wait(lambda: kept)
    time.sleep(0.3)  # six timed commits would have come by now
    assert _committed(led) == 0 and [r.request_id for b in kept for r in b] == ["h-0000", "h-0001", "h-0002"]
    led.append(_row(3))  # a row arriving while others are held is journaled once, on its own
    _wait(lambda: led.stats.written == 4, timeout=5.0)  # counted just after the rows became visible
    assert _committed(led) == 4
    assert time.monotonic() - started >= 1.0  # max_hold, counted from the first held row
    assert [r.request_id for b in kept for r in b] == [f"h-{i:04d}" for i in range(4)]
    assert led.stats.written == 4 and led.stats.failures == 0


def test_a_read_flush_and_hold_rows_commit_at_once(held):
    led, kept = held
    led.append(_row(0))
    _wait(lambda: kept)
    assert led.flush(2.0) and _committed(led) == 1  # a reader (or close) never waits for max_hold
    for i in range(1, 6):  # hold_rows (5) waiting: committed by time, not held
        led.append(_row(i))
    _wait(lambda: _committed(led) == 6, timeout=0.8)
    assert len(kept) == 1


def test_by_default_rows_are_held_up_to_commit_rows(tmp_path):
    """Holding pays at every rate (docs/architecture.md, issue 18, twenty-seventh part): hundreds
    of rows waiting are held, not committed by time, until COMMIT_ROWS; a read commits them."""
    from spendgate.store.ledger import COMMIT_ROWS, HOLD_ROWS

    assert HOLD_ROWS == COMMIT_ROWS
    kept: list[list[LedgerRow]] = []
    led = DuckDBLedger(tmp_path / "l.duckdb", commit_interval=0.05, on_hold=kept.append, max_hold=60.0)
    try:
        for i in range(500):
            led.append(_row(i))
        _wait(lambda: sum(map(len, kept)) == 500)
        time.sleep(0.3)  # six timed commits would have come by now
        assert _committed(led) == 0
        assert led.flush(5.0) and _committed(led) == 500
    finally:
        led.close()


def _full_journal(rows):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("on_hold", [_full_journal, None], ids=["journal full", "no journal"])
def test_rows_no_journal_holds_are_committed_by_time(tmp_path, on_hold):
    """A journal that cannot take the rows (disk full), or none, means the timed commit goes ahead."""
    led = DuckDBLedger(tmp_path / "l.duckdb", commit_interval=0.05, on_hold=on_hold, hold_rows=5, max_hold=60.0)
    try:
        led.append(_row(0))
        _wait(lambda: _committed(led) == 1, timeout=2.0)
    finally:
        led.close()


def test_close_commits_held_rows(tmp_path):
    kept: list = []
    path = tmp_path / "l.duckdb"
    led = DuckDBLedger(path, commit_interval=0.05, on_hold=kept.append, hold_rows=5, max_hold=60.0)
    led.append(_row(0))
    _wait(lambda: kept)
    led.close()
    led = DuckDBLedger(path)
    try:
        assert _committed(led) == 1
    finally:
        led.close()


def test_a_row_round_trips_through_the_journal_exactly():
    from spendgate.store.ledger import row_from_dict, row_to_dict

    row = _row(0)
    assert row_from_dict(row_to_dict(row)) == dataclasses.replace(row)
