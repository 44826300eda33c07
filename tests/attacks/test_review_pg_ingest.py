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
