"""Reviewer's reproductions (branch review): laptop ingest on a PostgreSQL centre settles other
people's open reservations (request ids are global; spendgate_settle takes any caller's row)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from spendgate.central.ingest import Ingest
from spendgate.store.ledger import DuckDBLedger
from tests.unit.test_central import _row, wire
from tests.unit.test_pg_store import BOB, book, counter, row, store  # noqa: F401  (fixture)

D = Decimal


def test_r1b_a_laptop_push_cannot_settle_someone_elses_in_flight_request(store, tmp_path):  # noqa: F811
    bk = book(store)
    d = bk.admit(BOB, D("0.5"), request_id="victim-00000001")  # bob's request through the centre, in flight
    bob_day = next(b for b in d.budgets if b.scope == "user:bob@acme.com")
    led = DuckDBLedger(tmp_path / "centre.duckdb")
    now = datetime.now(UTC)
    pushed = wire(_row("victim-00000001", user="mallory@acme.com", charged="0", ts=now))
    got = Ingest(led.cursor, bk).ingest("mallory@acme.com", "mallory@laptop", [pushed], now=now)
    print("ingest:", got.as_json())
    real = store.settle("victim-00000001", D("0.4"), row("victim-00000001", user="bob@acme.com", charged="0.4"))
    print("real settlement:", real, "bob day counter (spent, reserved):", counter(store, bob_day))
    led.close()
    assert real == "settled" and counter(store, bob_day) == (D("0.4"), 0)


def test_r2_r9_on_a_postgresql_centre_back_dated_rows_count_today_and_shared_budgets_stop_at_the_room(
        store, tmp_path):  # noqa: F811
    """The bounds of spendgate.central.charging hold on the shared counters too: bob's room is $1 (his
    day); a row stamped 3 days back counts today, and the row that crosses the room still charges
    the shared budgets (as one admission may overshoot), the next one only bob."""
    from datetime import timedelta

    bk = book(store)
    led = DuckDBLedger(tmp_path / "centre.duckdb")
    now = datetime.now(UTC)
    rows = [wire(_row("bd-00000001", user="bob@acme.com", charged="0.8", model="corp-model-x",
                      ts=now - timedelta(days=3))),
            wire(_row("bd-00000002", user="bob@acme.com", charged="0.5", model="corp-model-x", ts=now)),
            wire(_row("bd-00000003", user="bob@acme.com", charged="0.7", model="corp-model-x", ts=now))]
    got = Ingest(led.cursor, bk).ingest("bob@acme.com", "bob@laptop", rows, now=now)
    assert (got.late, got.beyond) == (1, 1), got.as_json()
    spent = {(b.scope, b.window): counter(store, b)[0] for b in bk.covering(BOB, now)}
    led.close()
    assert spent[("user:bob@acme.com", "day")] == D("2.0")
    assert spent[("workspace:core", "day")] == D("1.3") and spent[("organization:acme", "month")] == D("1.3")
