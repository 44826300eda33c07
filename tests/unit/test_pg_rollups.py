"""The PostgreSQL store's ledger at scale (spendgate/store/pg_rollups.py), on a real server: the
migration partitions an existing ledger by month without losing a row, and the trigger keeps the
day and month rollups equal to the rows through settlement, late rows, the reaper and its
correction, re-pricing updates and deletes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from spendgate.store import pg_rollups, postgres
from spendgate.store.ledger import LedgerRow
from spendgate.store.postgres import PostgresStore
from spendgate.store.rollups import FAMILIES, TOKENS

D = Decimal
NOW = datetime.now(UTC)


def row(rid: str, ts: datetime, user: str = "alice@acme.com", cost: str | None = "0.1", outcome: str = "ok",
        model: str | None = "m", basis: str = "api") -> LedgerRow:
    return LedgerRow(
        ts=ts, request_id=rid, provider="anthropic", endpoint="messages", model=model, user=user,
        key_fingerprint=None, client="test", session_id=None, stream=False, status=200, outcome=outcome,
        estimated=False, input_tokens=10, cache_read_tokens=1, cache_write_tokens=2, cache_write_1h_tokens=0,
        output_tokens=5, reasoning_tokens=0, web_search_requests=0, cost_usd=D(cost) if cost else None,
        price_source="test", latency_ms=1.0, ttft_ms=None, workspace=None, charged_usd=D(cost or "0.2"),
        billing_basis=basis, notional_usd=D("0.3") if basis == "subscription" else None)


def _key(t: tuple) -> tuple:
    return tuple("" if v is None else (format(v.normalize(), "f") if isinstance(v, Decimal) else str(v)) for v in t)


def rollups_match_rows(store: PostgresStore) -> int:
    """Assert both rollups equal a GROUP BY over the rows; returns the rows counted."""
    meas = ("count(*), " + ", ".join(f"coalesce(sum({t}), 0)" for t in TOKENS)
            + ", coalesce(sum(cost_usd), 0), coalesce(sum(charged_usd), 0), coalesce(sum(notional_usd), 0), "
              "count(*) FILTER (WHERE cost_usd IS NULL), max(ts)")
    roll = ("requests, " + ", ".join(TOKENS) + ", coalesce(cost_usd, 0), coalesce(charged_usd, 0), "
            "coalesce(notional_usd, 0), cost_null, max_ts")
    for fam, fdims in FAMILIES.items():  # every family: the wide one and those per model, per user
        dims = ", ".join(fdims)
        for g in ("day", "month"):
            want = store._run(f"SELECT date_trunc('{g}', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', {dims}, {meas} "
                              f"FROM requests GROUP BY 1, {dims}")
            got = store._run(f"SELECT bucket, {dims}, {roll} FROM rollup_{g}{fam}")
            assert sorted(map(_key, got)) == sorted(map(_key, want)), g + fam
    return store._run("SELECT count(*) FROM requests", fetch="one")[0]


@pytest.fixture
def store(pg_url):
    s = PostgresStore(pg_url, lease_seconds=30).open()
    s.migrate()
    yield s
    s.close()


def test_migration_partitions_an_existing_ledger_by_month_and_fills_the_rollups(pg_url, monkeypatch):
    s = PostgresStore(pg_url).open()
    try:
        monkeypatch.setattr(postgres, "MIGRATIONS", postgres.MIGRATIONS[:2])  # a store from before
        s.migrate()
        stamps = [NOW - timedelta(days=d, minutes=d) for d in (0, 1, 33, 64, 400)]
        for i, ts in enumerate(stamps):
            assert s.settle(f"old{i}", D("0.1"), row(f"old{i}", ts, cost=None if i == 2 else "0.1")) == "recorded"
        monkeypatch.undo()
        before, after = s.migrate()
        assert (before, after) == (2, postgres.SCHEMA_VERSION)
        parts = {r[0] for r in s._run("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                      "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'requests'")}
        for ts in stamps + [NOW + timedelta(days=40)]:
            assert f"requests_{ts:%Y_%m}" in parts  # every month with rows, and the months ahead
        assert "requests_default" in parts
        assert rollups_match_rows(s) == len(stamps)
        # each row is in its month's partition
        assert s._run(f"SELECT count(*) FROM requests_{stamps[4]:%Y_%m}", fetch="one")[0] == 1
        assert s.settle("old0", D("0.1"), row("old0", stamps[0])) == "duplicate"  # exactly once still
    finally:
        s.close()


def test_the_trigger_keeps_rollups_exact_through_every_kind_of_row_change(store):
    assert store._run("SELECT count(*) FROM rollup_day", fetch="one")[0] == 0
    last_month = (NOW.replace(day=1) - timedelta(days=3)).replace(hour=23, minute=59, second=59)
    store.settle("a", D("0.1"), row("a", NOW))
    store.settle("b", D("0.1"), row("b", NOW, cost=None, outcome="unpriced"))
    store.settle("c", D("0.1"), row("c", last_month, basis="subscription", cost="0"))  # late: an old month
    store.settle("d", D("0.1"), row("d", NOW - timedelta(days=3000)))  # older than every partition: default
    store.settle("a", D("0.1"), row("a", NOW))  # replayed: nothing twice
    assert store._run("SELECT count(*) FROM requests_default", fetch="one")[0] == 1
    assert rollups_match_rows(store) == 4
    # a reaped reservation (interrupted row), then its late settle replaces it (DELETE + INSERT)
    store.admit("e", [("user:alice@acme.com", "day", NOW.replace(hour=0, minute=0, second=0, microsecond=0),
                       D(100))], D("0.5"), record={"ts": (NOW - timedelta(minutes=5)).isoformat(),
                                                   "provider": "anthropic", "user": "alice@acme.com"})
    store._run("UPDATE reservations SET lease_expires = now() - interval '1 second' WHERE request_id = 'e'",
               fetch="count")
    assert store.reap() == ["e"]
    assert rollups_match_rows(store) == 5
    assert store.settle("e", D("0.2"), row("e", NOW + timedelta(seconds=1), cost="0.2")) == "corrected"
    assert store._run("SELECT outcome FROM requests WHERE request_id = 'e'", fetch="one")[0] == "ok"
    assert rollups_match_rows(store) == 5
    # re-pricing: a cost change in place, and an outcome change that moves a row to another group
    store._run("UPDATE requests SET cost_usd = 0.75, charged_usd = 0.75 WHERE request_id = 'a'", fetch="count")
    store._run("UPDATE requests SET cost_usd = 0.05, outcome = 'ok' WHERE request_id = 'b'", fetch="count")
    assert rollups_match_rows(store) == 5
    # the row holding a group's max_ts goes: max_ts falls back to the next row's
    store.settle("f", D("0.1"), row("f", NOW - timedelta(hours=1)))
    store._run("DELETE FROM requests WHERE request_id = 'e'", fetch="count")
    assert rollups_match_rows(store) == 5
    store._run("DELETE FROM requests", fetch="count")
    assert store._run("SELECT count(*) FROM rollup_day", fetch="one")[0] == 0  # no empty groups left
    assert store._run("SELECT count(*) FROM rollup_month", fetch="one")[0] == 0


def test_partitions_ahead_are_created_once_and_a_month_held_by_the_default_is_left_there(store):
    assert store.ensure_partitions(2) == 0  # the migration made them
    assert store.ensure_partitions(4) == 2
    far = NOW.replace(day=15) + timedelta(days=31 * 8)
    store.settle("far", D("0.1"), row("far", far))  # no partition yet: kept in the default
    made = store._run("SELECT spendgate_ensure_partitions(0, %s)", [far], fetch="one")[0]
    assert made == 0  # that month's row stays where it is; nothing fails
    assert store._run("SELECT count(*) FROM requests_default WHERE request_id = 'far'", fetch="one")[0] == 1
    assert rollups_match_rows(store) == 1


def test_the_year_long_unpriced_report_is_answered_from_its_covering_index(store):
    """Migration 10's partial index serves the report's own statement: its predicate must match the
    literal the report uses (a parameter there would make the planner skip it silently)."""
    from spendgate.reports import dashboard
    from spendgate.store import pg_read

    store.settle("u1", D("0.1"), row("u1", NOW - timedelta(days=40), cost=None, outcome="unpriced"))
    store.settle("o1", D("0.1"), row("o1", NOW - timedelta(days=40)))
    cur = pg_read.reader_for(store)
    plans: list[str] = []
    run = cur.execute

    def explained(sql: str, params=()):  # the plan of each statement, with scans of the heap ruled out
        with store.pool.connection() as con, con.transaction():
            con.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
            plans.append("\n".join(r[0] for r in con.execute("EXPLAIN " + cur.translate(sql), list(params))))
        return run(sql, params)

    cur.execute = explained
    try:
        got = dashboard.unpriced(cur)
        assert [(r["model"], r["users"], r["requests"]) for r in got] == [("m", 1, 1)]
        assert "Index Only Scan using rollup_month_unpriced_users" in plans[-1], plans[-1]
    finally:
        pg_read.close_reader(store)


def test_settlements_update_every_rollup_in_place(store):
    """The trigger's upserts change measures only; while no index holds a measure they are HOT
    updates (no new index entries, no dead rows for every request). An index that INCLUDEs a
    measure, even a partial one, ends that for every row of its table (the review of migration 10
    found one on the per-user rollups)."""
    import time

    for i in range(60):  # API traffic of one user on one day: one group of every rollup, updated 59 times
        store.settle(f"h{i}", D("0.1"), row(f"h{i}", NOW - timedelta(seconds=i)))
    store._run("SELECT pg_stat_force_next_flush()")
    time.sleep(0.05)
    for table in pg_rollups.tables():
        upd, hot = store._run("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = %s",
                              (table,), fetch="one")
        assert upd >= 59 and hot >= upd - 1, (table, upd, hot)
