"""Slim rows on the shared PostgreSQL store: the rate card is stored once with the first row that
uses it, and read-side commands (`--store`) explain rows from it exactly as on a DuckDB ledger."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from spendgate.pricing import cards, reprice
from spendgate.pricing.rates import Pricer
from spendgate.store.ledger import LedgerRow, migrate
from spendgate.store.postgres import PostgresStore
from spendgate.usage import Usage

REPO = Path(__file__).resolve().parents[2]
PRICER = Pricer(REPO / "pricing" / "overrides.yaml")


@pytest.fixture
def store(pg_url):
    s = PostgresStore(pg_url, lease_seconds=30).open()
    s.migrate()
    yield s
    s.close()


def _row(rid: str, usage: Usage) -> LedgerRow:
    at = datetime.now(UTC)
    price = PRICER.price("anthropic", "claude-sonnet-4-5", usage, at)
    card_id, text = cards.of_result(price)
    return LedgerRow(ts=at, request_id=rid, provider="anthropic", endpoint="messages", model="claude-sonnet-4-5",
                     user="alice@acme.com", key_fingerprint=None, client="test", session_id=None, stream=False,
                     status=200, outcome="ok", estimated=False, cost_usd=price.cost, price_source=price.source,
                     latency_ms=1.0, ttft_ms=None, charged_usd=price.cost, price_card=card_id, card_json=text,
                     **usage.as_dict())


def test_cards_are_stored_once_and_explain_works_from_the_store(store):
    usages = [Usage(input_tokens=1_000 * i, output_tokens=20 * i) for i in range(1, 4)]
    rows = [_row(f"pg-{i}", u) for i, u in enumerate(usages)]
    for r in rows:
        assert store.settle(r.request_id, r.charged_usd, r, []) == "recorded"
    assert store._run("SELECT count(*) FROM price_cards", fetch="one")[0] == 1
    assert store._run("SELECT count(*) FROM requests WHERE price_card = %s AND price_detail IS NULL",
                      [rows[0].price_card], fetch="one")[0] == 3
    con = duckdb.connect(":memory:")  # what `--store` read-side commands do
    migrate(con)
    assert store.copy_ledger(con) == 3
    got = reprice.request_row(con, "pg-2")
    expected = PRICER.price("anthropic", "claude-sonnet-4-5", usages[2], got["ts"] if isinstance(got["ts"], datetime)
                            else datetime.fromisoformat(got["ts"].replace("Z", "+00:00"))).detail()
    assert json.loads(got["price_detail"]) == expected
    assert Decimal(str(got["cost_usd"])) == Decimal(expected["total"])
    from spendgate.store import pg_read  # and `explain --store` now: read in PostgreSQL itself, the same detail

    reader = pg_read.open_store(store.url)
    try:
        direct = reprice.request_row(pg_read.ReadCursor(reader), "pg-2")
    finally:
        reader.close()
    assert json.loads(direct["price_detail"]) == expected and direct["price_detail_from"] == got["price_detail_from"]
    # a row whose card this replica already stored does not insert it again; another replica's
    # store object (fresh cache) inserts it idempotently
    other = PostgresStore(store.url, lease_seconds=30).open()
    try:
        r = replace(_row("pg-9", usages[0]))
        assert other.settle(r.request_id, r.charged_usd, r, []) == "recorded"
    finally:
        other.close()
    assert store._run("SELECT count(*) FROM price_cards", fetch="one")[0] == 1
