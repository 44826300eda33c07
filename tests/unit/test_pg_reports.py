"""Reports read straight from the PostgreSQL store (spendgate/store/pg_read.py), on a real server.

The same ~2,300 rows as tests/unit/test_rollups.py (out of time order, across a month boundary
and DST changes, some older than every partition) are settled into a PostgreSQL store, whose
trigger keeps the day/month rollups, and written into a DuckDB ledger by its writer. Then:

* every report on PostgreSQL is the same from the rollups as from the raw rows alone;
* every report is the same on PostgreSQL as on DuckDB for the same rows;
* the CLI's `--store` source answers them without copying the ledger, and exports the same rows.
"""

from __future__ import annotations

import csv
import io
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import duckdb
import pytest

from spendgate.cli import source as cli_source
from spendgate.reports import dashboard, queries, registry
from spendgate.store import pg_read, rollups
from spendgate.store.ledger import migrate, write_rows
from spendgate.store.postgres import PostgresStore
from tests.unit.test_rollups import NY_DST, PARIS_DST, _row, _since_values, _stamps

NOWS = [datetime(2026, 11, 18, 12, 34, 56, tzinfo=UTC), datetime(2026, 11, 1, 0, 0, tzinfo=UTC),
        datetime(2026, 11, 1, 0, 59, tzinfo=UTC), PARIS_DST + timedelta(minutes=20), NY_DST,
        datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC), datetime(2026, 10, 5, 9, tzinfo=UTC)]


@pytest.fixture(scope="module")
def both(postgres, tmp_path_factory):
    """(DuckDB connection, PostgreSQL store URL, ReadCursor) holding the same rows."""
    rnd = random.Random(22)
    rows = [_row(i, ts, rnd) for i, ts in enumerate(_stamps(rnd))]
    rnd.shuffle(rows)
    con = duckdb.connect(str(tmp_path_factory.mktemp("pgreports") / "ledger.duckdb"))
    con.execute("SET TimeZone = 'America/New_York'")  # the session's zone must not matter
    migrate(con)
    for i in range(0, len(rows), 97):
        write_rows(con.cursor(), rows[i : i + 97])
    url = postgres.create_database()
    store = PostgresStore(url).open()
    store.migrate()
    for r in rows:  # the gateway's own path: settlement inserts the row, the trigger sums it
        assert store.settle(r.request_id, r.charged_usd or Decimal(0), r) == "recorded"
    reader = pg_read.open_store(url)
    yield con, url, pg_read.ReadCursor(reader)
    reader.close()
    store.close()
    con.close()


def _pg_both(cur, fn):
    """fn(cur) on PostgreSQL from the rollups, and from the raw rows only."""
    assert rollups.available(cur)
    from_rollups = fn(cur)
    rollups.USE = False
    try:
        raw = fn(cur)
    finally:
        rollups.USE = True
    return from_rollups, raw


def test_the_store_holds_every_row_once_and_its_rollups_count_them(both):
    con, _, cur = both
    n = con.execute("SELECT count(*) FROM requests").fetchone()[0]
    assert cur.execute("SELECT count(*) FROM requests").fetchone()[0] == n
    assert cur.execute("SELECT sum(requests) FROM rollup_month").fetchone()[0] == n
    # rows older than every partition landed in the default one and are reported like the others
    assert cur.execute("SELECT count(*) FROM requests_default").fetchone()[0] > 0


@pytest.mark.parametrize("by", sorted(queries.GROUPS))
def test_spend_on_postgres_is_identical_from_rollups_and_raw_rows(both, by):
    _, _, cur = both
    for since in _since_values():
        for user in (None, "u3"):
            a, b = _pg_both(cur, lambda c: queries.spend(c, by, since=since, user=user))
            assert a == b, (by, since, user)
    assert a or since


def test_dashboard_reports_on_postgres_are_identical_from_rollups_and_raw_rows(both):
    _, _, cur = both
    for now in NOWS:
        for user in (None, "u7"):
            a, b = _pg_both(cur, lambda c: dashboard.overview(c, "month", now, user))
            assert a == b, (now, user)
            assert a["totals"]["month"]["requests"] > 0 or now.day == 1
            a, b = _pg_both(cur, lambda c: dashboard.series(c, "day", now, user))
            assert a == b, (now, user)
    for since in _since_values():
        a, b = _pg_both(cur, lambda c: dashboard.unpriced(c, since))
        assert a == b, since
        for until in (None, datetime(2026, 10, 25, 1, 30, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)):
            a, b = _pg_both(cur, lambda c: queries.subscriptions(c, since, until))
            assert a == b, (since, until)


@pytest.mark.parametrize("by", sorted(queries.GROUPS))
def test_duckdb_and_postgres_give_the_same_spend_report(both, by):
    con, _, cur = both
    for since in _since_values():
        for user in (None, "u3"):
            assert queries.spend(cur, by, since=since, user=user) == queries.spend(con.cursor(), by, since=since,
                                                                                   user=user), (by, since, user)


def test_duckdb_and_postgres_give_the_same_dashboard(both):
    con, _, cur = both
    for now in NOWS:
        for user in (None, "u7"):
            for window in ("month", "week", "day"):
                pg = dashboard.overview(cur, window, now, user)
                duck = dashboard.overview(con.cursor(), window, now, user)
                assert pg["latest"], "the latest rows are part of the comparison"
                assert pg == duck, (now, user, window)
    for since in _since_values():
        assert dashboard.unpriced(cur, since) == dashboard.unpriced(con.cursor(), since), since
        assert dashboard.blocks(cur, since, limit=50) == dashboard.blocks(con.cursor(), since, limit=50), since
        assert queries.subscriptions(cur, since) == queries.subscriptions(con.cursor(), since), since
    assert queries.ledger(cur, 200, user="u1") == queries.ledger(con.cursor(), 200, user="u1")


def test_the_store_source_answers_reports_without_copying_the_ledger(both, monkeypatch):
    con, url, _ = both

    def no_copy(*a, **k):
        raise AssertionError("the ledger was copied")

    monkeypatch.setattr(PostgresStore, "copy_ledger", no_copy)
    src = cli_source.open_store_source(url)
    assert src.where.startswith("store postgresql://")
    since = "2026-10-03T05:00:00Z"
    for by in ("user", "model", "workspace"):
        assert src.query("spend", by=by, since=since) == registry.run_query(con.cursor(), "spend",
                                                                            {"by": by, "since": since})
    assert src.query("ledger", limit=30) == registry.run_query(con.cursor(), "ledger", {"limit": 30})
    for name in ("overview", "series", "blocks", "unpriced", "subscriptions"):
        got, want = src.query(name), registry.run_query(con.cursor(), name, {})
        if name == "overview":
            assert got.pop("generated_at") and want.pop("generated_at")  # now, a few ms apart
        assert got == want, name


def test_a_csv_export_from_the_store_streams_the_same_rows_as_the_files(both, monkeypatch):
    con, url, _ = both
    monkeypatch.setattr(PostgresStore, "copy_ledger", lambda *a, **k: pytest.fail("CSV export copied the ledger"))
    src = cli_source.open_store_source(url)
    params = {"format": "csv", "since": "2026-10-20T00:00:00Z", "until": "2026-11-02T12:00:00Z", "user": "u5"}
    pg = list(csv.DictReader(io.StringIO(src.download("export", **params).decode())))
    duck = list(csv.DictReader(io.StringIO(b"".join(dashboard.download_chunks(con.cursor(), "export", params))
                                           .decode())))
    assert len(pg) == len(duck) > 10
    assert list(pg[0]) == list(duck[0])  # the same columns, in order

    def key(r: dict) -> tuple:
        return (r["request_id"], datetime.fromisoformat(r["ts"]), r["stream"], r["user"],
                Decimal(r["cost_usd"]) if r["cost_usd"] else None, int(r["input_tokens"]))

    assert [key(r) for r in pg] == [key(r) for r in duck]


def test_a_parquet_export_from_the_store_holds_the_range_only(both):
    con, url, _ = both
    src = cli_source.open_store_source(url)
    data = src.download("export", format="parquet", since="2026-11-01T00:00:00Z", user="u2")
    want = con.execute("SELECT count(*) FROM requests WHERE ts >= TIMESTAMPTZ '2026-11-01 00:00:00+00' "
                       "AND \"user\" = 'u2'").fetchone()[0]
    got = duckdb.connect().execute("SELECT count(*), min(ts) >= TIMESTAMPTZ '2026-11-01 00:00:00+00' "
                                   "FROM read_parquet(?)", [_tmp_parquet(data)]).fetchone()
    assert got == (want, True)


def _tmp_parquet(data: bytes) -> str:
    import tempfile

    f = tempfile.NamedTemporaryFile(suffix=".parquet", delete=False)
    f.write(data)
    f.close()
    return f.name


def test_audit_and_requests_read_the_stores_shared_tables(both, capsys):
    import json

    from spendgate import cli

    _, url, cur = both
    store = PostgresStore(url).open()
    try:
        store._run("INSERT INTO audit (ts, event, actor, scope, ref, detail) VALUES (now(), 'grant', 'boss', "
                   "'user:u1', 'g1', '{\"amount_usd\": \"5\"}')", fetch="count")
    finally:
        store.close()
    assert cli.main(["audit", "--store", url, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["event"], row["actor"], row["scope"], row["detail"]) == ("grant", "boss", "user:u1",
                                                                          {"amount_usd": "5"})
    assert cli.main(["requests", "--store", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli.main(["spend", "--store", url, "--by", "model", "--json"]) == 0
    assert sum(r["requests"] for r in json.loads(capsys.readouterr().out)) == \
        cur.execute("SELECT count(*) FROM requests").fetchone()[0]


def test_top_on_the_store_draws_its_overview_and_the_shared_counters(both, capsys, monkeypatch):
    from spendgate import cli

    _, url, _ = both
    monkeypatch.setattr(PostgresStore, "copy_ledger", lambda *a, **k: pytest.fail("top copied the ledger"))
    assert cli.main(["top", "--once", "--store", url]) == 0
    out = capsys.readouterr().out
    assert "store postgresql://" in out and "budgets closest to their cap" in out


def test_explain_reads_one_row_from_the_store_without_copying_the_ledger(both, monkeypatch):
    """`explain --store`: the row, its rate card's recomputed detail and its history, read where
    they lie, equal to the same row's explanation from a file."""
    con, url, _ = both
    monkeypatch.setattr(PostgresStore, "copy_ledger", lambda *a, **k: pytest.fail("explain copied the ledger"))
    src = cli_source.open_store_source(url)
    rid = con.execute("SELECT request_id FROM requests ORDER BY ts DESC LIMIT 1").fetchone()[0]
    got = src.query("price_request", request_id=rid)
    want = registry.run_query(con.cursor(), "price_request", {"request_id": rid})
    assert {k: got[k] for k in want} == want and got["request_id"] == rid
    assert set(got) - set(want) <= {"replica", "degraded", "charged_at", "shared"}  # the store's own columns
    assert src.query("price_request", request_id="no-such-request") is None
    with pytest.raises(cli_source.SourceError, match="several requests"):  # an ambiguous prefix: said, as on a file
        src.query("price_request", request_id="r")
